/**
 * A strict JSON (RFC 8259) reader for untrusted SPIFFE documents. JSON.parse
 * keeps the last of two equal member names, which is how a bundle map with a
 * duplicated trust domain would pick the wrong keys
 * (SPIFFE_Trust_Domain_and_Bundle.md §6.3); here a duplicate is an error.
 * Integers beyond 2^53 come back as bigint so a 64-bit `spiffe_sequence`
 * keeps its value.
 */

export type JsonValue = null | boolean | number | bigint | string | JsonValue[] | JsonObject;
/** A null-prototype object: `__proto__` and friends are plain member names. */
export interface JsonObject {
  [key: string]: JsonValue;
}

export class StrictJsonError extends Error {
  override readonly name = 'StrictJsonError';
  constructor(
    readonly reason: 'malformed' | 'duplicate-key' | 'too-deep',
    detail: string,
  ) {
    super(`JSON refused (${reason}): ${detail}`);
  }
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const INTEGER = /^-?(?:0|[1-9][0-9]*)$/;

export function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function parseStrictJson(text: string, maxDepth = 32): JsonValue {
  if (typeof text !== 'string') throw new StrictJsonError('malformed', 'not a string');
  let i = 0;

  const fail = (what: string): never => {
    throw new StrictJsonError('malformed', `${what} at offset ${i}`);
  };
  const skipWs = (): void => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else return;
    }
  };
  const expectWord = (word: string): void => {
    if (text.startsWith(word, i)) i += word.length;
    else fail('unexpected token');
  };

  const parseString = (): string => {
    // Caller saw the opening quote.
    i++;
    let out = '';
    let runStart = i;
    for (;;) {
      if (i >= text.length) fail('unterminated string');
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(runStart, i);
        i++;
        return out;
      }
      if (c < 0x20) fail('control character in string');
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += text.slice(runStart, i);
      const e = text[i + 1];
      i += 2;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const hex = text.slice(i, i + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('bad \\u escape');
          out += String.fromCharCode(parseInt(hex, 16));
          i += 4;
          break;
        }
        default:
          i -= 2;
          fail('bad escape');
      }
      runStart = i;
    }
  };

  const parseNumber = (): number | bigint => {
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) return fail('bad number');
    const lexeme = m[0];
    i += lexeme.length;
    const n = Number(lexeme);
    if (INTEGER.test(lexeme) && !Number.isSafeInteger(n)) return BigInt(lexeme);
    if (!Number.isFinite(n)) fail('number out of range');
    return n;
  };

  const parseValue = (depth: number): JsonValue => {
    skipWs();
    const c = text[i];
    switch (c) {
      case '{': {
        if (depth >= maxDepth) throw new StrictJsonError('too-deep', `nesting deeper than ${maxDepth}`);
        i++;
        const obj: JsonObject = Object.create(null) as JsonObject;
        skipWs();
        if (text[i] === '}') {
          i++;
          return obj;
        }
        for (;;) {
          skipWs();
          if (text[i] !== '"') fail('expected a member name');
          const key = parseString();
          if (Object.prototype.hasOwnProperty.call(obj, key)) {
            throw new StrictJsonError('duplicate-key', `member ${JSON.stringify(key.slice(0, 80))} appears twice`);
          }
          skipWs();
          if (text[i] !== ':') fail('expected :');
          i++;
          obj[key] = parseValue(depth + 1);
          skipWs();
          if (text[i] === ',') {
            i++;
            continue;
          }
          if (text[i] === '}') {
            i++;
            return obj;
          }
          fail('expected , or }');
        }
      }
      case '[': {
        if (depth >= maxDepth) throw new StrictJsonError('too-deep', `nesting deeper than ${maxDepth}`);
        i++;
        const arr: JsonValue[] = [];
        skipWs();
        if (text[i] === ']') {
          i++;
          return arr;
        }
        for (;;) {
          arr.push(parseValue(depth + 1));
          skipWs();
          if (text[i] === ',') {
            i++;
            continue;
          }
          if (text[i] === ']') {
            i++;
            return arr;
          }
          fail('expected , or ]');
        }
      }
      case '"':
        return parseString();
      case 't':
        expectWord('true');
        return true;
      case 'f':
        expectWord('false');
        return false;
      case 'n':
        expectWord('null');
        return null;
      default:
        if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return parseNumber();
        return fail(c === undefined ? 'unexpected end' : 'unexpected character');
    }
  };

  const value = parseValue(0);
  skipWs();
  if (i !== text.length) fail('trailing data');
  return value;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const B64URL = /^[A-Za-z0-9_-]+$/;

/**
 * One base64url segment of a compact JWS (header or payload) that must hold a
 * JSON object, read strictly (UTF-8, no duplicate members). `refuse` throws
 * the caller's own error with what was wrong.
 */
export function decodeJwsJsonSegment(part: string, what: string, refuse: (detail: string) => never): JsonObject {
  if (part.length === 0 || !B64URL.test(part)) refuse(`the ${what} is not base64url`);
  let doc;
  try {
    doc = parseStrictJson(utf8.decode(Buffer.from(part, 'base64url')));
  } catch (err) {
    return refuse(`the ${what} is not a JSON object (${(err as Error).message})`);
  }
  if (!isJsonObject(doc)) refuse(`the ${what} is not a JSON object`);
  return doc;
}
