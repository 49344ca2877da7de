/**
 * Shared pieces of the HTTP API tests: a PKI made with openssl (a web-PKI
 * server certificate, a SPIFFE CA, X.509-SVIDs as clients present them), an
 * in-memory JWT signer, a running API on real sockets, and small clients for
 * the admin socket and for HTTPS with or without a client certificate.
 */
import { execFile } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TrustBundle } from '../../src/spiffe/bundle.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import type { Signer } from '../../src/spiffe/signer.js';
import { memoryAuditLog, silentLogger } from '../../src/log/index.js';
import { SqliteDatastore } from '../../src/server/store/index.js';
import { startHttpApi, type HttpApiHandle, type HttpApiOptions, type BundleProvider } from '../../src/server/http/index.js';

const run = promisify(execFile);

export const td = TrustDomain.parse('example.org');

export interface Pem {
  cert: string;
  key: string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  await run('openssl', args, { cwd: dir });
}

/** A self-signed CA; `uri` makes it a SPIFFE CA (trust-domain ID in its SAN). */
async function makeCa(dir: string, name: string, uri?: string): Promise<Pem> {
  const ext = ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'];
  if (uri) ext.push('-addext', `subjectAltName=URI:${uri}`);
  await openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-subj', `/O=keel test/CN=${name}`, '-days', '2', ...ext]);
  return { cert: readFileSync(join(dir, `${name}.crt`), 'utf8'), key: readFileSync(join(dir, `${name}.key`), 'utf8') };
}

/** A leaf signed by `ca`, with the extensions given (openssl extfile syntax). */
async function makeLeaf(dir: string, name: string, ca: string, extensions: string[]): Promise<Pem> {
  writeFileSync(join(dir, `${name}.ext`), `[ext]\n${extensions.join('\n')}\n`);
  await openssl(dir, ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/O=keel test/CN=${name}`]);
  await openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`, '-extensions', 'ext']);
  return { cert: readFileSync(join(dir, `${name}.crt`), 'utf8'), key: readFileSync(join(dir, `${name}.key`), 'utf8') };
}

const svidExtensions = (id: string) => [
  `subjectAltName=critical,URI:${id}`,
  'basicConstraints=critical,CA:FALSE',
  'keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement',
  'extendedKeyUsage=serverAuth,clientAuth',
];

export interface TestPki {
  dir: string;
  /** Web PKI: the root clients trust and the server certificate for 127.0.0.1 / localhost. */
  webRoot: Pem;
  server: Pem;
  /** The trust domain's CA and X.509-SVIDs it signed. */
  spiffeCa: Pem;
  adminSvid: Pem;
  workloadSvid: Pem;
  /** The admin's SPIFFE ID, but signed by a CA that is not in the bundle. */
  foreignAdminSvid: Pem;
  /** A certificate of the trust domain's CA that is not an SVID (no URI SAN). */
  notAnSvid: Pem;
  cleanup(): void;
}

export const ADMIN_ID = 'spiffe://example.org/ops/admin';
export const WORKLOAD_ID = 'spiffe://example.org/app/web';

export async function makeTestPki(): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'keel-http-pki-'));
  const webRoot = await makeCa(dir, 'webroot');
  const server = await makeLeaf(dir, 'server', 'webroot', ['subjectAltName=DNS:localhost,IP:127.0.0.1', 'basicConstraints=critical,CA:FALSE', 'extendedKeyUsage=serverAuth']);
  const spiffeCa = await makeCa(dir, 'spiffeca', 'spiffe://example.org');
  const adminSvid = await makeLeaf(dir, 'admin', 'spiffeca', svidExtensions(ADMIN_ID));
  const workloadSvid = await makeLeaf(dir, 'workload', 'spiffeca', svidExtensions(WORKLOAD_ID));
  await makeCa(dir, 'foreignca', 'spiffe://example.org');
  const foreignAdminSvid = await makeLeaf(dir, 'foreignadmin', 'foreignca', svidExtensions(ADMIN_ID));
  const notAnSvid = await makeLeaf(dir, 'plain', 'spiffeca', ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=clientAuth']);
  return { dir, webRoot, server, spiffeCa, adminSvid, workloadSvid, foreignAdminSvid, notAnSvid, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A JWT signer over an in-memory EC key (a unit-test stand-in for the HSM key). */
export function memorySigner(keyId: string, curve: 'P-256' | 'P-384' = 'P-256'): Signer & { privateKey: KeyObject } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: curve });
  const hash = curve === 'P-256' ? 'sha256' : 'sha384';
  return {
    algorithm: curve === 'P-256' ? 'ES256' : 'ES384',
    publicKey: createPublicKey(privateKey),
    keyId,
    privateKey,
    async sign(data: Uint8Array) {
      return sign(hash, data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
    },
  };
}

/** A bundle provider whose bundle the test replaces (as CA rotation would). */
export class MutableBundle implements BundleProvider {
  constructor(public current: TrustBundle) {}
  bundle(): TrustBundle {
    return this.current;
  }
}

export function testBundle(pki: TestPki, jwt: Signer[], sequence = 7): TrustBundle {
  return TrustBundle.create({
    trustDomain: td,
    x509Authorities: [new X509Certificate(pki.spiffeCa.cert)],
    jwtAuthorities: jwt.map((s) => [s.keyId, s.publicKey] as const),
    sequence,
  });
}

export interface RunningApi {
  dir: string;
  socket: string;
  store: SqliteDatastore;
  audit: ReturnType<typeof memoryAuditLog>;
  handle: HttpApiHandle;
  port: number;
  stop(): Promise<void>;
}

export async function startTestApi(o: {
  bundles: BundleProvider;
  tls?: Pem;
  plaintext?: boolean;
  extra?: Partial<HttpApiOptions>;
  /** Public listener port; default 0 (any free one). */
  port?: number;
}): Promise<RunningApi> {
  const dir = mkdtempSync(join(tmpdir(), 'keel-http-'));
  const store = SqliteDatastore.open({ path: join(dir, 'keel.db') });
  const audit = memoryAuditLog();
  const socket = join(dir, 'admin', 'admin.sock');
  const handle = await startHttpApi({
    store,
    bundles: o.bundles,
    trustDomain: td,
    audit,
    logger: silentLogger,
    ...o.extra,
    listen: {
      public: { host: '127.0.0.1', port: o.port ?? 0, ...(o.tls ? { tls: o.tls } : {}), ...(o.plaintext ? { allowPlaintext: true } : {}) },
      adminSocket: socket,
    },
  });
  return {
    dir,
    socket,
    store,
    audit,
    handle,
    port: handle.publicAddress!.port,
    async stop() {
      await handle.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface HttpResult {
  status: number;
  contentType: string;
  text: string;
  json(): any;
}

function collect(res: import('node:http').IncomingMessage): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('error', reject);
    res.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), text, json: () => JSON.parse(text) });
    });
  });
}

function bodyOf(body: unknown): { data?: string; headers: Record<string, string> } {
  if (body === undefined) return { headers: {} };
  const data = typeof body === 'string' ? body : JSON.stringify(body);
  return { data, headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(data)) } };
}

/** A request over the admin Unix socket. */
export function unixRequest(socketPath: string, method: string, path: string, body?: unknown): Promise<HttpResult> {
  const { data, headers } = bodyOf(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, method, path, headers }, (res) => collect(res).then(resolve, reject));
    req.on('error', reject);
    req.end(data);
  });
}

/** A request over TCP: HTTPS trusting `ca` (optionally presenting `client`), or plain HTTP. */
export function tcpRequest(o: { port: number; method?: string; path: string; body?: unknown; ca?: string; client?: Pem }): Promise<HttpResult> {
  const { data, headers } = bodyOf(o.body);
  return new Promise((resolve, reject) => {
    const common = { host: '127.0.0.1', port: o.port, method: o.method ?? 'GET', path: o.path, headers, agent: false as const };
    const req = o.ca
      ? httpsRequest({ ...common, ca: o.ca, ...(o.client ? { cert: o.client.cert, key: o.client.key } : {}) }, (res) => collect(res).then(resolve, reject))
      : httpRequest(common, (res) => collect(res).then(resolve, reject));
    req.on('error', reject);
    req.end(data);
  });
}

/** A fetch over node:https trusting `ca`, for jose's customFetch. */
export function httpsFetch(ca: string): (url: string, init: { method?: string; headers?: Headers; signal?: AbortSignal }) => Promise<Response> {
  return (url, init) =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      init.headers?.forEach((v, k) => (headers[k] = v));
      const req = httpsRequest(url, { method: init.method ?? 'GET', headers, ca, agent: false, ...(init.signal ? { signal: init.signal } : {}) }, (res) =>
        collect(res).then((r) => resolve(new Response(r.text, { status: r.status, headers: { 'content-type': r.contentType } })), reject),
      );
      req.on('error', reject);
      req.end();
    });
}

export { readFileSync };
