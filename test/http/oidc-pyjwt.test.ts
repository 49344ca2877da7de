/**
 * A JWT-SVID minted by keel's CA (keys in SoftHSM, server.jwt.issuer set)
 * verified by an independent library: Debian's python3-jwt (PyJWT), run as a
 * child process, which reads keel's discovery document from the issuer and the
 * JWKS it names, over the real HTTPS listener, with issuer, audience and expiry
 * checked.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm } from '../../src/hsm/index.js';
import { CaConfigError, CertificateAuthority, FileCaJournal } from '../../src/server/ca/index.js';
import { caTestToken, FakeClock, type CaTestToken } from '../ca/helpers.js';
import { makeTestPki, startTestApi, type RunningApi, type TestPki } from './helpers.js';

const run = promisify(execFile);
/** Debian's interpreter, where python3-jwt is installed (a pyenv python3 on PATH would not have it). */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const SCRIPT = fileURLToPath(new URL('./fixtures/pyjwt_verify.py', import.meta.url));
const AUDIENCE = 'sts.example.com';

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

interface PyResult {
  claims?: Record<string, unknown>;
  alg?: string;
  error?: string;
  message?: string;
}

let pki: TestPki;
let t: CaTestToken;
let hsm: Hsm;
let dir: string;
let ca: CertificateAuthority;
let api: RunningApi;
let issuer: string;
const realNow = Date.now();
const clock = new FakeClock(realNow - 2 * 3600_000);

async function pyjwt(iss: string, aud: string, tokens: string[], env: Record<string, string> = {}): Promise<{ discovery: Record<string, unknown>; results: PyResult[] }> {
  const { stdout } = await run(PYTHON, [SCRIPT, iss, aud, ...tokens], {
    env: { ...process.env, SSL_CERT_FILE: join(pki.dir, 'webroot.crt'), ...env },
    timeout: 30_000,
  });
  return JSON.parse(stdout);
}

beforeAll(async () => {
  pki = await makeTestPki();
  t = await caTestToken('keel-oidc');
  hsm = await Hsm.open(t.config);
  dir = await mkdtemp(join(tmpdir(), 'keel-oidc-pyjwt-'));
  const port = await freePort();
  // localhost is in the test server certificate; the issuer carries the listener's port.
  issuer = `https://localhost:${port}`;
  ca = await CertificateAuthority.open({
    trustDomain: 'example.org',
    keys: hsm,
    journal: new FileCaJournal(join(dir, 'journal')),
    now: clock.now,
    rotationCheckIntervalMs: 0,
    x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3_600 },
    jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600, issuer: `${issuer}/` },
  });
  api = await startTestApi({ bundles: ca, tls: pki.server, port, extra: { jwtIssuer: issuer } });
}, 60_000);
afterAll(async () => {
  await api?.stop();
  await ca?.close();
  await hsm?.close();
  await t?.tok.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
  pki?.cleanup();
});

describe('JWT-SVIDs verified by PyJWT against keel discovery', () => {
  it('accepts a JWT-SVID from the CA with iss = the discovery issuer, and refuses it expired or for another audience', async () => {
    // Minted two hours "ago" by the CA's clock, for 60 s: long expired in real time.
    const expired = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/app/batch', audience: AUDIENCE, ttlSeconds: 60 });
    clock.ms = realNow;
    const good = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/app/web', audience: [AUDIENCE], ttlSeconds: 300 });
    const otherAud = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/app/web', audience: 'someone-else', ttlSeconds: 300 });

    const out = await pyjwt(issuer, AUDIENCE, [good.token, expired.token, otherAud.token]);
    expect(out.discovery.issuer).toBe(issuer);
    expect(out.discovery.jwks_uri).toBe(`${issuer}/keys`);
    const [ok, exp, aud] = out.results;
    expect(ok?.error).toBeUndefined();
    expect(ok?.alg).toBe('ES256');
    expect(ok?.claims).toMatchObject({ iss: issuer, sub: 'spiffe://example.org/app/web', aud: AUDIENCE, exp: Math.floor(good.expiresAt.getTime() / 1000) });
    expect(exp?.error).toBe('ExpiredSignatureError');
    expect(aud?.error).toBe('InvalidAudienceError');
  }, 60_000);

  it('PyJWT refuses the token when the relying party expects another issuer', async () => {
    const good = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/app/web', audience: AUDIENCE, ttlSeconds: 300 });
    const out = await pyjwt(issuer, AUDIENCE, [good.token], { RP_EXPECTED_ISSUER: 'https://oidc.example.org' });
    expect(out.results[0]?.error).toBe('InvalidIssuerError');
  }, 60_000);

  it('the CA refuses an issuer relying parties could not match', async () => {
    const base = {
      trustDomain: 'example.org',
      keys: hsm,
      journal: new FileCaJournal(join(dir, 'never')),
      rotationCheckIntervalMs: 0,
      x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3_600 },
    };
    for (const bad of ['http://localhost', 'https://u:p@localhost', 'https://localhost/?q', 'not a url']) {
      await expect(CertificateAuthority.open({ ...base, jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600, issuer: bad } }), bad).rejects.toThrow(CaConfigError);
    }
  });
});
