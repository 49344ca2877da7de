/** Writing a policy back as a document: plain data in the file's key order, and YAML with comments. */
import { Document, isScalar, visit } from 'yaml';
import type { FirmwarePolicy } from './schema.js';

/** The policy as the plain object its YAML holds (a single allowed PCR value as a string). */
export function policyToDocument(policy: FirmwarePolicy): Record<string, unknown> {
  const doc: Record<string, unknown> = { apiVersion: policy.apiVersion, kind: policy.kind, name: policy.name };
  if (policy.description !== undefined) doc.description = policy.description;
  doc.bank = policy.bank;
  if (policy.pcrs.size) {
    doc.pcrs = new Map([...policy.pcrs].map(([i, vs]) => [i, vs.length === 1 ? vs[0] : [...vs]]));
  }
  const r = policy.eventLog;
  if (r) {
    const e: Record<string, unknown> = {};
    if (!r.required) e.required = false;
    if (r.secureBoot !== 'any') e.secureBoot = r.secureBoot;
    for (const k of ['pk', 'kek', 'db', 'dbRequired', 'dbxRequired', 'separators'] as const) if (r[k]) e[k] = [...r[k]!];
    if (r.bootloaders) e.bootloaders = r.bootloaders.map((st) => (st.length === 1 ? st[0] : [...st]));
    if (r.kernels) e.kernels = [...r.kernels];
    if (r.bootApplicationOrder !== 'position') e.bootApplicationOrder = r.bootApplicationOrder;
    if (r.kernelCommandLine) e.kernelCommandLine = 'regex' in r.kernelCommandLine ? { regex: r.kernelCommandLine.regex } : { exact: [...r.kernelCommandLine.exact] };
    e.allowDigestQuirks = [...r.allowDigestQuirks];
    doc.eventLog = e;
  }
  if (policy.selectors.length) doc.selectors = [...policy.selectors];
  return doc;
}

export interface YamlOptions {
  /** Comment at the top of the file (may span lines). */
  readonly header?: string;
  /** Line comments for values: certificate subjects and boot-application paths by hex value. */
  readonly comments?: ReadonlyMap<string, string>;
}

const KEY_COMMENTS: Readonly<Record<string, string>> = {
  pcrs: ' PCR index: allowed value (or a list of allowed values)',
  pk: ' allow-list: every PK certificate present must be listed (SHA-256 of the DER)',
  kek: ' allow-list: every KEK certificate present must be listed',
  db: ' allow-list: every db certificate and SHA-256 entry present must be listed',
  dbxRequired: ' revocations dbx must contain (a minimum dbx)',
  bootloaders: ' Authenticode digests of the first boot applications (PCR 4), stage by stage',
  kernels: ' boot applications after the boot-loader stages',
  allowDigestQuirks: ' firmware/boot-loader digest deviations accepted (see docs/firmware-policies.md)',
};

export function policyToYaml(policy: FirmwarePolicy, opts: YamlOptions = {}): string {
  const doc = new Document(policyToDocument(policy));
  if (opts.header) doc.commentBefore = opts.header.split('\n').map((l) => ` ${l}`).join('\n');
  const comments = opts.comments;
  visit(doc, {
    Pair(_, pair) {
      if (isScalar(pair.key) && typeof pair.key.value === 'string') {
        const c = KEY_COMMENTS[pair.key.value];
        if (c) pair.key.commentBefore = c;
      }
    },
    Scalar(_, node) {
      if (comments && typeof node.value === 'string') {
        const c = comments.get(node.value);
        if (c) node.comment = ` ${c.replace(/\s+/g, ' ').slice(0, 160)}`;
      }
    },
  });
  return doc.toString({ lineWidth: 0 });
}
