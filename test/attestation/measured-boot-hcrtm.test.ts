/**
 * Measured boot end to end, through the real server (Node API over TLS,
 * SoftHSM CA, SQLite store): an agent attests a swtpm whose PCRs hold a real
 * machine's boot, sends the event log, and a firmware policy with
 * `eventLog.required` has the log replayed against the quote (sha256, PCRs 0–7).
 *
 * The machine is tpm2-tss's H-CRTM one (test/data/eventlogs/README.md). Its
 * log is DERIVED: the EV_EFI_HCRTM_EVENT's digests are replaced by H(D) in
 * each of its banks (SHA-1, SHA-256, SM3-256), D a known string, because the
 * preimage of the firmware's H-CRTM measurement is not public. swtpm runs the
 * H-CRTM sequence with D itself (startSwtpm({ hcrtm: D }), i.e. swtpm_ioctl
 * -h before TPM2_Startup), and every other measured event's digests are
 * extended into it with tpm2_pcrextend (SHA-1 and SHA-256 banks), as the
 * firmware would have.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { NodeApiError, attestNode, type AgentSvid } from '../../src/agent/attestation/index.js';
import { parsePolicy, type FirmwarePolicy } from '../../src/policy/index.js';
import { firmwarePolicies } from '../../src/server/attestation/index.js';
import { TpmDevice, type AgentKeyHandle } from '../../src/tpm/device.js';
import {
  EventType,
  LOG_ONLY_PCR,
  decodeEventData,
  parseEventLog,
  replay,
  type HashAlg,
} from '../../src/tpm/eventlog/index.js';
import { appendToVariable, digestsOf, serializeLog, signatureList, withData, type EventSpec } from '../tpm/eventlog-builder.js';
import { AGENT_KEY_HANDLE, HsmFixture, TD, startServer, type TestServer } from './harness.js';

const run = promisify(execFile);
const BANKS: HashAlg[] = ['sha1', 'sha256'];
/** PCR_DIGEST_SPECs per tpm2_pcrextend process. */
const BATCH = 32;

// ── the logs ───────────────────────────────────────────────────────────────

const REAL = parseEventLog(await readFile(new URL('../data/eventlogs/tpm2-tss_binary_measurements_hcrtm.bin', import.meta.url)));
/** The H-CRTM data swtpm measures: stands in for the firmware's H-CRTM image. */
const D = Buffer.from('keel test H-CRTM image (stands in for the firmware volume the CRTM hashes)');
const isHcrtm = (e: EventSpec): boolean => e.eventType === EventType.EV_EFI_HCRTM_EVENT;
/** DERIVED (see above): the real log with its H-CRTM digests replaced by H(D) in every bank. */
const GENUINE_EVENTS: readonly EventSpec[] = REAL.events.map((e) => (isHcrtm(e) ? { ...e, digests: digestsOf(e, D) } : e));
const GENUINE = serializeLog(REAL, GENUINE_EVENTS);
const GENUINE_LOG = parseEventLog(GENUINE);
/** What an H-CRTM machine's PCR 0 is before the firmware's first own measurement: H(00…04 || H(D)). */
const hcrtmPcr0 = (bank: HashAlg): string => {
  const start = Buffer.alloc(bank === 'sha1' ? 20 : 32);
  start[start.length - 1] = 4;
  return createHash(bank).update(start).update(createHash(bank).update(D).digest()).digest('hex');
};

/** The index of the PCR 7 measurement of Secure Boot variable `name` (the same in every derived log). */
const variableEvent = (name: string): number =>
  REAL.events.findIndex((e) => {
    if (e.pcrIndex !== 7 || e.eventType !== EventType.EV_EFI_VARIABLE_DRIVER_CONFIG) return false;
    const d = decodeEventData(e);
    return d.kind === 'uefi-variable' && d.known === name;
  });

const ALG_ID: Record<HashAlg, number> = { sha1: 0x0004, sha256: 0x000b, sha384: 0x000c, sha512: 0x000d };
/** The digests of every event a firmware would have extended; with `tpmRanHcrtm`, not the H-CRTM one, which the TPM measured itself. */
function extendSpecs(events: readonly EventSpec[], tpmRanHcrtm: boolean): string[] {
  return events
    .filter((e) => e.eventType !== EventType.EV_NO_ACTION && e.pcrIndex !== LOG_ONLY_PCR && !(tpmRanHcrtm && isHcrtm(e)))
    .map((e) => `${e.pcrIndex}:${BANKS.map((b) => `${b}=${e.digests.find((d) => d.algId === ALG_ID[b])!.digest.toString('hex')}`).join(',')}`);
}

async function pcrread(sim: Swtpm, pcrs: number[]): Promise<Map<HashAlg, Map<number, string>>> {
  const { stdout } = await run('tpm2_pcrread', [BANKS.map((b) => `${b}:${pcrs.join(',')}`).join('+')], { env: sim.env });
  const out = new Map<HashAlg, Map<number, string>>();
  let bank: Map<number, string> | undefined;
  for (const line of stdout.split('\n')) {
    const b = /^\s*(sha1|sha256):\s*$/.exec(line);
    if (b) out.set(b[1] as HashAlg, (bank = new Map()));
    const p = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$/.exec(line);
    if (p && bank) bank.set(Number(p[1]), p[2]!.toLowerCase());
  }
  return out;
}

// ── nodes ──────────────────────────────────────────────────────────────────

interface Node {
  readonly sim: Swtpm;
  device: TpmDevice;
  agentKey: AgentKeyHandle;
  /** PCR 0 as the TPM started, before anything was extended. */
  pcr0AtStart: Map<HashAlg, string>;
}

/**
 * Boots `sim` with `events`: extends them with tpm2-tools (before the addon
 * connects: swtpm serves one connection at a time), then opens the device and
 * makes (first boot) or finds the persistent agent key.
 */
async function boot(sim: Swtpm, events: readonly EventSpec[], tpmRanHcrtm: boolean, firstBoot: boolean) {
  const pcr0AtStart = new Map([...(await pcrread(sim, [0]))].map(([b, m]) => [b, m.get(0)!]));
  const specs = extendSpecs(events, tpmRanHcrtm);
  for (let i = 0; i < specs.length; i += BATCH) await run('tpm2_pcrextend', specs.slice(i, i + BATCH), { env: sim.env });
  const device = await TpmDevice.open(sim.tcti);
  if (firstBoot) {
    // Persistent, so it takes none of swtpm's three transient object slots.
    const loaded = await device.loadAgentKey('rsa-2048', await device.createAgentKey('rsa-2048'));
    await device.persistAk(loaded, AGENT_KEY_HANDLE);
    await device.flush(loaded);
  }
  return { device, agentKey: await device.agentKeyFromPersistent(AGENT_KEY_HANDLE), pcr0AtStart };
}

async function startNode(opts: { hcrtm: Buffer | undefined }, events: readonly EventSpec[]): Promise<Node> {
  const sim = await startSwtpm(opts.hcrtm ? { hcrtm: opts.hcrtm } : {});
  try {
    return { sim, ...(await boot(sim, events, opts.hcrtm !== undefined, true)) };
  } catch (e) {
    await sim.stop();
    throw e;
  }
}

// ── policies ───────────────────────────────────────────────────────────────

const PCR0 = replay(GENUINE_LOG, { banks: ['sha256'] }).get('sha256')!.get(0)!.toString('hex');
const bootPolicy = (extra = ''): FirmwarePolicy =>
  parsePolicy(
    [
      'apiVersion: keel.dev/v1',
      'kind: FirmwarePolicy',
      'name: hcrtm-kylin',
      'bank: sha256',
      'pcrs:',
      `  0: "${PCR0}"`, // only an H-CRTM start (00…04) followed by these events gives it
      'eventLog:',
      '  required: true',
      '  separators: [0, 1, 2, 3, 4, 5, 6, 7]',
      extra,
    ].join('\n'),
  );
/** The attestor's policy set, switched by the tests. */
let active: FirmwarePolicy[] = [bootPolicy()];

// ── the run ────────────────────────────────────────────────────────────────

let hsm: HsmFixture;
let server: TestServer;
/** A TPM that runs the H-CRTM sequence with D at every power-on. */
let G: Node;
/** A TPM without H-CRTM, whose PCR 0 got H(D) by TPM2_PCR_Extend after TPM2_Startup. */
let F: Node;
let dir: string;
let files = 0;

beforeAll(async () => {
  expect(GENUINE_LOG.hcrtmEvent).toBe(1);
  dir = await mkdtemp(join(tmpdir(), 'keel-hcrtm-'));
  hsm = await HsmFixture.create();
  [G, F] = await Promise.all([startNode({ hcrtm: D }, GENUINE_EVENTS), startNode({ hcrtm: undefined }, GENUINE_EVENTS)]);
  server = await startServer(hsm.hsm, {
    manufacturerCaPems: [...G.sim.manufacturerCaPems, ...F.sim.manufacturerCaPems],
    policy: { evaluate: (m) => firmwarePolicies(active).evaluate(m) },
    pcrs: [0, 1, 2, 3, 4, 5, 6, 7],
  });
});
afterAll(async () => {
  await server?.close();
  for (const n of [G, F]) {
    await n?.device.close();
    await n?.sim.stop();
  }
  await hsm?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});
afterEach(async () => {
  active = [bootPolicy()];
  // Every attestation flushed what it loaded.
  for (const n of [G, F]) if (n && !n.device.closed) expect((await n.device.loadedHandles()).transient).toEqual([]);
});

/** The agent attests `node`, reading `log` from a file as it reads /sys/kernel/security/tpm0/binary_bios_measurements. */
async function attest(node: Node, log: Buffer): Promise<AgentSvid> {
  const eventLogPath = join(dir, `log-${++files}.bin`);
  await writeFile(eventLogPath, log);
  return attestNode({ device: node.device, ekKind: 'rsa-2048', agentKey: node.agentKey, serverAddress: server.address, serverCaBundle: server.caPem, trustDomain: TD, eventLogPath });
}

/** Audit lines once the server has written them. */
async function settledAudit() {
  const end = Date.now() + 3000;
  let got = server.takeAudit();
  while (got.length === 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 20));
    got = server.takeAudit();
  }
  return got;
}

async function accepted(node: Node, log: Buffer): Promise<AgentSvid> {
  server.takeAudit();
  const svid = await attest(node, log);
  expect(svid.selectors).toContain('tpm:policy:hcrtm-kylin');
  expect((await settledAudit()).map((e) => e.event)).toEqual(['node.attested']);
  return svid;
}

/** Attests, expects a refusal: one audit line with the reason and detail the agent got, and no node recorded. */
async function refused(node: Node, log: Buffer, reason: string): Promise<string> {
  const before = JSON.stringify(await server.nodes(), (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  server.takeAudit();
  const err = await attest(node, log).then(
    () => new Error('the attestation was accepted'),
    (e: unknown) => e,
  );
  expect(err, String(err)).toBeInstanceOf(NodeApiError);
  expect((err as NodeApiError).reason, (err as Error).message).toBe(reason);
  const audit = await settledAudit();
  expect(audit.map((e) => [e.event, (e as { reason?: string }).reason])).toEqual([['node.attestation_refused', reason]]);
  const detail = (audit[0] as { detail: string }).detail;
  expect((err as NodeApiError).detail).toContain(detail);
  expect(JSON.stringify(await server.nodes(), (_k, v) => (typeof v === 'bigint' ? v.toString() : v))).toBe(before);
  return detail;
}

describe('an H-CRTM machine, replayed into swtpm and quoted', () => {
  it("swtpm's H-CRTM sequence starts PCR 0 at H(00…04 || H(D)) in both banks; without it PCR 0 starts at zero", () => {
    for (const bank of BANKS) {
      expect(G.pcr0AtStart.get(bank)).toBe(hcrtmPcr0(bank));
      expect(F.pcr0AtStart.get(bank)).toBe('00'.repeat(bank === 'sha1' ? 20 : 32));
    }
  });

  it('genuine: the derived log on the TPM that ran the H-CRTM is accepted', async () => {
    const svid = await accepted(G, GENUINE);
    expect(svid.spiffeId).toMatch(new RegExp(`^spiffe://${TD}/keel/agent/tpm/[0-9a-f]{64}$`));
  });

  it('genuine, with the zero fill of a 64 KiB firmware area after it: accepted', async () => {
    await accepted(G, Buffer.concat([GENUINE, Buffer.alloc(65536 - GENUINE.length)]));
  });

  it('H-CRTM claimed but not performed: the same log on a TPM that got H(D) by software is refused, naming the H-CRTM', async () => {
    const detail = await refused(F, GENUINE, 'eventlog-replay');
    expect(detail).toMatch(
      /^event log replay \(sha256, PCR 0\): quoted [0-9a-f]{64} but the log replays to [0-9a-f]{64}; the log claims an H-CRTM sequence \(event 1, EV_EFI_HCRTM_EVENT\), which starts PCR 0 at 00…04, but the quote matches the same events from the ordinary start: the TPM did not run that H-CRTM, its digest was extended by software$/,
    );
  });

  it('a genuine H-CRTM TPM whose log hides the H-CRTM (its event removed) is refused at PCR 0', async () => {
    const hidden = serializeLog(REAL, GENUINE_EVENTS.filter((e) => !isHcrtm(e)));
    expect(parseEventLog(hidden).hcrtmEvent).toBeUndefined();
    const detail = await refused(G, hidden, 'eventlog-replay');
    expect(detail).toMatch(/^event log replay \(sha256, PCR 0\): quoted [0-9a-f]{64} but the log replays to [0-9a-f]{64}$/);
  });

  it('a log missing one bank digest (SHA-256 of the SecureBoot event dropped) is refused as malformed, naming the event and bank', async () => {
    const k = variableEvent('SecureBoot');
    expect(k).toBe(5);
    const events = GENUINE_EVENTS.map((e, i) => (i === k ? { ...e, digests: e.digests.filter((d) => d.algId !== 0x000b) } : e));
    const detail = await refused(G, serializeLog(REAL, events), 'malformed');
    expect(detail).toContain(`event log: event ${k} carries no sha256 digest, which the Spec ID event lists (every listed bank is required)`);
  });
});

describe('after a power cycle', () => {
  // The log of the next boot: Secure Boot lists of types keel did not use to read, appended to
  // the (empty) PK, KEK and db of the derived log, event digests recomputed and extended as measured.
  const additions = {
    PK: signatureList('3c5766e8-269c-4e34-aa14-ed776e85b3b6', [{ owner: '11111111-2222-4333-8444-555555555555', data: Buffer.alloc(256, 0x5a) }]),
    KEK: signatureList('3bd2a492-96c0-4079-b420-fcf98ef103ed', [{ owner: '11111111-2222-4333-8444-555555555555', data: Buffer.alloc(48, 0x6b) }]),
    db: signatureList('ff3e5307-9fd0-48c9-85f1-8ad56c701e01', [{ owner: '11111111-2222-4333-8444-555555555555', data: Buffer.alloc(48, 0x7c) }]),
  };
  const SB_EVENTS = GENUINE_EVENTS.map((e, i) => {
    for (const [name, list] of Object.entries(additions)) if (i === variableEvent(name)) return withData(e, appendToVariable(e.data, list));
    return e;
  });
  const SB_LOG = serializeLog(REAL, SB_EVENTS);
  const refs = {
    pk: `rsa2048:${createHash('sha256').update(Buffer.alloc(256, 0x5a)).digest('hex')}`,
    kek: `x509-sha256:${'6b'.repeat(48)}`,
    db: `sha384:${'7c'.repeat(48)}`,
  };

  it('the TPM runs its H-CRTM again (PCR 0 restarts from it); each unread signature type in PK, KEK and db is refused under a pinning policy', async () => {
    expect(['PK', 'KEK', 'db'].map(variableEvent)).toEqual([6, 7, 8]);
    await G.device.close();
    await G.sim.restart();
    Object.assign(G, await boot(G.sim, SB_EVENTS, true, false));
    for (const bank of BANKS) expect(G.pcr0AtStart.get(bank)).toBe(hcrtmPcr0(bank));

    // PK, KEK and db pinned empty, as the machine had them: every appended entry is named by its type and ref.
    active = [bootPolicy('  pk: []\n  kek: []\n  db: []')];
    const detail = await refused(G, SB_LOG, 'policy');
    expect(detail).toContain(`hcrtm-kylin: eventLog.pk: EFI_CERT_RSA2048 entry ${refs.pk.slice(8, 20)}… (list it as "${refs.pk}") is in pk but not allowed; allowed: []`);
    expect(detail).toContain(`eventLog.kek: EFI_CERT_X509_SHA256 entry 6b6b6b6b6b6b… (list it as "${refs.kek}") is in kek but not allowed`);
    expect(detail).toContain(`eventLog.db: EFI_CERT_SHA384 entry 7c7c7c7c7c7c… (list it as "${refs.db}") is in db but not allowed`);

    // Listed by those refs, the same node and log are accepted.
    active = [bootPolicy(`  pk: ["${refs.pk}"]\n  kek: ["${refs.kek}"]\n  db: ["${refs.db}"]`)];
    await accepted(G, SB_LOG);
  });
});
