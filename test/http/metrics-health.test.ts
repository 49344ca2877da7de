/** The Prometheus registry, /metrics over HTTP, and the health endpoints. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeelMetrics, MetricDefinitionError, MetricsRegistry } from '../../src/server/http/index.js';
import { parseSelector } from '../../src/server/store/index.js';
import { makeTestPki, MutableBundle, startTestApi, tcpRequest, td, testBundle, unixRequest, type RunningApi, type TestPki } from './helpers.js';

/** One sample line of the text format: name, optional {labels}, value. */
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"(?:,(?=[a-zA-Z_]))?)*\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/;

function parseExposition(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    out.set(m[1]! + (m[2] ?? ''), Number(m[3]));
  }
  return out;
}

describe('metrics registry', () => {
  it('renders counters, gauges and histograms in the text format', async () => {
    const r = new MetricsRegistry();
    const c = r.counter('t_requests_total', 'Requests.', ['route']);
    const g = r.gauge('t_temperature', 'Temp with a\nnewline in help.');
    const h = r.histogram('t_latency_seconds', 'Latency.', ['route'], [0.1, 1]);
    c.inc({ route: '/a"b\\c\nd' });
    c.inc({ route: '/a"b\\c\nd' }, 2);
    g.set(undefined, -1.5);
    h.observe({ route: '/x' }, 0.05);
    h.observe({ route: '/x' }, 0.5);
    h.observe({ route: '/x' }, 3);
    const text = await r.render();
    expect(text).toContain('# TYPE t_requests_total counter');
    expect(text).toContain('# HELP t_temperature Temp with a\\nnewline in help.');
    const m = parseExposition(text);
    expect(m.get('t_requests_total{route="/a\\"b\\\\c\\nd"}')).toBe(3);
    expect(m.get('t_temperature')).toBe(-1.5);
    expect(m.get('t_latency_seconds_bucket{route="/x",le="0.1"}')).toBe(1);
    expect(m.get('t_latency_seconds_bucket{route="/x",le="1"}')).toBe(2);
    expect(m.get('t_latency_seconds_bucket{route="/x",le="+Inf"}')).toBe(3);
    expect(m.get('t_latency_seconds_sum{route="/x"}')).toBeCloseTo(3.55);
    expect(m.get('t_latency_seconds_count{route="/x"}')).toBe(3);
  });

  it('refuses bad names, duplicates, missing labels and counters going down', () => {
    const r = new MetricsRegistry();
    expect(() => r.counter('bad-name', 'x')).toThrow(MetricDefinitionError);
    expect(() => r.counter('ok', 'x', ['le'])).toThrow(MetricDefinitionError);
    r.counter('dup', 'x');
    expect(() => r.gauge('dup', 'x')).toThrow(/twice/);
    const c = r.counter('c', 'x', ['a']);
    expect(() => c.inc({} as { a: string })).toThrow(/label a missing/);
    expect(() => c.inc({ a: '1' }, -1)).toThrow(/only goes up/);
  });
});

describe('server metrics and health over HTTP', () => {
  let pki: TestPki;
  let api: RunningApi;
  let caReady = true;
  const now = Date.now();
  beforeAll(async () => {
    pki = await makeTestPki();
    const metrics = createKeelMetrics();
    api = await startTestApi({
      bundles: new MutableBundle(testBundle(pki, [])),
      plaintext: true,
      extra: {
        metrics,
        caReady: () => caReady,
        caStatus: () => [
          { kind: 'x509', label: 'keel-x509-ca-1', state: 'active', notAfter: new Date(now + 86_400_000) },
          { kind: 'jwt', label: 'keel-jwt-1', state: 'prepared', notAfter: new Date(now + 2 * 86_400_000) },
        ],
      },
    });
    metrics.attestations.inc({ result: 'ok' });
    metrics.attestations.inc({ result: 'refused' });
    metrics.svidsIssued.inc({ type: 'x509' }, 4);
  });
  afterAll(async () => {
    await api?.stop();
    pki?.cleanup();
  });

  it('exposes entries, agents, attestations, SVIDs, HTTP requests and CA key expiry', async () => {
    for (const n of [1, 2]) {
      const r = await unixRequest(api.socket, 'POST', '/v1/entries', { spiffeId: `spiffe://example.org/m/${n}`, parentId: 'spiffe://example.org/keel/server', selectors: [`tpm:policy:p${n}`] });
      expect(r.status).toBe(201);
    }
    await api.store.recordAttestation({
      agentId: td.child('/keel/agent/tpm/' + '0'.repeat(64)),
      ekPublicHash: '0'.repeat(64),
      selectors: [parseSelector('tpm:policy:p1')],
      svid: { serial: '01', notAfter: new Date(now + 3600_000) },
      quote: { clock: 1n, resetCount: 0, restartCount: 0 },
    });
    await unixRequest(api.socket, 'GET', '/v1/entries/00000000-0000-4000-8000-000000000000');

    const r = await tcpRequest({ port: api.port, path: '/metrics' });
    expect(r.status).toBe(200);
    expect(r.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    const m = parseExposition(r.text);
    expect(m.get('keel_registration_entries')).toBe(2);
    expect(m.get('keel_agents{status="active"}')).toBe(1);
    expect(m.get('keel_agents{status="banned"}')).toBe(0);
    expect(m.get('keel_node_attestations_total{result="ok"}')).toBe(1);
    expect(m.get('keel_node_attestations_total{result="refused"}')).toBe(1);
    expect(m.get('keel_svids_issued_total{type="x509"}')).toBe(4);
    expect(m.get('keel_http_requests_total{route="/v1/entries",method="POST",status="201"}')).toBe(2);
    expect(m.get('keel_http_requests_total{route="/v1/entries/:id",method="GET",status="404"}')).toBe(1);
    expect(m.get('keel_http_request_duration_seconds_count{route="/v1/entries"}')).toBe(2);
    const x509Expiry = m.get('keel_ca_key_expiry_seconds{kind="x509",key="keel-x509-ca-1",state="active"}')!;
    expect(Math.abs(x509Expiry - 86_400)).toBeLessThan(120);

    // Deleting an entry is seen at the next scrape.
    const list = (await unixRequest(api.socket, 'GET', '/v1/entries')).json();
    await unixRequest(api.socket, 'DELETE', `/v1/entries/${list.entries[0].id}`);
    const again = parseExposition((await tcpRequest({ port: api.port, path: '/metrics' })).text);
    expect(again.get('keel_registration_entries')).toBe(1);
  });

  it('reports live, and ready only while the store answers and the CA has a key', async () => {
    expect((await tcpRequest({ port: api.port, path: '/live' })).status).toBe(200);
    const ready = await unixRequest(api.socket, 'GET', '/ready');
    expect(ready.status).toBe(200);
    expect(ready.json()).toEqual({ status: 'ready', checks: { store: 'ok', ca: 'ok' } });
    caReady = false;
    try {
      const nr = await tcpRequest({ port: api.port, path: '/ready' });
      expect(nr.status).toBe(503);
      expect(nr.contentType).toMatch(/^application\/problem\+json/);
      expect(nr.json()).toMatchObject({ type: 'urn:keel:problem:not-ready', checks: { store: 'ok', ca: 'failing' } });
    } finally {
      caReady = true;
    }
  });

  it('is not ready once the store stops answering', async () => {
    const other = await startTestApi({ bundles: new MutableBundle(testBundle(pki, [])), plaintext: true });
    try {
      expect((await tcpRequest({ port: other.port, path: '/ready' })).status).toBe(200);
      await other.store.close();
      const r = await tcpRequest({ port: other.port, path: '/ready' });
      expect(r.status).toBe(503);
      expect(r.json().checks).toEqual({ store: 'failing', ca: 'ok' });
      // Liveness is about the process, not its dependencies.
      expect((await tcpRequest({ port: other.port, path: '/live' })).status).toBe(200);
    } finally {
      await other.stop();
    }
  });
});
