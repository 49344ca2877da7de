/**
 * The admin CLI commands, run in-process against a real server on a temp
 * Unix socket, with their output captured.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CliError, type Command } from '../../src/cli/command.js';
import { adminCommands, type CliIo } from '../../src/cli/admin/index.js';
import { parseSelector } from '../../src/server/store/index.js';
import { makeTestPki, MutableBundle, startTestApi, td, testBundle, type RunningApi, type TestPki } from './helpers.js';

const run = promisify(execFile);
let pki: TestPki;
let api: RunningApi;
let out = '';
let err = '';
const io: CliIo = { out: (t) => void (out += t.endsWith('\n') ? t : t + '\n'), err: (t) => void (err += t + '\n'), readStdin: async () => '' };
const cmds = adminCommands(io);

/** Runs a command as `keel` does (src/cli/main.ts): a CliError becomes its exit code and message. */
async function keel(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  out = '';
  err = '';
  const name = argv[0] === 'healthcheck' ? 'healthcheck' : `${argv[0]} ${argv[1]}`;
  const cmd: Command | undefined = cmds[name];
  if (!cmd) throw new Error(`no command ${name}`);
  const rest = argv.slice(name.split(' ').length);
  const withSocket = rest.includes('--socket') ? rest : [...rest, '--socket', api.socket];
  let code: number;
  try {
    code = await cmd.run(withSocket);
  } catch (e) {
    if (!(e instanceof CliError)) throw e;
    err += e.message + '\n';
    code = e.exitCode;
  }
  return { code, out, err };
}

const AGENT = td.child('/keel/agent/tpm/' + '1'.repeat(64));

beforeAll(async () => {
  pki = await makeTestPki();
  api = await startTestApi({ bundles: new MutableBundle(testBundle(pki, [])), plaintext: true });
  await api.store.recordAttestation({
    agentId: AGENT,
    ekPublicHash: '1'.repeat(64),
    selectors: [parseSelector('tpm:policy:prod')],
    svid: { serial: '0a', notAfter: new Date(Date.now() + 3600_000) },
    quote: { clock: 5n, resetCount: 0, restartCount: 0 },
  });
});
afterAll(async () => {
  await api?.stop();
  pki?.cleanup();
});

describe('keel entry', () => {
  it('creates, shows, lists, updates and deletes an entry', async () => {
    const c = await keel('entry', 'create', '--spiffe-id', 'spiffe://example.org/app/web', '--parent-id', AGENT.toString(), '--selector', 'unix:uid:1000', '--selector', 'unix:gid:1000', '--x509-svid-ttl', '1h', '--dns', 'web.example.org', '--hint', 'web');
    expect(c.code).toBe(0);
    expect(c.out).toMatch(/^Entry ID {9}: [0-9a-f-]{36}$/m);
    expect(c.out).toContain('SPIFFE ID        : spiffe://example.org/app/web\n');
    expect(c.out).toContain(`Parent ID        : ${AGENT.toString()}\n`);
    expect(c.out).toContain('Selector         : unix:gid:1000\nSelector         : unix:uid:1000\n');
    expect(c.out).toContain('X509-SVID TTL    : 3600\n');
    expect(c.out).toContain('JWT-SVID TTL     : default\n');
    const id = /^Entry ID\s+: (\S+)$/m.exec(c.out)![1]!;

    const show = await keel('entry', 'show', '--entry-id', id, '--json');
    expect(show.code).toBe(0);
    expect(JSON.parse(show.out)).toMatchObject({ id, spiffeId: 'spiffe://example.org/app/web', x509SvidTtl: 3600, dnsNames: ['web.example.org'], hint: 'web' });

    const list = await keel('entry', 'list', '--selector', 'unix:uid:1000');
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/^Found 1 entry\n/);
    expect(list.out).toContain(id);
    const none = await keel('entry', 'list', '--selector', 'unix:uid:1000', '--match', 'exact');
    expect(none.out).toMatch(/^Found 0 entries/);

    const up = await keel('entry', 'update', '--entry-id', id, '--jwt-svid-ttl', '5m', '--x509-svid-ttl', 'default', '--hint', '', '--json');
    expect(up.code).toBe(0);
    const updated = JSON.parse(up.out);
    expect(updated.jwtSvidTtl).toBe(300);
    expect(updated.x509SvidTtl).toBeUndefined();
    expect(updated.hint).toBeUndefined();

    const del = await keel('entry', 'delete', '--entry-id', id);
    expect(del.code).toBe(0);
    expect(del.out).toBe(`Deleted entry with ID: ${id}\n`);
    const gone = await keel('entry', 'show', '--entry-id', id);
    expect(gone.code).toBe(1);
    expect(gone.err).toMatch(/Not found: entry .* not found/);
  });

  it('makes node groups with --node and lists with --json', async () => {
    const n = await keel('entry', 'create', '--spiffe-id', 'spiffe://example.org/nodes/prod', '--node', '--selector', 'tpm:policy:prod', '--json');
    expect(n.code).toBe(0);
    expect(JSON.parse(n.out).parentId).toBe('spiffe://example.org/keel/server');
    const l = await keel('entry', 'list', '--parent-id', 'spiffe://example.org/keel/server', '--json');
    expect(JSON.parse(l.out).entries.map((e: { spiffeId: string }) => e.spiffeId)).toEqual(['spiffe://example.org/nodes/prod']);
  });

  it('creates a batch from --data and deletes several at once', async () => {
    const file = join(api.dir, 'entries.json');
    writeFileSync(file, JSON.stringify({ entries: [1, 2, 3].map((i) => ({ spiffeId: `spiffe://example.org/batch/${i}`, parentId: AGENT.toString(), selectors: [`unix:uid:${i}`] })) }));
    const c = await keel('entry', 'create', '--data', file, '--json');
    expect(c.code).toBe(0);
    const ids = JSON.parse(c.out).entries.map((e: { id: string }) => e.id);
    expect(ids).toHaveLength(3);
    const d = await keel('entry', 'delete', ...ids.flatMap((i: string) => ['--entry-id', i]));
    expect(d.code).toBe(0);
    expect(d.out.trim().split('\n')).toHaveLength(3);
  });

  it('exits 2 on usage errors and 1 on refusals, naming the problem', async () => {
    expect((await keel('entry', 'create', '--parent-id', AGENT.toString(), '--selector', 'a:b')).code).toBe(2);
    expect((await keel('entry', 'create', '--spiffe-id', 'spiffe://example.org/x', '--node', '--parent-id', AGENT.toString(), '--selector', 'a:b')).code).toBe(2);
    expect((await keel('entry', 'list', '--colour', 'red')).code).toBe(2);
    expect((await keel('entry', 'create', '--spiffe-id', 'spiffe://example.org/x', '--parent-id', AGENT.toString(), '--selector', 'a:b', '--x509-svid-ttl', 'soon')).code).toBe(2);
    const bad = await keel('entry', 'create', '--spiffe-id', 'spiffe://example.org/x', '--parent-id', AGENT.toString(), '--selector', 'nocolon');
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('Invalid request');
    expect(bad.err).toMatch(/\/selectors\/0: .*type:value/);
    const away = await keel('entry', 'list', '--socket', join(api.dir, 'nothing.sock'));
    expect(away.code).toBe(1);
    expect(away.err).toMatch(/cannot reach the keel server .* no socket there/);
  });
});

describe('keel agent', () => {
  it('lists, shows, evicts, bans and unbans', async () => {
    const l = await keel('agent', 'list');
    expect(l.out).toMatch(/^Found 1 attested agent:\n\nSPIFFE ID {8}: spiffe:\/\/example\.org\/keel\/agent\/tpm\/1{64}\n/);
    expect(l.out).toContain('Serial number    : 0a\n');
    const s = await keel('agent', 'show', '--spiffe-id', AGENT.toString(), '--json');
    expect(JSON.parse(s.out).status.kind).toBe('active');
    const e = await keel('agent', 'evict', '--spiffe-id', AGENT.toString());
    expect(e.out).toMatch(/^Agent evicted successfully\n/);
    expect((await keel('agent', 'ban', '--spiffe-id', AGENT.toString())).code).toBe(2);
    const b = await keel('agent', 'ban', '--spiffe-id', AGENT.toString(), '--reason', 'decommissioned');
    expect(b.code).toBe(0);
    expect(b.out).toContain('Ban reason       : decommissioned\n');
    const banned = await keel('agent', 'list', '--status', 'banned', '--json');
    expect(JSON.parse(banned.out).agents).toHaveLength(1);
    expect((await keel('agent', 'unban', '--spiffe-id', AGENT.toString())).out).toMatch(/^Agent unbanned successfully/);
    expect((await api.store.getNode(AGENT))?.status.kind).toBe('evicted');
  });
});

describe('keel bundle', () => {
  it('shows the own bundle as PEM that openssl reads, and as JWKS', async () => {
    const s = await keel('bundle', 'show');
    expect(s.code).toBe(0);
    const pem = join(api.dir, 'own.pem');
    writeFileSync(pem, s.out);
    const { stdout } = await run('openssl', ['x509', '-in', pem, '-noout', '-ext', 'subjectAltName']);
    expect(stdout).toContain('URI:spiffe://example.org');
    const j = await keel('bundle', 'show', '--format', 'spiffe');
    expect(JSON.parse(j.out).keys[0].use).toBe('x509-svid');
  });

  it('sets a federated bundle from PEM, lists and deletes it', async () => {
    const file = join(api.dir, 'other.pem');
    writeFileSync(file, pki.webRoot.cert);
    const set = await keel('bundle', 'set', '--id', 'spiffe://other.org', '--path', file);
    expect(set.code).toBe(0);
    expect(set.out).toBe('Bundle set for other.org\n');
    const l = await keel('bundle', 'list');
    expect(l.out).toContain('* other.org\n');
    expect(l.out).toContain('-----BEGIN CERTIFICATE-----');
    const lj = await keel('bundle', 'list', '--json');
    expect(JSON.parse(lj.out).bundles[0].trustDomain).toBe('other.org');
    expect((await keel('bundle', 'delete', '--id', 'other.org')).code).toBe(0);
    expect((await keel('bundle', 'list')).out).toBe('No federated bundles\n');
    const missing = await keel('bundle', 'delete', '--id', 'other.org');
    expect(missing.code).toBe(1);
  });
});

describe('keel healthcheck', () => {
  it('is healthy against a running server and unhealthy without one', async () => {
    const ok = await keel('healthcheck');
    expect(ok.code).toBe(0);
    expect(ok.out).toBe('Server is healthy.\n');
    const bad = await keel('healthcheck', '--socket', join(api.dir, 'none.sock'));
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/^Server is unhealthy: /);
  });
});
