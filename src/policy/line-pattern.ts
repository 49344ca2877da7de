/**
 * Patterns for kernel command lines, matched in linear time.
 *
 * A command line is measured by the node, so it is attacker-chosen input to
 * the server: a backtracking engine (JS RegExp) on `.*a.*a.*c` and a
 * 4 KiB line of `a`s takes tens of seconds. So patterns are compiled here to
 * a Thompson NFA and simulated state-set by state-set, O(line × pattern).
 * The syntax is the common subset of JS/PCRE/RE2 regular expressions:
 * literals, `.`, classes `[...]`, `\d \w \s` (and negations), groups,
 * `|`, `* + ? {n} {n,} {n,m}` (lazy forms accepted; they change nothing for
 * a yes/no match). Refused: backreferences, lookaround, `\b`, named groups,
 * and nested unbounded quantifiers like `(a+)+`, so that a policy never
 * depends on this engine: the same pattern is exponential in grep -P or Python.
 * Every pattern is anchored at both ends; a leading `^` / trailing `$` is allowed.
 */

/** The pattern cannot be used; `reason` names the construct and its position. */
export class LinePatternError extends Error {
  override readonly name = 'LinePatternError';
  constructor(
    readonly position: number,
    readonly reason: string,
  ) {
    super(`${reason} (at character ${position})`);
  }
}

export const MAX_PATTERN_LENGTH = 1024;
/** Bound on NFA size after expanding counted repetition: bounds time per input character. */
export const MAX_PATTERN_STATES = 4096;
const MAX_REPEAT = 1000;

type Range = readonly [number, number];
/** A set of UTF-16 code units as sorted, disjoint ranges. */
type CharSet = readonly Range[];

type Node =
  | { readonly t: 'empty' }
  | { readonly t: 'set'; readonly set: CharSet }
  | { readonly t: 'cat'; readonly items: readonly Node[] }
  | { readonly t: 'alt'; readonly alts: readonly Node[] }
  | { readonly t: 'rep'; readonly node: Node; readonly min: number; readonly max: number };

const MAX_CODE = 0xffff;

function normalize(ranges: Range[]): CharSet {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [lo, hi] of sorted) {
    const last = out.at(-1);
    if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

function complement(set: CharSet): CharSet {
  const out: Range[] = [];
  let next = 0;
  for (const [lo, hi] of set) {
    if (lo > next) out.push([next, lo - 1]);
    next = hi + 1;
  }
  if (next <= MAX_CODE) out.push([next, MAX_CODE]);
  return out;
}

const cp = (s: string): number => s.charCodeAt(0);
const DIGIT: CharSet = [[cp('0'), cp('9')]];
const WORD: CharSet = normalize([[cp('0'), cp('9')], [cp('A'), cp('Z')], [cp('_'), cp('_')], [cp('a'), cp('z')]]);
// JS's \s: WhiteSpace and LineTerminator.
const SPACE: CharSet = normalize(
  [0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff]
    .map((c): Range => [c, c])
    .concat([[0x2000, 0x200a]]),
);
const LINE_TERMINATORS: CharSet = normalize([[0x0a, 0x0a], [0x0d, 0x0d], [0x2028, 0x2029]]);
const DOT = complement(LINE_TERMINATORS);
const CLASS_ESCAPES: Readonly<Record<string, CharSet>> = {
  d: DIGIT, D: complement(DIGIT), w: WORD, W: complement(WORD), s: SPACE, S: complement(SPACE),
};
const CONTROL_ESCAPES: Readonly<Record<string, number>> = { t: 0x09, n: 0x0a, r: 0x0d, f: 0x0c, v: 0x0b };

class Parser {
  private i = 0;
  constructor(private readonly src: string) {}

  fail(reason: string, at = this.i): never {
    throw new LinePatternError(at, reason);
  }

  parse(): Node {
    let end = this.src.length;
    if (this.src.startsWith('^')) this.i = 1;
    if (end > this.i && this.src.endsWith('$') && !this.escapedAt(end - 1)) end--;
    const node = this.alternation(end);
    if (this.i < end) this.fail(`unbalanced ')'`);
    return node;
  }

  /** Is the character at `pos` preceded by an odd number of backslashes? */
  private escapedAt(pos: number): boolean {
    let n = 0;
    for (let k = pos - 1; k >= 0 && this.src[k] === '\\'; k--) n++;
    return n % 2 === 1;
  }

  private alternation(end: number): Node {
    const alts = [this.sequence(end)];
    while (this.i < end && this.src[this.i] === '|') {
      this.i++;
      alts.push(this.sequence(end));
    }
    return alts.length === 1 ? alts[0]! : { t: 'alt', alts };
  }

  private sequence(end: number): Node {
    const items: Node[] = [];
    while (this.i < end) {
      const c = this.src[this.i]!;
      if (c === '|' || c === ')') break;
      const start = this.i;
      const atom = this.atom(end);
      items.push(this.quantified(atom, start, end));
    }
    return items.length === 0 ? { t: 'empty' } : items.length === 1 ? items[0]! : { t: 'cat', items };
  }

  private atom(end: number): Node {
    const at = this.i;
    const c = this.src[this.i++]!;
    switch (c) {
      case '(': {
        if (this.src[this.i] === '?') {
          if (this.src[this.i + 1] === ':') this.i += 2;
          else this.fail('lookaround and named groups are not supported; use (?:…) or (…)', at);
        }
        const inner = this.alternation(end);
        if (this.src[this.i] !== ')' || this.i >= end) this.fail(`unclosed '('`, at);
        this.i++;
        return inner;
      }
      case '.':
        return { t: 'set', set: DOT };
      case '[':
        return { t: 'set', set: this.charClass(end, at) };
      case '\\':
        return { t: 'set', set: this.escape(end, false) };
      case '^':
      case '$':
        return this.fail(`'${c}' is only allowed at the start or end: the pattern is always anchored`, at);
      case '*':
      case '+':
      case '?':
        return this.fail(`nothing to repeat before '${c}'`, at);
      case '{':
        return this.fail(`'{' must follow something to repeat; write \\{ for a literal brace`, at);
      case ']':
      case '}':
        return this.fail(`unescaped '${c}'; write \\${c} for a literal`, at);
      default:
        return { t: 'set', set: [[cp(c), cp(c)]] };
    }
  }

  /** After `\`: a class escape, or one code unit (returned as a one-element set). */
  private escape(end: number, inClass: boolean): CharSet {
    const at = this.i - 1;
    if (this.i >= end) this.fail('pattern ends with a lone backslash', at);
    const c = this.src[this.i++]!;
    const cls = CLASS_ESCAPES[c];
    if (cls) return cls;
    const ctl = CONTROL_ESCAPES[c];
    if (ctl !== undefined) return [[ctl, ctl]];
    if (c === 'x' || c === 'u') {
      const n = c === 'x' ? 2 : 4;
      const hex = this.src.slice(this.i, this.i + n);
      if (this.i + n > end || !/^[0-9a-fA-F]+$/.test(hex) || hex.length !== n) this.fail(`\\${c} needs ${n} hex digits`, at);
      this.i += n;
      const v = parseInt(hex, 16);
      return [[v, v]];
    }
    if (c === '0' && !/[0-9]/.test(this.src[this.i] ?? '')) return [[0, 0]];
    if (/[0-9]/.test(c) || c === 'k') this.fail('backreferences are not supported', at);
    if ((c === 'b' || c === 'B') && !inClass) this.fail('word boundaries are not supported', at);
    if (c === 'b') return [[0x08, 0x08]];
    if (/[A-Za-z0-9]/.test(c)) this.fail(`unknown escape \\${c}`, at);
    return [[cp(c), cp(c)]];
  }

  private charClass(end: number, at: number): CharSet {
    let negate = false;
    if (this.src[this.i] === '^') {
      negate = true;
      this.i++;
    }
    const ranges: Range[] = [];
    /** One class member: a single code unit, or a class escape (which cannot end a range). */
    const member = (): { single: number } | { set: CharSet } => {
      const c = this.src[this.i++]!;
      if (c !== '\\') return { single: cp(c) };
      const s = this.escape(end, true);
      return s.length === 1 && s[0]![0] === s[0]![1] ? { single: s[0]![0] } : { set: s };
    };
    while (true) {
      if (this.i >= end) this.fail(`unclosed '['`, at);
      if (this.src[this.i] === ']') {
        this.i++;
        break;
      }
      const first = member();
      if ('set' in first) {
        ranges.push(...first.set);
        continue;
      }
      if (this.src[this.i] === '-' && this.i + 1 < end && this.src[this.i + 1] !== ']') {
        const dashAt = this.i;
        this.i++;
        const last = member();
        if ('set' in last) this.fail('a class escape cannot end a range', dashAt);
        if (last.single < first.single) this.fail('range out of order in character class', dashAt);
        ranges.push([first.single, last.single]);
      } else {
        ranges.push([first.single, first.single]);
      }
    }
    const set = normalize(ranges);
    return negate ? complement(set) : set;
  }

  private quantified(atom: Node, start: number, end: number): Node {
    if (this.i >= end) return atom;
    const at = this.i;
    const c = this.src[this.i]!;
    let min: number;
    let max: number;
    if (c === '*' || c === '+' || c === '?') {
      this.i++;
      [min, max] = c === '*' ? [0, Infinity] : c === '+' ? [1, Infinity] : [0, 1];
    } else if (c === '{') {
      const m = /^\{(\d{1,4})(,(\d{0,4}))?\}/.exec(this.src.slice(this.i, end));
      if (!m) return this.fail('expected {n}, {n,} or {n,m}; write \\{ for a literal brace', at);
      this.i += m[0].length;
      min = Number(m[1]);
      max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
      if (min > MAX_REPEAT || (max !== Infinity && max > MAX_REPEAT)) this.fail(`repetition count above ${MAX_REPEAT}`, at);
      if (max < min) this.fail('repetition {n,m} with m < n', at);
    } else {
      return atom;
    }
    if (this.src[this.i] === '?' && this.i < end) this.i++; // lazy: same yes/no answer
    if (this.i < end && /[*+?{]/.test(this.src[this.i]!)) this.fail('nothing to repeat (two quantifiers in a row)', this.i);
    if (max === Infinity && hasUnboundedRepeat(atom)) {
      this.fail(`nested unbounded quantifiers (like (a+)+) are refused: exponential in backtracking engines`, start);
    }
    return { t: 'rep', node: atom, min, max };
  }
}

function hasUnboundedRepeat(n: Node): boolean {
  switch (n.t) {
    case 'rep':
      return n.max === Infinity || hasUnboundedRepeat(n.node);
    case 'cat':
      return n.items.some(hasUnboundedRepeat);
    case 'alt':
      return n.alts.some(hasUnboundedRepeat);
    default:
      return false;
  }
}

// ── NFA ──────────────────────────────────────────────────────────────────────

type State =
  | { kind: 'set'; set: CharSet; out: number }
  | { kind: 'split'; a: number; b: number }
  | { kind: 'match' };

/** A fragment: its start state and the dangling exits to patch. */
interface Frag {
  readonly start: number;
  readonly exits: ReadonlyArray<(target: number) => void>;
}

class NfaBuilder {
  readonly states: State[] = [];

  private add(s: State): number {
    if (this.states.length >= MAX_PATTERN_STATES) {
      throw new LinePatternError(0, `pattern too large after expanding repetitions (more than ${MAX_PATTERN_STATES} states)`);
    }
    this.states.push(s);
    return this.states.length - 1;
  }

  /** An epsilon state (a split whose both arms go to the same place once patched). */
  private epsilon(): Frag {
    const s: State = { kind: 'split', a: -1, b: -1 };
    const id = this.add(s);
    return { start: id, exits: [(t) => ((s.a = t), (s.b = t))] };
  }

  build(n: Node): Frag {
    switch (n.t) {
      case 'empty':
        return this.epsilon();
      case 'set': {
        const s: State = { kind: 'set', set: n.set, out: -1 };
        return { start: this.add(s), exits: [(t) => (s.out = t)] };
      }
      case 'cat': {
        let first: Frag | undefined;
        let prev: Frag | undefined;
        for (const item of n.items) {
          const f = this.build(item);
          if (prev) for (const x of prev.exits) x(f.start);
          first ??= f;
          prev = f;
        }
        return { start: first!.start, exits: prev!.exits };
      }
      case 'alt': {
        const frags = n.alts.map((a) => this.build(a));
        let start = frags.at(-1)!.start;
        for (let k = frags.length - 2; k >= 0; k--) start = this.add({ kind: 'split', a: frags[k]!.start, b: start });
        return { start, exits: frags.flatMap((f) => f.exits) };
      }
      case 'rep':
        return this.repeat(n.node, n.min, n.max);
    }
  }

  private repeat(node: Node, min: number, max: number): Frag {
    const parts: Frag[] = [];
    for (let k = 0; k < min; k++) parts.push(this.build(node));
    if (max === Infinity) {
      const body = this.build(node);
      const s: State = { kind: 'split', a: body.start, b: -1 };
      const loop = this.add(s);
      for (const x of body.exits) x(loop);
      parts.push({ start: loop, exits: [(t) => (s.b = t)] });
    } else {
      for (let k = min; k < max; k++) {
        const body = this.build(node);
        const s: State = { kind: 'split', a: body.start, b: -1 };
        parts.push({ start: this.add(s), exits: [...body.exits, (t) => (s.b = t)] });
      }
    }
    if (parts.length === 0) return this.epsilon();
    for (let k = 0; k + 1 < parts.length; k++) for (const x of parts[k]!.exits) x(parts[k + 1]!.start);
    return { start: parts[0]!.start, exits: parts.at(-1)!.exits };
  }
}

function inSet(set: CharSet, c: number): boolean {
  for (const [lo, hi] of set) {
    if (c < lo) return false;
    if (c <= hi) return true;
  }
  return false;
}

export interface LinePattern {
  readonly source: string;
  /** True when the whole of `line` matches. Time is linear in `line.length`. */
  test(line: string): boolean;
}

/** Compiles `source`; throws LinePatternError naming what is refused and where. */
export function compileLinePattern(source: string): LinePattern {
  if (typeof source !== 'string') throw new LinePatternError(0, 'pattern is not a string');
  if (source.length > MAX_PATTERN_LENGTH) throw new LinePatternError(MAX_PATTERN_LENGTH, `pattern longer than ${MAX_PATTERN_LENGTH} characters`);
  const ast = new Parser(source).parse();
  const b = new NfaBuilder();
  const frag = b.build(ast);
  const match = b.states.length;
  b.states.push({ kind: 'match' });
  for (const x of frag.exits) x(match);
  const states = b.states;
  const start = frag.start;

  return {
    source,
    test(line: string): boolean {
      const mark = new Int32Array(states.length).fill(-1);
      let current: number[] = [];
      let next: number[] = [];
      const stack: number[] = [];
      /** Adds `s` and everything reachable by epsilon moves to `list` (once per step). */
      const add = (list: number[], s: number, step: number): void => {
        stack.push(s);
        while (stack.length) {
          const id = stack.pop()!;
          if (mark[id] === step) continue;
          mark[id] = step;
          const st = states[id]!;
          if (st.kind === 'split') stack.push(st.b, st.a);
          else list.push(id);
        }
      };
      add(current, start, 0);
      for (let k = 0; k < line.length && current.length; k++) {
        const c = line.charCodeAt(k);
        next.length = 0;
        for (const id of current) {
          const st = states[id]!;
          if (st.kind === 'set' && inSet(st.set, c)) add(next, st.out, k + 1);
        }
        [current, next] = [next, current];
      }
      return current.some((id) => states[id]!.kind === 'match');
    },
  };
}
