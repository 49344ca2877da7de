/**
 * RFC 7512 PKCS#11 URIs: `pkcs11:token=keel;object=x509-ca;id=%01?module-path=…&pin-source=file:…`.
 * Strict: unknown standard-looking attributes, repeated attributes, bad
 * percent-encoding, characters outside the grammar and `pin-value` (keel never
 * takes a PIN from configuration text) are errors. Messages name the attribute,
 * never echo a value that could be a PIN.
 */
import type { HsmConfig } from './config.js';

export type Pkcs11ObjectType = 'public' | 'private' | 'cert' | 'secret-key' | 'data';

export interface Pkcs11Uri {
  token?: string;
  manufacturer?: string;
  serial?: string;
  model?: string;
  libraryManufacturer?: string;
  libraryDescription?: string;
  libraryVersion?: { major: number; minor: number };
  object?: string;
  type?: Pkcs11ObjectType;
  id?: Buffer;
  slotDescription?: string;
  slotManufacturer?: string;
  slotId?: number;
  modulePath?: string;
  moduleName?: string;
  pinSource?: string;
  /** Vendor-specific attributes (names with a '-' that are not standard), in order. */
  vendor?: Array<{ name: string; value: string; inQuery: boolean }>;
}

export class InvalidPkcs11UriError extends Error {
  override name = 'InvalidPkcs11UriError';
  constructor(readonly reason: string) {
    super(`invalid PKCS#11 URI: ${reason}`);
  }
}

/** Longest URI accepted; real ones are well under 1 KiB. */
const MAX_URI_LENGTH = 4096;

const PATH_TEXT: Record<string, keyof Pkcs11Uri> = {
  token: 'token',
  manufacturer: 'manufacturer',
  serial: 'serial',
  model: 'model',
  'library-manufacturer': 'libraryManufacturer',
  'library-description': 'libraryDescription',
  object: 'object',
  'slot-description': 'slotDescription',
  'slot-manufacturer': 'slotManufacturer',
};
const PATH_OTHER = new Set(['library-version', 'type', 'id', 'slot-id']);
const QUERY_STD = new Set(['pin-source', 'pin-value', 'module-name', 'module-path']);
const OBJECT_TYPES = new Set<Pkcs11ObjectType>(['public', 'private', 'cert', 'secret-key', 'data']);

// RFC 7512 §2.3: unreserved / pk11-path-res-avail / pct-encoded, and the query set.
const PATH_VALUE = /^(?:[A-Za-z0-9\-._~:[\]@!$'()*+,=&]|%[0-9A-Fa-f]{2})*$/;
const QUERY_VALUE = /^(?:[A-Za-z0-9\-._~:[\]@!$'()*+,=/?|]|%[0-9A-Fa-f]{2})*$/;
const ATTR_NAME = /^[A-Za-z0-9\-._]+$/;

function pctDecodeBytes(raw: string): Buffer {
  const out = Buffer.alloc(raw.length);
  let n = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === 0x25) {
      out[n++] = parseInt(raw.slice(i + 1, i + 3), 16);
      i += 2;
    } else out[n++] = c;
  }
  return out.subarray(0, n);
}

function pctDecodeText(name: string, raw: string): string {
  const bytes = pctDecodeBytes(raw);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new InvalidPkcs11UriError(`attribute "${name}" is not valid UTF-8 after percent-decoding`);
  }
}

function splitAttr(part: string, where: 'path' | 'query'): [string, string] {
  const eq = part.indexOf('=');
  if (eq <= 0) throw new InvalidPkcs11UriError(`${where} attribute without "name=value" form`);
  const name = part.slice(0, eq);
  if (!ATTR_NAME.test(name)) throw new InvalidPkcs11UriError(`${where} attribute name has characters outside the grammar`);
  return [name, part.slice(eq + 1)];
}

export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (typeof uri !== 'string') throw new InvalidPkcs11UriError('not a string');
  if (uri.length > MAX_URI_LENGTH) throw new InvalidPkcs11UriError(`longer than ${MAX_URI_LENGTH} characters`);
  if (!/^pkcs11:/i.test(uri)) throw new InvalidPkcs11UriError('scheme is not "pkcs11:"');
  const rest = uri.slice('pkcs11:'.length);
  const q = rest.indexOf('?');
  const path = q < 0 ? rest : rest.slice(0, q);
  const query = q < 0 ? undefined : rest.slice(q + 1);
  if (rest.includes('#')) throw new InvalidPkcs11UriError('fragments are not allowed');
  const out: Pkcs11Uri = {};
  const seen = new Set<string>();
  const vendor: NonNullable<Pkcs11Uri['vendor']> = [];

  if (path !== '') {
    for (const part of path.split(';')) {
      const [name, raw] = splitAttr(part, 'path');
      if (!PATH_VALUE.test(raw)) throw new InvalidPkcs11UriError(`path attribute "${name}" has characters outside the grammar or bad percent-encoding`);
      const isStd = name in PATH_TEXT || PATH_OTHER.has(name);
      if (!isStd && !(name.includes('-') && !QUERY_STD.has(name))) throw new InvalidPkcs11UriError(`unknown path attribute "${name}"`);
      if (isStd) {
        if (seen.has(name)) throw new InvalidPkcs11UriError(`path attribute "${name}" appears more than once`);
        seen.add(name);
      }
      const textKey = PATH_TEXT[name];
      if (textKey) {
        const v = pctDecodeText(name, raw);
        if (v === '') throw new InvalidPkcs11UriError(`path attribute "${name}" is empty`);
        (out as Record<string, unknown>)[textKey] = v;
      } else if (name === 'id') {
        const id = pctDecodeBytes(raw);
        if (id.length === 0) throw new InvalidPkcs11UriError('path attribute "id" is empty');
        out.id = Buffer.from(id);
      } else if (name === 'type') {
        const v = pctDecodeText(name, raw) as Pkcs11ObjectType;
        if (!OBJECT_TYPES.has(v)) throw new InvalidPkcs11UriError('path attribute "type" is not one of public, private, cert, secret-key, data');
        out.type = v;
      } else if (name === 'slot-id') {
        const v = pctDecodeText(name, raw);
        if (!/^[0-9]{1,15}$/.test(v)) throw new InvalidPkcs11UriError('path attribute "slot-id" is not a decimal number');
        out.slotId = Number(v);
      } else if (name === 'library-version') {
        const m = /^([0-9]{1,3})(?:\.([0-9]{1,3}))?$/.exec(pctDecodeText(name, raw));
        if (!m) throw new InvalidPkcs11UriError('path attribute "library-version" is not M[.N]');
        out.libraryVersion = { major: Number(m[1]), minor: m[2] === undefined ? 0 : Number(m[2]) };
      } else {
        vendor.push({ name, value: pctDecodeText(name, raw), inQuery: false });
      }
    }
  }

  if (query !== undefined && query !== '') {
    for (const part of query.split('&')) {
      const [name, raw] = splitAttr(part, 'query');
      if (name === 'pin-value') {
        // Checked before the value is even looked at: it is a secret.
        throw new InvalidPkcs11UriError('"pin-value" is refused: give the PIN through pin-source (file) or an environment variable');
      }
      if (!QUERY_VALUE.test(raw)) throw new InvalidPkcs11UriError(`query attribute "${name}" has characters outside the grammar or bad percent-encoding`);
      const isStd = QUERY_STD.has(name);
      if (!isStd && !(name.includes('-') && !(name in PATH_TEXT) && !PATH_OTHER.has(name))) throw new InvalidPkcs11UriError(`unknown query attribute "${name}"`);
      if (!isStd) {
        vendor.push({ name, value: pctDecodeText(name, raw), inQuery: true });
        continue;
      }
      if (seen.has(name)) throw new InvalidPkcs11UriError(`query attribute "${name}" appears more than once`);
      seen.add(name);
      const v = pctDecodeText(name, raw);
      if (v === '') throw new InvalidPkcs11UriError(`query attribute "${name}" is empty`);
      if (name === 'module-path') {
        if (!v.startsWith('/')) throw new InvalidPkcs11UriError('"module-path" must be an absolute path');
        out.modulePath = v;
      } else if (name === 'module-name') {
        if (v.includes('/')) throw new InvalidPkcs11UriError('"module-name" must be a name, not a path');
        out.moduleName = v;
      } else out.pinSource = v;
    }
  }
  if (vendor.length > 0) out.vendor = vendor;
  return out;
}

/**
 * An HsmConfig and key selector from a URI such as
 * `pkcs11:token=keel;object=x509-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keel/pin`.
 * pin-source takes `file:<absolute path>` (RFC 7512) or keel's `env:<VARIABLE>`.
 */
export function hsmConfigFromPkcs11Uri(
  uri: string,
  opts: { sessions?: number; maxQueue?: number } = {},
): { config: HsmConfig; key: { label?: string; id?: Buffer } } {
  const p = parsePkcs11Uri(uri);
  if (!p.modulePath) throw new InvalidPkcs11UriError('"module-path" is required');
  if (p.token === undefined && p.serial === undefined) throw new InvalidPkcs11UriError('"token" or "serial" is required');
  if (p.token !== undefined && p.serial !== undefined) throw new InvalidPkcs11UriError('give either "token" or "serial", not both');
  if (!p.pinSource) throw new InvalidPkcs11UriError('"pin-source" is required');
  if (p.type !== undefined && p.type !== 'private') throw new InvalidPkcs11UriError('"type" must be "private" for a signing key');
  let pin: HsmConfig['pin'];
  if (p.pinSource.startsWith('file://')) {
    const rest = p.pinSource.slice('file://'.length);
    if (!rest.startsWith('/')) throw new InvalidPkcs11UriError('"pin-source" file URI must have an empty host and an absolute path');
    pin = { file: rest };
  } else if (p.pinSource.startsWith('file:')) {
    const rest = p.pinSource.slice('file:'.length);
    if (!rest.startsWith('/')) throw new InvalidPkcs11UriError('"pin-source" file path must be absolute');
    pin = { file: rest };
  } else if (p.pinSource.startsWith('env:')) {
    const name = p.pinSource.slice('env:'.length);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new InvalidPkcs11UriError('"pin-source" env: must name an environment variable');
    pin = { env: name };
  } else throw new InvalidPkcs11UriError('"pin-source" must be file:<path> or env:<VARIABLE>');
  const config: HsmConfig = {
    module: p.modulePath,
    token: p.token !== undefined ? { label: p.token } : { serial: p.serial as string },
    pin,
    ...(opts.sessions !== undefined ? { sessions: opts.sessions } : {}),
    ...(opts.maxQueue !== undefined ? { maxQueue: opts.maxQueue } : {}),
  };
  const key: { label?: string; id?: Buffer } = {};
  if (p.object !== undefined) key.label = p.object;
  if (p.id !== undefined) key.id = p.id;
  return { config, key };
}
