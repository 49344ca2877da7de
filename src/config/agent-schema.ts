/** The keel agent's configuration file: one top-level `agent:` key. */
import { z } from 'zod';
import { configPath, duration, hostPort, logLevel, trustDomain } from './values.js';

/**
 * Under /run, which only root can write: a world-writable /tmp path lets
 * anyone make the directories first and later swap the socket (issue 9).
 */
export const DEFAULT_WORKLOAD_API_SOCKET = '/run/keel/agent/api.sock';

/** Workload API limits (docs/agent.md, "Limits"). */
export const WORKLOAD_API_DEFAULTS = {
  max_connections: 4096,
  max_connections_per_uid: 256,
  max_streams_per_uid: 1024,
  /** Seconds a connection may stay open before its first call. */
  first_call_timeout: 10,
  /** Seconds a connection with no call in progress is kept. */
  idle_timeout: 300,
  /** Key type of the workload SVIDs the agent requests (src/agent/workload/svid-key.ts). */
  svid_key_type: 'ec-p256',
} as const;

const count = (max: number) => z.number().int().min(1).max(max);

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
    /**
     * The server's Node API: one `host:port`, or a list of the servers that
     * share one store (tried in order; the agent moves to the next when one
     * is unreachable, without re-attesting). A name that resolves to several
     * addresses is tried address by address as well.
     */
    address: z.union([hostPort(), z.array(hostPort()).min(1).max(16)]).transform((v) => (Array.isArray(v) ? v : [v])),
    /** Bootstrap trust: the server CA bundle (PEM) the agent trusts before its first sync. */
    bundle: configPath(),
  }),
  data_dir: configPath(),
  log_level: logLevel(),
  /**
   * How far this node's clock may be off the server's: server-issued
   * certificates (the server's TLS certificate, the agent SVID) are accepted
   * this long before their notBefore and after their notAfter (seconds).
   */
  clock_skew_tolerance: duration()
    .pipe(z.number().max(3600, 'must be at most 1h: a larger skew needs a fixed clock, not a tolerance'))
    .default(60),
  /** Seconds between continuous attestations (a fresh quote on the server connection); 0 turns them off. */
  attestation_interval: z.number().int().min(0).max(86_400).default(30),
  tpm: z
    .strictObject({
      tcti: z.string().min(1).max(1024).default('device:/dev/tpmrm0'),
      ek_kind: z.enum(['rsa-2048', 'ecc-p256', 'ecc-p384']).default('rsa-2048'),
      ak_kind: z.enum(['rsa-2048', 'ecc-p256']).default('rsa-2048'),
      ak_persistent_handle: persistentHandle().optional(),
      /** Keep the agent key in the TPM at this handle instead of as blobs in data_dir. */
      agent_key_persistent_handle: persistentHandle().optional(),
      /** The measured-boot event log sent with each quote; absent: the kernel's (securityfs), when it exists. */
      event_log: configPath().optional(),
    })
    .default({ tcti: 'device:/dev/tpmrm0', ek_kind: 'rsa-2048', ak_kind: 'rsa-2048' }),
  workload_api: z
    .strictObject({
      socket_path: configPath().default(DEFAULT_WORKLOAD_API_SOCKET),
      max_connections: count(1_000_000).default(WORKLOAD_API_DEFAULTS.max_connections),
      max_connections_per_uid: count(1_000_000).default(WORKLOAD_API_DEFAULTS.max_connections_per_uid),
      max_streams_per_uid: count(1_000_000).default(WORKLOAD_API_DEFAULTS.max_streams_per_uid),
      first_call_timeout: duration().default(WORKLOAD_API_DEFAULTS.first_call_timeout),
      idle_timeout: duration().default(WORKLOAD_API_DEFAULTS.idle_timeout),
      // Same list as SVID_KEY_TYPES in src/agent/workload/svid-key.ts (config does not import the agent).
      svid_key_type: z.enum(['ec-p256', 'ec-p384', 'rsa-2048']).default(WORKLOAD_API_DEFAULTS.svid_key_type),
    })
    .default({ socket_path: DEFAULT_WORKLOAD_API_SOCKET, ...WORKLOAD_API_DEFAULTS }),
});

export const agentConfigSchema = z.strictObject({ agent: agentSection });

export type AgentConfigFile = z.output<typeof agentConfigSchema>;
export type AgentConfig = AgentConfigFile['agent'];
