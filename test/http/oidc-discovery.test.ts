/**
 * OIDC discovery names only a configured issuer: whatever Host a client sends
 * (raw requests over a real TLS socket, so the header is exactly what the
 * test wrote), the document says the configured issuer or is refused, and no
 * byte of the header comes back. Plus the caching headers of discovery, JWKS
 * and bundle.
 */
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpApiConfigError } from '../../src/server/http/index.js';
import { makeTestPki, memorySigner, MutableBundle, startTestApi, tcpRequest, testBundle, type RunningApi, type TestPki } from './helpers.js';

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  raw: string;
}

/** One HTTP/1.1 request written byte for byte (the Host header as given, or none), over TLS. */
function rawGet(port: number, ca: string, path: string, host: string | undefined, extraHeaders: string[] = []): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const lines = [`GET ${path} HTTP/1.1`, ...(host !== undefined ? [`Host: ${host}`] : []), ...extraHeaders, 'Connection: close', '', ''];
      sock.write(lines.join('\r\n'));
    });
    const chunks: Buffer[] = [];
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', reject);
    sock.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const [head = '', ...rest] = raw.split('\r\n\r\n');
      const [statusLine = '', ...headerLines] = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of headerLines) {
        const i = l.indexOf(':');
        if (i > 0) headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
      }
      let body = rest.join('\r\n\r\n');
      if (headers['transfer-encoding'] === 'chunked') {
        let out = '';
        let s = body;
        for (;;) {
          const nl = s.indexOf('\r\n');
          const n = parseInt(s.slice(0, nl), 16);
          if (!n) break;
          out += s.slice(nl + 2, nl + 2 + n);
          s = s.slice(nl + 2 + n + 2);
        }
        body = out;
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body, raw });
    });
  });
}

/** Hosts an attacker might send: other domains, userinfo, paths, quotes, ports, look-alikes, case and trailing dots. */
const HOSTILE_HOSTS = [
  'evil.example.com',
  'attacker@oidc.example.org',
  'oidc.example.org@evil.example.com',
  'evil.example.com/oidc.example.org',
  'oidc.example.org/../evil',
  'evil.example.com"},"issuer":"https://evil',
  "evil.example.com'",
  'oidc.example.org.evil.example.com',
  'evil-oidc.example.org',
  'oidc.example.org.',
  'oidc.example.org:8443',
  'oidc.example.org:444',
  'keel.example.net',
  'keel.example.net:9443',
  '127.0.0.1',
  '[::1]:443',
  'localhost',
  '',
];

const ISSUER = 'https://oidc.example.org';
let pki: TestPki;
let bundles: MutableBundle;
const running: RunningApi[] = [];

beforeAll(async () => {
  pki = await makeTestPki();
  bundles = new MutableBundle(testBundle(pki, [memorySigner('jwt-key-1')], 3));
});
afterAll(async () => {
  await Promise.all(running.map((a) => a.stop()));
  pki?.cleanup();
});

async function api(extra: Parameters<typeof startTestApi>[0]['extra']): Promise<RunningApi> {
  const a = await startTestApi({ bundles, tls: pki.server, extra: { bundleRefreshHintSeconds: 120, ...extra } });
  running.push(a);
  return a;
}

const discovery = (a: RunningApi, host: string | undefined) => rawGet(a.port, pki.webRoot.cert, '/.well-known/openid-configuration', host);

describe('OIDC discovery with server.jwt.issuer', () => {
  let a: RunningApi;
  beforeAll(async () => {
    a = await api({ jwtIssuer: `${ISSUER}/` });
  });

  it.each([...HOSTILE_HOSTS, 'oidc.example.org', undefined])('Host %j: the document names the configured issuer and nothing else', async (host) => {
    const r = await discovery(a, host);
    if (host === undefined) {
      // HTTP/1.1 without Host is a 400 from Node's parser; either way it is not a document naming anything else.
      expect(r.status === 400 || r.status === 200).toBe(true);
      if (r.status !== 200) return;
    }
    expect(r.status).toBe(200);
    const doc = JSON.parse(r.body);
    expect(doc.issuer).toBe(ISSUER);
    expect(doc.jwks_uri).toBe(`${ISSUER}/keys`);
    if (host && host !== 'oidc.example.org') expect(r.raw).not.toContain(host);
  });
});

describe('OIDC discovery with server.jwt.oidc_domains only', () => {
  let a: RunningApi;
  beforeAll(async () => {
    a = await api({ oidcDomains: ['oidc.example.org', 'keel.example.net:8443'] });
  });

  it.each([
    ['oidc.example.org', 'https://oidc.example.org'],
    ['OIDC.Example.ORG', 'https://oidc.example.org'],
    ['oidc.example.org:443', 'https://oidc.example.org'],
    ['keel.example.net:8443', 'https://keel.example.net:8443'],
  ])('Host %j on the list: issuer %s', async (host, issuer) => {
    const r = await discovery(a, host);
    expect(r.status).toBe(200);
    const doc = JSON.parse(r.body);
    expect(doc.issuer).toBe(issuer);
    expect(doc.jwks_uri).toBe(`${issuer}/keys`);
  });

  it.each(HOSTILE_HOSTS.filter((h) => h !== 'keel.example.net:8443'))('Host %j not on the list: 404 problem, not cached, the header not echoed', async (host) => {
    const r = await discovery(a, host);
    expect(r.status).toBe(404);
    expect(r.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(r.headers['cache-control']).toBe('no-store');
    expect(JSON.parse(r.body).detail).toMatch(/oidc_domains/);
    if (host) expect(r.raw).not.toContain(host);
  });
});

describe('OIDC discovery with an issuer and an allow-list', () => {
  let a: RunningApi;
  beforeAll(async () => {
    a = await api({ jwtIssuer: ISSUER, oidcDomains: ['oidc.example.org', 'oidc-alt.example.org'] });
  });

  it('a listed Host gets the configured issuer (the one JWT-SVIDs carry), not its own name', async () => {
    for (const host of ['oidc.example.org', 'oidc-alt.example.org']) {
      const r = await discovery(a, host);
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body).issuer).toBe(ISSUER);
    }
  });

  it('an unlisted Host is refused', async () => {
    for (const host of ['evil.example.com', 'attacker@oidc.example.org', '127.0.0.1']) expect((await discovery(a, host)).status).toBe(404);
  });
});

describe('OIDC discovery without configuration', () => {
  it('is not served: 404 problem saying how to configure it, for every Host', async () => {
    const a = await api({});
    for (const host of ['localhost', 'oidc.example.org', 'evil.example.com']) {
      const r = await discovery(a, host);
      expect(r.status).toBe(404);
      expect(r.headers['cache-control']).toBe('no-store');
      const p = JSON.parse(r.body);
      expect(p.type).toBe('urn:keel:problem:not-found');
      expect(p.detail).toMatch(/server\.jwt\.issuer/);
      expect(p.detail).toMatch(/server\.jwt\.oidc_domains/);
    }
    // The JWKS is public key material and still served.
    expect((await tcpRequest({ port: a.port, path: '/keys', ca: pki.webRoot.cert })).status).toBe(200);
  });

  it('refuses an issuer or domain relying parties would not compare as written', async () => {
    const make = (extra: Record<string, unknown>) => startTestApi({ bundles, tls: pki.server, extra }).then((x) => (running.push(x), x));
    for (const jwtIssuer of ['http://oidc.example.org', 'https://u@oidc.example.org', 'https://oidc.example.org/?a', 'https://OIDC.example.org', 'https://oidc.example.org:443', 'oidc.example.org']) {
      await expect(make({ jwtIssuer }), jwtIssuer).rejects.toThrow(HttpApiConfigError);
    }
    for (const d of ['Oidc.example.org', 'oidc.example.org:443', 'https://oidc.example.org', 'a@b.org', 'b.org/x', '']) {
      await expect(make({ oidcDomains: [d] }), d).rejects.toThrow(HttpApiConfigError);
    }
  });
});

describe('caching headers', () => {
  let a: RunningApi;
  beforeAll(async () => {
    a = await api({ jwtIssuer: ISSUER, bundlePath: '/spiffe/bundle' });
  });

  it.each(['/.well-known/openid-configuration', '/keys', '/spiffe/bundle'])('%s: Cache-Control max-age is the refresh hint, ETag revalidates to 304', async (path) => {
    const r = await rawGet(a.port, pki.webRoot.cert, path, 'oidc.example.org');
    expect(r.status).toBe(200);
    expect(r.headers['cache-control']).toBe('public, max-age=120');
    const etag = r.headers.etag!;
    expect(etag).toMatch(/^"[A-Za-z0-9_-]{32}"$/);
    const again = await rawGet(a.port, pki.webRoot.cert, path, 'oidc.example.org', [`If-None-Match: ${etag}`]);
    expect(again.status).toBe(304);
    expect(again.body).toBe('');
    expect(again.headers.etag).toBe(etag);
    const stale = await rawGet(a.port, pki.webRoot.cert, path, 'oidc.example.org', ['If-None-Match: "not-it"']);
    expect(stale.status).toBe(200);
  });

  it('a new bundle changes the ETag of the JWKS and the bundle', async () => {
    const before = await Promise.all(['/keys', '/spiffe/bundle'].map((p) => rawGet(a.port, pki.webRoot.cert, p, 'x')));
    const old = bundles.current;
    bundles.current = testBundle(pki, [memorySigner('jwt-key-2')], 4);
    try {
      const after = await Promise.all(['/keys', '/spiffe/bundle'].map((p) => rawGet(a.port, pki.webRoot.cert, p, 'x', [`If-None-Match: ${before[0]!.headers.etag}, ${before[1]!.headers.etag}`])));
      for (const [i, r] of after.entries()) {
        expect(r.status).toBe(200);
        expect(r.headers.etag).not.toBe(before[i]!.headers.etag);
      }
    } finally {
      bundles.current = old;
    }
  });
});
