/**
 * A small Prometheus registry: counters, gauges and histograms rendered in the
 * text exposition format (version 0.0.4). Written by hand because keel needs
 * a dozen series, not a metrics library.
 */

export type Labels<K extends string> = Readonly<Record<K, string>>;

/** Metric and label names as Prometheus allows them. */
const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export class MetricDefinitionError extends Error {
  override name = 'MetricDefinitionError';
}

function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function labelText(names: readonly string[], values: readonly string[], extra?: readonly [string, string]): string {
  const parts = names.map((n, i) => `${n}="${escapeLabelValue(values[i] ?? '')}"`);
  if (extra) parts.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

interface Metric {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'gauge' | 'histogram';
  /** Refreshes values computed at scrape time; may be async (store counts). */
  collect?(): Promise<void> | void;
  samples(): string[];
}

abstract class LabelledMetric<K extends string, V> implements Metric {
  abstract readonly type: 'counter' | 'gauge' | 'histogram';
  protected readonly series = new Map<string, { values: string[]; state: V }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly K[],
  ) {
    if (!METRIC_NAME.test(name)) throw new MetricDefinitionError(`metric name ${JSON.stringify(name)} is not valid`);
    for (const l of labelNames) {
      if (!LABEL_NAME.test(l) || l.startsWith('__') || l === 'le') throw new MetricDefinitionError(`label name ${JSON.stringify(l)} of ${name} is not valid`);
    }
  }

  protected abstract initial(): V;

  protected stateFor(labels: Labels<K> | undefined): V {
    const values = this.labelNames.map((n) => {
      const v = labels?.[n];
      if (typeof v !== 'string') throw new MetricDefinitionError(`${this.name}: label ${n} missing`);
      return v;
    });
    const key = JSON.stringify(values);
    let s = this.series.get(key);
    if (!s) {
      s = { values, state: this.initial() };
      this.series.set(key, s);
    }
    return s.state;
  }

  abstract samples(): string[];
}

export class Counter<K extends string = never> extends LabelledMetric<K, { v: number }> {
  readonly type = 'counter' as const;
  protected initial() {
    return { v: 0 };
  }
  inc(labels?: Labels<K>, by = 1): void {
    if (!(by >= 0)) throw new MetricDefinitionError(`${this.name}: a counter only goes up`);
    this.stateFor(labels).v += by;
  }
  get(labels?: Labels<K>): number {
    return this.stateFor(labels).v;
  }
  samples(): string[] {
    return [...this.series.values()].map((s) => `${this.name}${labelText(this.labelNames, s.values)} ${formatValue(s.state.v)}`);
  }
}

export class Gauge<K extends string = never> extends LabelledMetric<K, { v: number }> {
  readonly type = 'gauge' as const;
  collect?: () => Promise<void> | void;
  protected initial() {
    return { v: 0 };
  }
  set(labels: Labels<K> | undefined, v: number): void {
    this.stateFor(labels).v = v;
  }
  get(labels?: Labels<K>): number {
    return this.stateFor(labels).v;
  }
  /** Drops every series (before a collect that rebuilds them). */
  reset(): void {
    this.series.clear();
  }
  samples(): string[] {
    return [...this.series.values()].map((s) => `${this.name}${labelText(this.labelNames, s.values)} ${formatValue(s.state.v)}`);
  }
}

interface HistogramState {
  counts: number[];
  sum: number;
  count: number;
}

export const DEFAULT_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Histogram<K extends string = never> extends LabelledMetric<K, HistogramState> {
  readonly type = 'histogram' as const;
  readonly buckets: readonly number[];

  constructor(name: string, help: string, labelNames: readonly K[], buckets: readonly number[] = DEFAULT_BUCKETS) {
    super(name, help, labelNames);
    const sorted = [...buckets].sort((a, b) => a - b);
    if (sorted.length === 0 || sorted.some((b, i) => !Number.isFinite(b) || (i > 0 && b === sorted[i - 1]))) {
      throw new MetricDefinitionError(`${name}: buckets must be distinct finite numbers`);
    }
    this.buckets = sorted;
  }
  protected initial(): HistogramState {
    return { counts: this.buckets.map(() => 0), sum: 0, count: 0 };
  }
  observe(labels: Labels<K> | undefined, v: number): void {
    const s = this.stateFor(labels);
    this.buckets.forEach((b, i) => {
      if (v <= b) s.counts[i]! += 1;
    });
    s.sum += v;
    s.count += 1;
  }
  samples(): string[] {
    const out: string[] = [];
    for (const { values, state } of this.series.values()) {
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket${labelText(this.labelNames, values, ['le', formatValue(b)])} ${state.counts[i]}`));
      out.push(`${this.name}_bucket${labelText(this.labelNames, values, ['le', '+Inf'])} ${state.count}`);
      out.push(`${this.name}_sum${labelText(this.labelNames, values)} ${formatValue(state.sum)}`);
      out.push(`${this.name}_count${labelText(this.labelNames, values)} ${state.count}`);
    }
    return out;
  }
}

export class MetricsRegistry {
  readonly #metrics = new Map<string, Metric>();

  register<M extends Metric>(m: M): M {
    if (this.#metrics.has(m.name)) throw new MetricDefinitionError(`metric ${m.name} is registered twice`);
    this.#metrics.set(m.name, m);
    return m;
  }

  counter<K extends string = never>(name: string, help: string, labelNames: readonly K[] = []): Counter<K> {
    return this.register(new Counter<K>(name, help, labelNames));
  }
  gauge<K extends string = never>(name: string, help: string, labelNames: readonly K[] = []): Gauge<K> {
    return this.register(new Gauge<K>(name, help, labelNames));
  }
  histogram<K extends string = never>(name: string, help: string, labelNames: readonly K[] = [], buckets?: readonly number[]): Histogram<K> {
    return this.register(new Histogram<K>(name, help, labelNames, buckets));
  }

  /** The text exposition format; gauges with a collector are refreshed first. */
  async render(): Promise<string> {
    const lines: string[] = [];
    for (const m of this.#metrics.values()) {
      if (m.collect) await m.collect();
      lines.push(`# HELP ${m.name} ${escapeHelp(m.help)}`, `# TYPE ${m.name} ${m.type}`, ...m.samples());
    }
    return lines.join('\n') + '\n';
  }
}

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/**
 * keel's server metrics. The Node API increments `attestations` and
 * `svidsIssued`; the HTTP API fills in the rest.
 */
export interface KeelMetrics {
  readonly registry: MetricsRegistry;
  readonly attestations: Counter<'result'>;
  readonly svidsIssued: Counter<'type'>;
  readonly entries: Gauge;
  readonly agents: Gauge<'status'>;
  readonly httpRequests: Counter<'route' | 'method' | 'status'>;
  readonly httpDuration: Histogram<'route'>;
  readonly caKeyExpiry: Gauge<'kind' | 'key' | 'state'>;
}

export function createKeelMetrics(registry = new MetricsRegistry()): KeelMetrics {
  return {
    registry,
    attestations: registry.counter('keel_node_attestations_total', 'Node attestations by result (ok, refused, error).', ['result']),
    svidsIssued: registry.counter('keel_svids_issued_total', 'SVIDs issued by type (x509, jwt, agent).', ['type']),
    entries: registry.gauge('keel_registration_entries', 'Registration entries in the store.'),
    agents: registry.gauge('keel_agents', 'Attested agents by status.', ['status']),
    httpRequests: registry.counter('keel_http_requests_total', 'HTTP requests by route, method and status code.', ['route', 'method', 'status']),
    httpDuration: registry.histogram('keel_http_request_duration_seconds', 'HTTP request duration by route.', ['route']),
    caKeyExpiry: registry.gauge('keel_ca_key_expiry_seconds', 'Seconds until each CA key expires.', ['kind', 'key', 'state']),
  };
}
