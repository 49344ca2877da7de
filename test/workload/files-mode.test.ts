/**
 * SVIDs as files (`keel agent api write`): the file-set writer on a real file
 * system, and the command as a child process against a real Workload API
 * server on a real Unix socket, through three rotations and a server restart,
 * with a worker thread sampling the directory in a tight loop the whole time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { CURRENT_LINK, SvidFileSetError, SvidFileWriter, splitCommandLine, type SvidFileContent } from '../../src/agent/files/index.js';
import { startWorkloadApiServer, type WorkloadApiServer } from '../../src/agent/workload/index.js';
import { resolveWriteOptions } from '../../src/cli/agent/write-config.js';
import { CliError } from '../../src/cli/command.js';
import { ConfigError } from '../../src/config/index.js';
import { issueLeaf, makeCa, type TestCa } from './certs.js';
import { FakeIdentitySource } from './fake-source.js';
import { tmpSocketPath, until } from './client.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'keel-files-'));
  dirs.push(d);
  return d;
}

const ca = makeCa('example.org');
const fedCa = makeCa('other.org');

function content(c: TestCa = ca, federated: [string, TestCa][] = []): SvidFileContent & { serial: string } {
  const leaf = issueLeaf(c, 'spiffe://example.org/web');
  return {
    chainDer: leaf.chainDer,
    keyPkcs8Der: leaf.privateKeyPkcs8,
    bundleDer: [ca.certDer],
    federated: new Map(federated.map(([td, x]) => [td, [x.certDer]])),
    serial: new X509Certificate(leaf.chainDer[0]!).serialNumber.toLowerCase(),
  };
}

const pemCerts = (text: string): X509Certificate[] => (text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? []).map((p) => new X509Certificate(p));

/** The three files of `dir` (or of one generation) as a consumer reads them: key matches leaf, leaf signed by a bundle CA. */
function consistent(dir: string, names = ['svid.pem', 'svid.key', 'bundle.pem']): { serial: string } {
  const [svid, key, bundle] = names.map((n) => readFileSync(join(dir, n), 'utf8')) as [string, string, string];
  const leaf = pemCerts(svid)[0]!;
  const spki = createPublicKey(createPrivateKey(key)).export({ format: 'der', type: 'spki' });
  expect(spki.equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))).toBe(true);
  expect(pemCerts(bundle).some((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey))).toBe(true);
  return { serial: leaf.serialNumber.toLowerCase() };
}

const generations = (dir: string): string[] => readdirSync(dir).filter((n) => /^\.keel-\d{12}$/.test(n)).sort();

describe('SvidFileWriter', () => {
  it('writes one generation, swaps `current` to it, and links the configured names through `current`; modes 0644 and 0600', async () => {
    const dir = join(tmp(), 'out');
    const w = new SvidFileWriter(dir);
    const c = content();
    const r = await w.write(c);
    expect(r).toMatchObject({ changed: true, generation: '.keel-000000000001', files: ['svid.pem', 'svid.key', 'bundle.pem'], serial: c.serial });
    expect(readlinkSync(join(dir, CURRENT_LINK))).toBe('.keel-000000000001');
    for (const n of ['svid.pem', 'svid.key', 'bundle.pem']) expect(readlinkSync(join(dir, n))).toBe(`current/${n}`);
    expect(lstatSync(join(dir, '.keel-000000000001', 'svid.pem')).mode & 0o777).toBe(0o644);
    expect(lstatSync(join(dir, '.keel-000000000001', 'bundle.pem')).mode & 0o777).toBe(0o644);
    expect(lstatSync(join(dir, '.keel-000000000001', 'svid.key')).mode & 0o777).toBe(0o600);
    expect(consistent(dir).serial).toBe(c.serial);
    expect(readFileSync(join(dir, 'svid.key'), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(pemCerts(readFileSync(join(dir, 'bundle.pem'), 'utf8')).map((x) => x.raw.toString('hex'))).toEqual([ca.certDer.toString('hex')]);
    // The same content again writes nothing and keeps the generation.
    const again = await w.write(c);
    expect(again).toMatchObject({ changed: false, generation: '.keel-000000000001' });
    expect(generations(dir)).toEqual(['.keel-000000000001']);
  });

  it('keeps the current and the previous generation only; a later writer on the same directory counts on', async () => {
    const dir = tmp();
    const w = new SvidFileWriter(dir);
    for (let i = 0; i < 4; i++) await w.write(content());
    expect(generations(dir)).toEqual(['.keel-000000000003', '.keel-000000000004']);
    const r = await new SvidFileWriter(dir).write(content());
    expect(r.generation).toBe('.keel-000000000005');
    expect(generations(dir)).toEqual(['.keel-000000000004', '.keel-000000000005']);
    expect(readdirSync(dir).filter((n) => n.includes('.tmp') || n.startsWith('.keel-link-'))).toEqual([]);
  });

  it('refuses a key that is not the leaf\'s, and a chain from another CA, leaving the previous set untouched', async () => {
    const dir = tmp();
    const w = new SvidFileWriter(dir);
    const good = content();
    await w.write(good);
    const other = content();
    const mismatched = { ...good, keyPkcs8Der: other.keyPkcs8Der };
    await expect(w.write(mismatched)).rejects.toMatchObject({ name: 'SvidFileSetError', problem: 'key-mismatch' });
    const foreign = content(makeCa('example.org'));
    const e = await w.write(foreign).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SvidFileSetError);
    expect((e as SvidFileSetError).problem).toBe('chain-invalid');
    expect((e as Error).message).toMatch(/does not verify against its bundle/);
    await expect(w.write({ ...good, bundleDer: [] })).rejects.toMatchObject({ problem: 'incomplete' });
    expect(generations(dir)).toEqual(['.keel-000000000001']);
    expect(consistent(dir).serial).toBe(good.serial);
  });

  it('writes federated bundles as their own files (and into the bundle when asked); a trust domain that goes takes its file with it', async () => {
    const dir = tmp();
    const w = new SvidFileWriter(dir, { includeFederatedInBundle: true });
    await w.write(content(ca, [['other.org', fedCa]]));
    expect(readlinkSync(join(dir, 'federated-other.org.pem'))).toBe('current/federated-other.org.pem');
    expect(pemCerts(readFileSync(join(dir, 'federated-other.org.pem'), 'utf8'))[0]!.raw.equals(fedCa.certDer)).toBe(true);
    expect(pemCerts(readFileSync(join(dir, 'bundle.pem'), 'utf8')).map((c) => c.raw.toString('hex'))).toEqual([ca.certDer, fedCa.certDer].map((d) => d.toString('hex')));
    await w.write(content());
    expect(existsSync(join(dir, 'federated-other.org.pem'))).toBe(false);
    expect(() => lstatSync(join(dir, 'federated-other.org.pem'))).toThrow(/ENOENT/);
  });

  it('sets the owner and modes it is given, and replaces plain files an older `fetch x509 --write` left', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'svid.pem'), 'old');
    const w = new SvidFileWriter(dir, { uid: 65534, gid: 65534, certMode: 0o640, keyMode: 0o400, svidFileName: 'svid.pem', keyFileName: 'svid_key.pem', bundleFileName: 'svid_bundle.pem' });
    const r = await w.write(content());
    for (const n of ['svid.pem', 'svid_key.pem', 'svid_bundle.pem']) {
      const st = lstatSync(join(dir, r.generation, n));
      expect([st.uid, st.gid]).toEqual([65534, 65534]);
      expect(st.mode & 0o777).toBe(n === 'svid_key.pem' ? 0o400 : 0o640);
      expect(lstatSync(join(dir, n)).isSymbolicLink()).toBe(true);
    }
    expect(lstatSync(join(dir, r.generation)).uid).toBe(65534);
    consistent(dir, ['svid.pem', 'svid_key.pem', 'svid_bundle.pem']);
    // A different owner is a change: the files are written again.
    const w2 = new SvidFileWriter(dir, { svidFileName: 'svid.pem', keyFileName: 'svid_key.pem', bundleFileName: 'svid_bundle.pem', certMode: 0o640, keyMode: 0o400, uid: 0, gid: 0 });
    expect((await w2.write({ ...content() })).changed).toBe(true);
  });

  it('refuses names outside the directory, colliding names and a key others could write, naming the problem', () => {
    for (const bad of [{ svidFileName: '../x.pem' }, { keyFileName: 'current' }, { bundleFileName: '.keel-000000000001' }, { keyFileName: 'svid.pem' }, { federatedFileName: 'fed.pem' }, { federatedFileName: 'a/{trust_domain}' }]) {
      expect(() => new SvidFileWriter(tmp(), bad)).toThrow(expect.objectContaining({ problem: 'bad-file-name' }));
    }
    expect(() => new SvidFileWriter(tmp(), { keyMode: 0o666 })).toThrow(expect.objectContaining({ problem: 'bad-mode', message: expect.stringMatching(/0666 lets others write/) }));
  });
});

describe('splitCommandLine and the write options', () => {
  it('splits like sh without expanding, and refuses what only a shell would understand', () => {
    expect(splitCommandLine('systemctl reload nginx')).toEqual(['systemctl', 'reload', 'nginx']);
    expect(splitCommandLine(`/bin/echo 'a b' "c \\"d\\"" e\\ f`)).toEqual(['/bin/echo', 'a b', 'c "d"', 'e f']);
    for (const bad of ['nginx -s reload && echo', 'kill -HUP $(cat /run/x.pid)', 'echo > /tmp/x', "echo 'open", '', 'echo "$HOME"']) {
      expect(() => splitCommandLine(bad)).toThrow(expect.objectContaining({ name: 'CommandLineError' }));
    }
  });

  it('flags and a YAML file: the file\'s keys, flags winning, errors naming the key or flag', () => {
    const d = tmp();
    const cfg = join(d, 'write.yaml');
    writeFileSync(cfg, ['dir: out', 'hint: web', 'key_file_mode: "0640"', 'owner: nobody', 'on_update:', '  command: [systemctl, reload, nginx]', '  timeout: 5s', 'signal:', '  name: hup', '  pid_file: /run/nginx.pid'].join('\n'));
    const o = resolveWriteOptions({ config: cfg, 'cert-mode': '0600' });
    expect(o.dir).toBe(join(d, 'out'));
    expect(o.hint).toBe('web');
    expect(o.layout).toMatchObject({ keyMode: 0o640, certMode: 0o600, uid: 65534 });
    expect(o.onUpdate).toEqual(['systemctl', 'reload', 'nginx']);
    expect(o.commandTimeoutMs).toBe(5000);
    expect(o.signal).toEqual({ name: 'SIGHUP', pidFile: '/run/nginx.pid' });
    expect(resolveWriteOptions({ dir: d, 'on-update': 'nginx -s reload; true', 'on-update-shell': true }).onUpdate).toEqual(['/bin/sh', '-c', 'nginx -s reload; true']);

    writeFileSync(cfg, ['dir: out', 'key_file_mode: 0600', 'colour: blue'].join('\n'));
    const e = (() => {
      try {
        resolveWriteOptions({ config: cfg });
      } catch (x) {
        return x as ConfigError;
      }
    })();
    expect(e).toBeInstanceOf(ConfigError);
    expect(e!.issues.map((i) => i.path).sort()).toEqual(['colour', 'key_file_mode']);
    expect(() => resolveWriteOptions({})).toThrow(CliError);
    expect(() => resolveWriteOptions({ dir: d, 'on-update': 'a | b' })).toThrow(/--on-update: .*--on-update-shell/);
    expect(() => resolveWriteOptions({ dir: d, signal: 'HUP' })).toThrow(/--signal and --pid-file go together/);
    expect(() => resolveWriteOptions({ dir: d, owner: 'no-such-user-here' })).toThrow(/no such user in \/etc\/passwd/);
  });
});

/**
 * Runs in a worker thread: reads the directory as consumers do, as fast as it
 * can, until told to stop. (A) through one resolution of `current`; (B) through
 * the stable names, counted only when `current` did not move during the reads.
 */
const SAMPLER = `
const { workerData, parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const stop = new Int32Array(workerData.flag);
const dir = workerData.dir;
const certs = (t) => (t.match(/-----BEGIN CERTIFICATE-----[\\s\\S]+?-----END CERTIFICATE-----\\n?/g) || []).map((p) => new crypto.X509Certificate(p));
function check(base) {
  const svid = fs.readFileSync(path.join(base, 'svid.pem'), 'utf8');
  const key = fs.readFileSync(path.join(base, 'svid.key'), 'utf8');
  const bundle = fs.readFileSync(path.join(base, 'bundle.pem'), 'utf8');
  const leaf = certs(svid)[0];
  if (!leaf) return 'no certificate in svid.pem';
  const spki = crypto.createPublicKey(crypto.createPrivateKey(key)).export({ format: 'der', type: 'spki' });
  if (!spki.equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))) return 'key does not match certificate ' + leaf.serialNumber;
  if (!certs(bundle).some((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey))) return 'certificate does not chain to bundle';
  return leaf.serialNumber.toLowerCase();
}
const out = { samples: 0, viaCurrent: 0, viaNames: 0, notYet: 0, failures: [], serials: [] };
const seen = (s) => { if (out.serials[out.serials.length - 1] !== s) out.serials.push(s); };
while (Atomics.load(stop, 0) === 0) {
  out.samples++;
  let g1;
  try { g1 = fs.readlinkSync(path.join(dir, 'current')); } catch (e) { if (out.viaCurrent === 0) { out.notYet++; continue; } out.failures.push('current: ' + e.code); continue; }
  try {
    const r = check(path.join(dir, g1));
    if (/^[0-9a-f]+$/.test(r)) { out.viaCurrent++; seen(r); } else out.failures.push(g1 + ': ' + r);
  } catch (e) { out.failures.push(g1 + ': ' + e.message); }
  try {
    const r = check(dir);
    const g2 = fs.readlinkSync(path.join(dir, 'current'));
    if (g1 === g2) { if (/^[0-9a-f]+$/.test(r)) out.viaNames++; else out.failures.push('names in ' + g1 + ': ' + r); }
  } catch (e) { out.failures.push('names: ' + e.message); }
  if (out.failures.length > 20) break;
}
parentPort.postMessage(out);
`;

interface SamplerReport {
  samples: number;
  viaCurrent: number;
  viaNames: number;
  notYet: number;
  failures: string[];
  serials: string[];
}

const stripZeros = (hex: string): string => hex.toLowerCase().replace(/^0+/, '');

describe('keel agent api write against a real Workload API server', () => {
  it('through three rotations and a server restart: every set on disk is consistent at every moment, the command and the signal run once per new set', async () => {
    const source = new FakeIdentitySource('example.org');
    source.addFederatedDomain('other.org');
    source.setEntry({ entryId: 'web', spiffeId: 'spiffe://example.org/web', selectors: [{ type: 'unix', value: 'uid:0' }], hint: 'web', federatesWith: ['other.org'] });
    const socketPath = tmpSocketPath();
    let server: WorkloadApiServer = await startWorkloadApiServer({ socketPath, source, audit: () => undefined });

    const work = tmp();
    const dir = join(work, 'certs');
    const cmdLog = join(work, 'commands.log');
    const hupLog = join(work, 'hup.log');
    const pidFile = join(work, 'target.pid');
    // The update command: what it sees through the stable name, and what the writer says it wrote.
    const script = join(work, 'on-update.sh');
    writeFileSync(script, `#!/bin/sh\nset -e\nseen=$(openssl x509 -in "$KEEL_SVID_DIR/svid.pem" -noout -serial | cut -d= -f2)\necho "$KEEL_SVID_SERIAL $seen $KEEL_SPIFFE_ID" >> '${cmdLog}'\n`);
    chmodSync(script, 0o755);
    const lines = (f: string): string[] => (existsSync(f) ? readFileSync(f, 'utf8').trim().split('\n').filter(Boolean) : []);

    const children: ChildProcess[] = [];
    const target = spawn(process.execPath, ['-e', `const fs=require('fs');process.on('SIGHUP',()=>fs.appendFileSync(${JSON.stringify(hupLog)},'hup\\n'));fs.writeFileSync(${JSON.stringify(pidFile)},String(process.pid));setInterval(()=>{},1000);`], { stdio: 'ignore' });
    children.push(target);
    await until(() => existsSync(pidFile), 10_000, 'the signal target');

    const flag = new SharedArrayBuffer(4);
    const sampler = new Worker(SAMPLER, { eval: true, workerData: { dir, flag } });
    const report = new Promise<SamplerReport>((resolve, reject) => {
      sampler.once('message', resolve);
      sampler.once('error', reject);
    });

    let stderr = '';
    const writer = spawn(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', 'agent', 'api', 'write', '--socket', socketPath, '--dir', dir, '--hint', 'web', '--on-update', script, '--signal', 'HUP', '--pid-file', pidFile],
      { cwd: process.cwd(), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    children.push(writer);
    writer.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((r) => writer.once('exit', (code) => r(code)));

    try {
      const serials: string[] = [];
      const serialOf = (): string => new X509Certificate(source.leafOf('web')!.chainDer[0]!).serialNumber.toLowerCase();
      serials.push(serialOf());
      await until(() => lines(cmdLog).length === 1, 30_000, 'the first set and its command');
      await new Promise((r) => setTimeout(r, 300));
      for (let i = 0; i < 2; i++) {
        source.rotate('web');
        serials.push(serialOf());
        await until(() => lines(cmdLog).length === serials.length, 15_000, `the command after rotation ${i + 1}`);
        await new Promise((r) => setTimeout(r, 300));
      }
      // The server goes away and comes back on the same socket: the writer reconnects with backoff;
      // the unchanged SVID it gets first writes nothing and runs nothing.
      await server.stop();
      await until(() => /reconnecting in/.test(stderr), 10_000, 'the writer noticing the outage');
      server = await startWorkloadApiServer({ socketPath, source, audit: () => undefined });
      await until(() => server.openStreams === 1, 20_000, 'the writer reconnecting');
      await new Promise((r) => setTimeout(r, 300));
      expect(lines(cmdLog)).toHaveLength(3);
      source.rotate('web');
      serials.push(serialOf());
      await until(() => lines(cmdLog).length === 4, 15_000, 'the command after rotation 3');
      await until(() => lines(hupLog).length === 4, 5_000, 'the fourth SIGHUP');
      await new Promise((r) => setTimeout(r, 300));

      Atomics.store(new Int32Array(flag), 0, 1);
      const rep = await report;
      expect(rep.failures).toEqual([]);
      expect(rep.viaCurrent).toBeGreaterThan(100);
      expect(rep.viaNames).toBeGreaterThan(100);
      // The sampler saw every one of the four sets, in the order they were issued, and nothing else.
      expect(rep.serials).toEqual(serials);
      // The command ran once per set, after the swap: the stable name already showed the new certificate.
      expect(lines(cmdLog).map((l) => l.split(' '))).toEqual(serials.map((s) => [s, expect.any(String), 'spiffe://example.org/web']));
      for (const [i, l] of lines(cmdLog).entries()) expect(stripZeros(l.split(' ')[1]!)).toBe(stripZeros(serials[i]!));
      expect(lines(hupLog)).toHaveLength(4);
      // The federated bundle is kept next to the SVID; two generations remain on disk.
      expect(pemCerts(readFileSync(join(dir, 'federated-other.org.pem'), 'utf8'))[0]!.raw.equals(source.federated.get('other.org')!.ca.certDer)).toBe(true);
      expect(generations(dir)).toEqual(['.keel-000000000003', '.keel-000000000004']);
      consistent(dir);

      writer.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      Atomics.store(new Int32Array(flag), 0, 1);
      await sampler.terminate();
      for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
      await server.stop();
    }
  }, 120_000);
});
