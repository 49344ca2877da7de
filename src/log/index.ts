export { createLogger, silentLogger, type Logger, type LogLevel, type LogFields, type LoggerOptions } from './logger.js';
export { auditLog, memoryAuditLog, type AuditEvent, type AuditLog } from './audit.js';
