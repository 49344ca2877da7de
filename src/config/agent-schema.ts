/** The keel agent's configuration file: one top-level `agent:` key. */
import { z } from 'zod';
import { configPath, hostPort, logLevel, trustDomain } from './values.js';

export const DEFAULT_WORKLOAD_API_SOCKET = '/tmp/keel-agent/public/api.sock';

/** TPM persistent handles in the owner range (TPM2 Part 2, 2.3.1: 0x81000000-0x817FFFFF). */
const persistentHandle = () =>
  z.unknown().transform((v, ctx) => {
    const n = typeof v === 'number' ? v : typeof v === 'string' && /^0x[0-9a-fA-F]{8}$/.test(v) ? Number.parseInt(v, 16) : NaN;
    if (!Number.isInteger(n) || n < 0x81000000 || n > 0x817fffff) {
      ctx.addIssue({ code: 'custom', message: 'expected a persistent handle in 0x81000000-0x817FFFFF, written like "0x81010002"' });
      return z.NEVER;
    }
    return n;
  });

const agentSection = z.strictObject({
  trust_domain: trustDomain(),
  server: z.strictObject({
    address: hostPort(),
    /** Bootstrap trust: the server CA bundle (PEM) the agent trusts before its first sync. */
    bundle: configPath(),
  }),
  data_dir: configPath(),
  log_level: logLevel(),
  tpm: z
    .strictObject({
      tcti: z.string().min(1).max(1024).default('device:/dev/tpmrm0'),
      ek_kind: z.enum(['rsa-2048', 'ecc-p256', 'ecc-p384']).default('rsa-2048'),
      ak_kind: z.enum(['rsa-2048', 'ecc-p256']).default('rsa-2048'),
      ak_persistent_handle: persistentHandle().optional(),
      /** The measured-boot event log sent with each quote; absent: the kernel's (securityfs), when it exists. */
      event_log: configPath().optional(),
    })
    .default({ tcti: 'device:/dev/tpmrm0', ek_kind: 'rsa-2048', ak_kind: 'rsa-2048' }),
  workload_api: z
    .strictObject({ socket_path: configPath().default(DEFAULT_WORKLOAD_API_SOCKET) })
    .default({ socket_path: DEFAULT_WORKLOAD_API_SOCKET }),
});

export const agentConfigSchema = z.strictObject({ agent: agentSection });

export type AgentConfigFile = z.output<typeof agentConfigSchema>;
export type AgentConfig = AgentConfigFile['agent'];
