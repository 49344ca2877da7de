/**
 * keel's certificate authority: X.509-SVIDs and JWT-SVIDs signed with keys
 * that live in the HSM, rotated on the SPIFFE schedule, and found again after
 * a restart through the journal (labels, ids, certificates, states).
 */
import { dnsNameProblem } from '../../spiffe/dns-name.js';
import { X509Certificate, randomBytes, type KeyObject } from 'node:crypto';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import type { Signer } from '../../spiffe/signer.js';
import { TrustBundle } from '../../spiffe/bundle.js';
import { CaConfigError, CaIssueError, CaJournalWriteError, CaStateError } from './errors.js';
import { parseCsr, isParsedCsr, type ParsedCsr } from './csr.js';
import { LeafTemplate } from './leaf-template.js';
import { buildCaCertificate, readCaCertificate, type CaCertificateInfo } from './ca-certificate.js';
import { randomSerial } from './serial.js';
import { algorithmForKeyType, type CaKeyHandle, type CaKeyStore, type CaKeyType } from './key-store.js';
import type { AuthorityState, CaJournal, CaJournalState } from './journal.js';
import { DEFAULT_SCHEDULE, deferredActivation, nextRotationStep, type AuthoritySlot, type PublicationRules, type RotationSchedule } from './rotation.js';
import { mintJwtSvid } from '../../spiffe/jwt-svid.js';
import { checkCnfJwk, mintWitSvid, WitSvidError } from '../../spiffe/wit-svid.js';
import { normalizeJwtIssuer } from '../../spiffe/oidc.js';

export interface UpstreamAuthority {
  /** DER: the upstream certificate whose key `signer` holds first, then its intermediates (root optional). */
  readonly chainDer: readonly Buffer[];
  /** The upstream key: in an HSM, or (tests) in memory from a PEM file. */
  readonly signer: Signer;
  /** The roots published in the bundle; by default the self-signed last certificate of `chainDer`. */
  readonly trustAnchorsDer?: readonly Buffer[];
}

export interface CertificateAuthorityOptions {
  readonly trustDomain: TrustDomain | string;
  readonly keys: CaKeyStore;
  readonly journal: CaJournal;
  /** Milliseconds since the epoch; injectable for rotation tests. */
  readonly now?: () => number;
  readonly x509: {
    readonly keyType?: CaKeyType;
    /** Lifetime of each CA certificate (clamped to the upstream's notAfter in intermediate mode). */
    readonly caTtlSeconds: number;
    /** Longest X.509-SVID lifetime; requests above it are clamped. */
    readonly svidMaxTtlSeconds: number;
    /** Subject O of leaves and CA certificates (default "keel"). */
    readonly organization?: string;
    readonly upstream?: UpstreamAuthority;
  };
  readonly jwt: {
    readonly keyType?: CaKeyType;
    readonly keyTtlSeconds: number;
    readonly svidMaxTtlSeconds: number;
    /** `iss` of every JWT-SVID (server.jwt.issuer): an https URL without query or fragment. Absent: no `iss`. */
    readonly issuer?: string;
  };
  readonly schedule?: Partial<RotationSchedule>;
  /**
   * The clock skew tolerated in relying parties: notBefore of SVIDs and CA
   * certificates is set this far in the past, and an old key stays in the
   * bundle this long past its last SVID (default 10 s).
   */
  readonly backdateSeconds?: number;
  /**
   * How long a prepared key must have been in the bundle this process serves
   * before it may sign (default: the longest X.509-SVID TTL, capped at the
   * prepare→activate gap of each kind). See docs/server.md, keys and rotation.
   */
  readonly minPublishSeconds?: number;
  /** HSM labels are `<prefix>-x509-ca-<n>` and `<prefix>-jwt-<n>` (default "keel"). */
  readonly keyLabelPrefix?: string;
  /** How often the timer runs rotation (default 10 s; 0: no timer, call rotate() yourself). */
  readonly rotationCheckIntervalMs?: number;
  /** Errors of timer-driven rotation and of key destruction, which have no caller to throw to. */
  readonly onError?: (err: unknown) => void;
  /** Rotation that departs from the schedule (activation held back or forced); once per key and kind of departure. */
  readonly onWarning?: (message: string, fields: Record<string, string | number>) => void;
}

export interface X509SvidRequest {
  /** A CSR (DER or PEM) or one already checked with parseCsr. */
  readonly csr: ParsedCsr | Uint8Array | string;
  readonly spiffeId: SpiffeId | string;
  readonly dnsNames?: readonly string[];
  readonly ttlSeconds: number;
}

export interface IssuedX509Svid {
  readonly certDer: Buffer;
  /** What follows the leaf in the SVID: keel's CA if it is an intermediate, then upstream intermediates. Empty for a self-signed CA. */
  readonly chainDer: readonly Buffer[];
  readonly spiffeId: string;
  /** Hex, as `openssl x509 -serial` prints it (upper case). */
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** HSM label and id (hex CKA_ID) of the CA key that signed it (audit). */
  readonly caKeyLabel: string;
  readonly caKeyId: string;
}

export interface JwtSvidRequest {
  readonly spiffeId: SpiffeId | string;
  readonly audience: string | readonly string[];
  readonly ttlSeconds: number;
}

export interface IssuedJwtSvid {
  readonly token: string;
  readonly spiffeId: string;
  readonly audience: readonly string[];
  readonly kid: string;
  readonly issuedAt: Date;
  readonly expiresAt: Date;
  readonly keyLabel: string;
}

export interface WitSvidRequest {
  readonly spiffeId: SpiffeId | string;
  /** The workload's public key as a JWK with `alg` (it becomes cnf.jwk). */
  readonly publicKeyJwk: unknown;
  readonly ttlSeconds: number;
}

export interface IssuedWitSvid {
  readonly token: string;
  readonly spiffeId: string;
  /** The WIT key ID (`wit-<JWT kid>`). */
  readonly kid: string;
  readonly jti: string;
  readonly issuedAt: Date;
  readonly expiresAt: Date;
  readonly keyLabel: string;
}

export interface AuthorityStatus {
  readonly kind: 'x509' | 'jwt';
  readonly index: number;
  readonly label: string;
  readonly state: AuthorityState;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly issuedUntil: Date | null;
  /** x509: the CA certificate; jwt: undefined. */
  readonly certificateDer?: Buffer;
  /** x509: its rollover certificates (signed by the key active when it was prepared). */
  readonly rolloverCertificatesDer?: readonly Buffer[];
  /** jwt: the kid. */
  readonly kid?: string;
}

interface Slot extends AuthoritySlot {
  index: number;
  state: AuthorityState;
  readonly label: string;
  readonly key: CaKeyHandle;
  readonly signer: Signer;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  /** Exact, in memory. */
  issuedUntilMs: number | null;
  /** Bound already in a journal write that completed. */
  durableUntilMs: number | null;
  /** Bound in the journal write under way or scheduled. */
  pendingUntilMs: number | null;
  /** Prepared keys: since when this process has served the key in its bundle (restarts reset it). */
  publishedSinceMs?: number;
}
interface X509Slot extends Slot {
  readonly cert: CaCertificateInfo;
  readonly template: LeafTemplate;
  /** This CA certificate signed by the key that was active when this one was prepared (rollover; DER). */
  readonly endorsements: readonly Buffer[];
}
interface JwtSlot extends Slot {
  readonly kid: string;
}

const MAX_DNS_NAMES = 32;

/** A rollover certificate read back (journal) or just made: for `cert`'s key and name, issued by another CA. */
function checkedEndorsement(der: Buffer, cert: CaCertificateInfo, label: string): Buffer {
  let e: CaCertificateInfo;
  try {
    e = readCaCertificate(der);
  } catch (err) {
    throw new CaStateError(`the rollover certificate of ${label} does not parse: ${(err as Error).message}`);
  }
  if (!e.publicKey.equals(cert.publicKey) || !e.subjectNameDer.equals(cert.subjectNameDer) || e.selfSigned) {
    throw new CaStateError(`the rollover certificate of ${label} is not for its key and name`);
  }
  return der;
}
function jwtIssuerOf(v: unknown): string {
  const issuer = normalizeJwtIssuer(v);
  if (issuer === undefined) throw new CaConfigError('jwt.issuer', 'must be an https URL without userinfo, query or fragment');
  return issuer;
}

function positiveInt(path: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new CaConfigError(path, 'must be a positive integer');
  return v;
}

const floorSecond = (ms: number): number => Math.floor(ms / 1000) * 1000;

function slotStatus(kind: 'x509' | 'jwt', s: Slot): AuthorityStatus {
  return {
    kind,
    index: s.index,
    label: s.label,
    state: s.state,
    notBefore: new Date(s.notBeforeMs),
    notAfter: new Date(s.notAfterMs),
    issuedUntil: s.issuedUntilMs === null ? null : new Date(s.issuedUntilMs),
    ...('cert' in s ? { certificateDer: (s as X509Slot).cert.der, rolloverCertificatesDer: (s as X509Slot).endorsements } : {}),
    ...('kid' in s ? { kid: (s as JwtSlot).kid } : {}),
  };
}

export class CertificateAuthority {
  readonly trustDomain: TrustDomain;
  private readonly keys: CaKeyStore;
  private readonly journal: CaJournal;
  private readonly now: () => number;
  private readonly schedule: RotationSchedule;
  private readonly backdateMs: number;
  private readonly prefix: string;
  private readonly organization: string;
  private readonly x509KeyType: CaKeyType;
  private readonly jwtKeyType: CaKeyType;
  private readonly caTtlMs: number;
  private readonly x509MaxTtlMs: number;
  private readonly jwtKeyTtlMs: number;
  private readonly jwtMaxTtlMs: number;
  private readonly jwtIssuer: string | undefined;
  private readonly upstream: { readonly signer: Signer; readonly cert: CaCertificateInfo; readonly chainTail: readonly Buffer[]; readonly anchors: readonly X509Certificate[] } | undefined;
  private readonly onError: (err: unknown) => void;
  private readonly onWarning: NonNullable<CertificateAuthorityOptions['onWarning']>;
  private readonly rules: { readonly x509: PublicationRules; readonly jwt: PublicationRules };

  private x509: X509Slot[] = [];
  private jwt: JwtSlot[] = [];
  private nextIndex = { x509: 1, jwt: 1 };
  private sequence = 0;
  private activeX509: X509Slot | undefined;
  private activeJwt: JwtSlot | undefined;
  private readonly listeners = new Set<(b: TrustBundle) => void>();
  private readonly activationListeners = new Set<() => void>();
  /** The active X.509 CA certificate last announced to activation listeners. */
  private announcedActive: Buffer | undefined;
  private rotating: Promise<void> = Promise.resolve();
  private saving: Promise<void> | undefined;
  private dirty = false;
  /** The journal text of the last save that succeeded: an unchanged state is not written again. */
  private savedJson: string | undefined;
  /** Bundle contents the sequence was last bumped for, and last announced to listeners. */
  private sequencedKey: string | undefined;
  private announcedKey: string | undefined;
  /** Keys dropped from the journal state, destroyed in the HSM once a save without them succeeded. */
  private doomed: CaKeyHandle[] = [];
  private readonly warned = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(o: CertificateAuthorityOptions) {
    try {
      this.trustDomain = typeof o.trustDomain === 'string' ? TrustDomain.parse(o.trustDomain) : o.trustDomain;
    } catch (e) {
      throw new CaConfigError('trustDomain', (e as Error).message);
    }
    this.keys = o.keys;
    this.journal = o.journal;
    this.now = o.now ?? Date.now;
    this.onError = o.onError ?? (() => undefined);
    this.onWarning = o.onWarning ?? (() => undefined);
    const schedule = { ...DEFAULT_SCHEDULE, ...o.schedule };
    if (!(schedule.activateAt > 0 && schedule.activateAt < schedule.prepareAt && schedule.prepareAt < 1)) {
      throw new CaConfigError('schedule', 'need 0 < activateAt < prepareAt < 1');
    }
    this.schedule = schedule;
    const backdate = o.backdateSeconds ?? 10;
    if (!Number.isSafeInteger(backdate) || backdate < 0 || backdate > 3600) throw new CaConfigError('backdateSeconds', 'must be an integer in 0..3600');
    this.backdateMs = backdate * 1000;
    this.prefix = o.keyLabelPrefix ?? 'keel';
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(this.prefix)) throw new CaConfigError('keyLabelPrefix', 'must be 1..64 of [A-Za-z0-9._-]');
    this.organization = o.x509.organization ?? 'keel';
    if (this.organization.length === 0 || this.organization.length > 64) throw new CaConfigError('x509.organization', 'must be 1..64 characters');
    this.x509KeyType = o.x509.keyType ?? 'ec-p256';
    this.jwtKeyType = o.jwt.keyType ?? 'ec-p256';
    this.caTtlMs = positiveInt('x509.caTtlSeconds', o.x509.caTtlSeconds) * 1000;
    this.x509MaxTtlMs = positiveInt('x509.svidMaxTtlSeconds', o.x509.svidMaxTtlSeconds) * 1000;
    this.jwtKeyTtlMs = positiveInt('jwt.keyTtlSeconds', o.jwt.keyTtlSeconds) * 1000;
    this.jwtMaxTtlMs = positiveInt('jwt.svidMaxTtlSeconds', o.jwt.svidMaxTtlSeconds) * 1000;
    this.jwtIssuer = o.jwt.issuer === undefined ? undefined : jwtIssuerOf(o.jwt.issuer);
    // Six times the longest SVID (or more with a later activation): an SVID signed just
    // before activation of the next key must still fit inside the old key's lifetime.
    const factor = Math.max(6, 1 / schedule.activateAt);
    if (this.caTtlMs < factor * this.x509MaxTtlMs) {
      throw new CaConfigError('x509.caTtlSeconds', `${o.x509.caTtlSeconds}s is under ${factor}× the longest X.509-SVID TTL (${o.x509.svidMaxTtlSeconds}s)`);
    }
    if (this.jwtKeyTtlMs < factor * this.jwtMaxTtlMs) {
      throw new CaConfigError('jwt.keyTtlSeconds', `${o.jwt.keyTtlSeconds}s is under ${factor}× the longest JWT-SVID TTL (${o.jwt.svidMaxTtlSeconds}s)`);
    }
    this.upstream = o.x509.upstream ? this.checkUpstream(o.x509.upstream) : undefined;
    this.rules = this.publicationRules(o.minPublishSeconds);
  }

  /**
   * Agents fetch the bundle on every (re)connection and renew each SVID at half
   * its life, so every agent that still holds a valid SVID has talked to the
   * server within the longest X.509-SVID TTL: a key published that long has
   * reached all of them. Never more than the prepare→activate gap, or the
   * schedule could not be kept even when nothing goes wrong.
   */
  private publicationRules(configured: number | undefined): CertificateAuthority['rules'] {
    const gap = (ttlMs: number): number => Math.floor((this.schedule.prepareAt - this.schedule.activateAt) * ttlMs);
    const gaps = { x509: gap(this.caTtlMs), jwt: gap(this.jwtKeyTtlMs) };
    let min: { x509: number; jwt: number };
    if (configured === undefined) {
      min = { x509: Math.min(this.x509MaxTtlMs, gaps.x509), jwt: Math.min(this.x509MaxTtlMs, gaps.jwt) };
    } else {
      if (!Number.isSafeInteger(configured) || configured < 0) throw new CaConfigError('minPublishSeconds', 'must be a non-negative integer');
      for (const kind of ['x509', 'jwt'] as const) {
        if (configured * 1000 > gaps[kind]) {
          throw new CaConfigError('minPublishSeconds', `${configured}s exceeds the ${Math.floor(gaps[kind] / 1000)}s between preparing and activating a${kind === 'x509' ? 'n X.509 CA' : ' JWT'} key, so every rotation would be late`);
        }
      }
      min = { x509: configured * 1000, jwt: configured * 1000 };
    }
    return { x509: { minPublishMs: min.x509, dropGraceMs: this.backdateMs }, jwt: { minPublishMs: min.jwt, dropGraceMs: this.backdateMs } };
  }

  /** The minimum publication time before activation, per kind (ms). */
  get minPublishMs(): { readonly x509: number; readonly jwt: number } {
    return { x509: this.rules.x509.minPublishMs, jwt: this.rules.jwt.minPublishMs };
  }

  private checkUpstream(u: UpstreamAuthority): NonNullable<CertificateAuthority['upstream']> {
    const [first, ...rest] = u.chainDer;
    if (!first) throw new CaConfigError('x509.upstream.chainDer', 'is empty');
    let cert: CaCertificateInfo;
    let tail: X509Certificate[];
    try {
      cert = readCaCertificate(Buffer.from(first));
      tail = rest.map((d) => new X509Certificate(d));
    } catch (e) {
      throw new CaConfigError('x509.upstream.chainDer', `does not parse: ${(e as Error).message}`);
    }
    if (!cert.x509.ca) throw new CaConfigError('x509.upstream.chainDer', 'the first certificate is not a CA');
    if (!cert.publicKey.equals(u.signer.publicKey)) {
      throw new CaConfigError('x509.upstream.signer', 'its public key is not the one of the first upstream certificate');
    }
    const remaining = cert.notAfterMs - this.now();
    if (remaining < 6 * this.x509MaxTtlMs) throw new CaConfigError('x509.upstream.chainDer', 'the upstream certificate expires in less than 6× the longest X.509-SVID TTL');
    let anchors: X509Certificate[];
    if (u.trustAnchorsDer) {
      anchors = u.trustAnchorsDer.map((d) => new X509Certificate(d));
    } else {
      const last = tail.length ? tail[tail.length - 1]! : cert.x509;
      if (!(last.checkIssued(last) && last.verify(last.publicKey))) {
        throw new CaConfigError('x509.upstream.trustAnchorsDer', 'needed: the upstream chain does not end in a self-signed root');
      }
      anchors = [last];
    }
    // Roots are in the bundle; the SVID chain carries what sits between them and keel's CA.
    const chainTail = [cert.x509, ...tail].filter((c) => !anchors.some((a) => a.raw.equals(c.raw))).map((c) => c.raw);
    return { signer: u.signer, cert, chainTail, anchors };
  }

  /** Loads the journal, finds its keys in the HSM, rotates as due, and starts the timer. */
  static async open(o: CertificateAuthorityOptions): Promise<CertificateAuthority> {
    const ca = new CertificateAuthority(o);
    await ca.restore(await o.journal.load());
    await ca.rotate();
    const interval = o.rotationCheckIntervalMs ?? 10_000;
    if (interval > 0) {
      ca.timer = setInterval(() => void ca.rotate().catch(ca.onError), interval);
      ca.timer.unref();
    }
    return ca;
  }

  // ---- restart -------------------------------------------------------------

  private async restore(state: CaJournalState | undefined): Promise<void> {
    if (!state) {
      this.sequencedKey = this.announcedKey = this.bundleKey();
      return;
    }
    if (state.trustDomain !== this.trustDomain.name) {
      throw new CaConfigError('trustDomain', `the journal belongs to trust domain ${state.trustDomain}`);
    }
    this.nextIndex = { ...state.nextIndex };
    this.sequence = state.bundleSequence;
    for (const j of state.x509) {
      const key = await this.findJournalKey(j.label, j.keyId);
      const cert = readCaCertificate(Buffer.from(j.certificate, 'base64'));
      if (!cert.publicKey.equals(key.publicKey)) throw new CaStateError(`HSM key ${j.label} does not match its CA certificate in the journal`);
      if (this.upstream ? !cert.x509.verify(this.upstream.cert.publicKey) : !cert.selfSigned) {
        throw new CaConfigError('x509.upstream', `CA certificate ${j.label} in the journal was not issued ${this.upstream ? 'by the configured upstream' : 'self-signed'}`);
      }
      const endorsements = (j.endorsements ?? []).map((b64) => checkedEndorsement(Buffer.from(b64, 'base64'), cert, j.label));
      this.x509.push(this.x509Slot(j.index, j.state, key, cert, j.issuedUntilMs, endorsements));
    }
    for (const j of state.jwt) {
      const key = await this.findJournalKey(j.label, j.keyId);
      this.jwt.push(this.jwtSlot(j.index, j.state, key, j.kid, j.notBeforeMs, j.notAfterMs, j.issuedUntilMs));
    }
    // Whether agents fetched a prepared key before the restart is unknown (the server
    // may have been down since just after preparing it): its publication starts now.
    const openedAt = this.now();
    for (const s of [...this.x509, ...this.jwt]) if (s.state === 'prepared') s.publishedSinceMs = openedAt;
    this.savedJson = JSON.stringify(state);
    this.sequencedKey = this.announcedKey = this.bundleKey();
    this.refreshActive();
  }

  private async findJournalKey(label: string, idHex: string): Promise<CaKeyHandle> {
    const key = await this.keys.findKey({ label, id: Buffer.from(idHex, 'hex') });
    if (!key) throw new CaStateError(`the journal names HSM key ${label} (id ${idHex}), which the HSM does not have`);
    return key;
  }

  private x509Slot(index: number, state: AuthorityState, key: CaKeyHandle, cert: CaCertificateInfo, issuedUntil: number | null, endorsements: readonly Buffer[] = []): X509Slot {
    const signer = this.keys.signer(key, algorithmForKeyType(key.type));
    return {
      index,
      state,
      label: key.label,
      key,
      signer,
      cert,
      notBeforeMs: cert.notBeforeMs,
      notAfterMs: cert.notAfterMs,
      issuedUntilMs: issuedUntil,
      durableUntilMs: issuedUntil,
      pendingUntilMs: issuedUntil,
      template: new LeafTemplate({ algorithm: signer.algorithm, issuerNameDer: cert.subjectNameDer, issuerKeyId: cert.subjectKeyId, organization: this.organization }),
      endorsements,
    };
  }

  private jwtSlot(index: number, state: AuthorityState, key: CaKeyHandle, kid: string, nb: number, na: number, issuedUntil: number | null): JwtSlot {
    const inner = this.keys.signer(key, algorithmForKeyType(key.type));
    // The kid is ours (from the key id), whatever the HSM signer calls its key.
    const signer: Signer = { algorithm: inner.algorithm, publicKey: inner.publicKey, keyId: kid, sign: (d) => inner.sign(d) };
    return { index, state, label: key.label, key, signer, kid, notBeforeMs: nb, notAfterMs: na, issuedUntilMs: issuedUntil, durableUntilMs: issuedUntil, pendingUntilMs: issuedUntil };
  }

  private refreshActive(): void {
    this.activeX509 = this.x509.find((s) => s.state === 'active');
    this.activeJwt = this.jwt.find((s) => s.state === 'active');
  }

  // ---- journal -------------------------------------------------------------

  private snapshot(): { state: CaJournalState; commit: () => void } {
    const captured = new Map<Slot, number | null>();
    const entry = (s: Slot) => {
      captured.set(s, s.pendingUntilMs);
      return { index: s.index, label: s.label, keyId: s.key.id.toString('hex'), keyType: s.key.type, state: s.state, notBeforeMs: s.notBeforeMs, notAfterMs: s.notAfterMs, issuedUntilMs: s.pendingUntilMs };
    };
    const state: CaJournalState = {
      version: 1,
      trustDomain: this.trustDomain.name,
      bundleSequence: this.sequence,
      nextIndex: { ...this.nextIndex },
      x509: this.x509.map((s) => ({
        ...entry(s),
        certificate: s.cert.der.toString('base64'),
        ...(s.endorsements.length ? { endorsements: s.endorsements.map((d) => d.toString('base64')) } : {}),
      })),
      jwt: this.jwt.map((s) => ({ ...entry(s), kid: s.kid })),
    };
    return {
      state,
      commit: () => {
        for (const [s, bound] of captured) {
          if (bound !== null && (s.durableUntilMs === null || bound > s.durableUntilMs)) s.durableUntilMs = bound;
        }
      },
    };
  }

  /**
   * Saves the current state; concurrent callers share writes, each resolving
   * after one that includes its change. A state equal to the last one saved is
   * not written again. A failed save rejects with CaJournalWriteError; the next
   * call tries again with whatever the state is then.
   */
  private persist(): Promise<void> {
    this.dirty = true;
    if (!this.saving) {
      const loop = async (): Promise<void> => {
        while (this.dirty) {
          this.dirty = false;
          const snap = this.snapshot();
          const json = JSON.stringify(snap.state);
          if (json !== this.savedJson) {
            try {
              await this.journal.save(snap.state);
            } catch (e) {
              throw new CaJournalWriteError(e);
            }
            this.savedJson = json;
          }
          snap.commit();
        }
      };
      // Cleared in a callback, not a `finally` inside the loop: with nothing to write the loop
      // finishes synchronously, before the assignment, which would then stick for good.
      this.saving = loop().finally(() => {
        this.saving = undefined;
      });
    }
    return this.saving;
  }

  /**
   * The journal write an issuance depends on, settled into a value so that it
   * can run alongside the HSM signature without ever being an unhandled
   * rejection (the signature may fail first, and then nobody awaits it).
   */
  private static settled(p: Promise<void> | undefined): Promise<unknown> | undefined {
    return p?.then(
      () => undefined,
      (e: unknown) => e ?? new CaJournalWriteError(e),
    );
  }

  /**
   * Records that `slot` signed something valid until `notAfterMs`. The journal
   * keeps an upper bound, raised a max-TTL ahead at a time, so that a busy CA
   * writes it about once per SVID lifetime rather than once per SVID.
   */
  private noteIssued(slot: Slot, notAfterMs: number, maxTtlMs: number): Promise<void> | undefined {
    if (slot.issuedUntilMs === null || notAfterMs > slot.issuedUntilMs) slot.issuedUntilMs = notAfterMs;
    if (slot.durableUntilMs !== null && notAfterMs <= slot.durableUntilMs) return undefined;
    if (slot.pendingUntilMs !== null && notAfterMs <= slot.pendingUntilMs && this.saving) return this.saving;
    const bound = Math.min(slot.notAfterMs, notAfterMs + maxTtlMs);
    if (slot.pendingUntilMs === null || bound > slot.pendingUntilMs) slot.pendingUntilMs = bound;
    return this.persist();
  }

  // ---- issuing -------------------------------------------------------------

  private checkOpen(): void {
    if (this.closed) throw new CaStateError('the CA is closed');
  }

  private leafId(input: SpiffeId | string, field: string): SpiffeId {
    let id: SpiffeId;
    try {
      id = typeof input === 'string' ? SpiffeId.parse(input) : input;
    } catch (e) {
      throw new CaIssueError(field, (e as Error).message);
    }
    if (!(id instanceof SpiffeId)) throw new CaIssueError(field, 'not a SPIFFE ID');
    if (!id.memberOf(this.trustDomain)) throw new CaIssueError(field, `${id.toString()} is not in trust domain ${this.trustDomain.name}`);
    if (id.isTrustDomainId) throw new CaIssueError(field, 'an SVID needs a path; the trust domain ID names the CA');
    return id;
  }

  private ttlMs(v: unknown, maxMs: number, field: string): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new CaIssueError(field, 'must be a positive integer number of seconds');
    return Math.min(v * 1000, maxMs);
  }

  private prepareX509(r: X509SvidRequest, at = ''): { csr: ParsedCsr; id: SpiffeId; dnsNames: readonly string[]; ttlMs: number } {
    if (typeof r !== 'object' || r === null) throw new CaIssueError(at || 'request', 'must be an object');
    const id = this.leafId(r.spiffeId, `${at}spiffeId`);
    const dnsNames = r.dnsNames ?? [];
    if (!Array.isArray(dnsNames) || dnsNames.length > MAX_DNS_NAMES) throw new CaIssueError(`${at}dnsNames`, `must be an array of at most ${MAX_DNS_NAMES} names`);
    dnsNames.forEach((d, i) => {
      const p = dnsNameProblem(d);
      if (p) throw new CaIssueError(`${at}dnsNames[${i}]`, p);
    });
    const ttlMs = this.ttlMs(r.ttlSeconds, this.x509MaxTtlMs, `${at}ttlSeconds`);
    const csr = isParsedCsr(r.csr) ? r.csr : parseCsr(r.csr as Uint8Array | string);
    return { csr, id, dnsNames: [...dnsNames], ttlMs };
  }

  private async signX509(p: ReturnType<CertificateAuthority['prepareX509']>): Promise<IssuedX509Svid> {
    this.checkOpen();
    const slot = this.activeX509;
    const now = this.now();
    if (!slot || slot.notAfterMs <= now) throw new CaStateError('no active X.509 CA key (rotation has not run or the CA expired)');
    const notBeforeMs = Math.max(floorSecond(now - this.backdateMs), slot.notBeforeMs);
    const notAfterMs = Math.min(floorSecond(now + p.ttlMs), slot.notAfterMs);
    const durable = CertificateAuthority.settled(this.noteIssued(slot, notAfterMs, this.x509MaxTtlMs));
    const serial = randomSerial();
    const tbs = slot.template.buildTbs({
      serial,
      notBeforeMs,
      notAfterMs,
      spiffeId: p.id.toString(),
      dnsNames: p.dnsNames,
      spkiDer: p.csr.spkiDer,
      subjectKeyId: p.csr.subjectKeyId,
    });
    const sig = await slot.signer.sign(tbs);
    // The journal write (rare) overlaps the HSM signature; the SVID leaves only once both are done,
    // and not at all if the journal could not record the key's new bound.
    const failed = durable && (await durable);
    if (failed) throw failed;
    return {
      certDer: slot.template.wrap(tbs, sig),
      chainDer: this.upstream ? [slot.cert.der, ...this.upstream.chainTail] : [],
      spiffeId: p.id.toString(),
      serial: serial.toString('hex').toUpperCase(),
      notBefore: new Date(notBeforeMs),
      notAfter: new Date(notAfterMs),
      caKeyLabel: slot.label,
      caKeyId: slot.key.id.toString('hex'),
    };
  }

  /** Issues one X.509-SVID for the key in `csr`, naming `spiffeId`. The TTL is clamped to the maximum and to the CA's notAfter. */
  async issueX509Svid(r: X509SvidRequest): Promise<IssuedX509Svid> {
    this.checkOpen();
    return this.signX509(this.prepareX509(r));
  }

  /** Checks every request first (nothing is signed if one is bad), then signs them concurrently. */
  async issueX509SvidBatch(rs: readonly X509SvidRequest[]): Promise<IssuedX509Svid[]> {
    this.checkOpen();
    if (!Array.isArray(rs)) throw new CaIssueError('requests', 'must be an array');
    const prepared = rs.map((r, i) => this.prepareX509(r, `requests[${i}].`));
    return Promise.all(prepared.map((p) => this.signX509(p)));
  }

  /** Mints a JWT-SVID; `exp` is clamped to the maximum TTL and to the JWT key's end of life. */
  async mintJwtSvid(r: JwtSvidRequest): Promise<IssuedJwtSvid> {
    this.checkOpen();
    const id = this.leafId(r.spiffeId, 'spiffeId');
    const audience = typeof r.audience === 'string' ? [r.audience] : r.audience;
    if (!Array.isArray(audience) || audience.length === 0 || audience.length > 16) throw new CaIssueError('audience', 'must be 1..16 strings');
    audience.forEach((a, i) => {
      if (typeof a !== 'string' || a.length === 0 || a.length > 1024) throw new CaIssueError(`audience[${i}]`, 'must be a non-empty string of at most 1024 characters');
    });
    const ttlMs = this.ttlMs(r.ttlSeconds, this.jwtMaxTtlMs, 'ttlSeconds');
    const { value: token, slot, issuedAt, expiresAt } = await this.signWithActiveJwt(ttlMs, (signer, times) =>
      mintJwtSvid({ signer, sub: id, aud: audience, ...times, ...(this.jwtIssuer !== undefined ? { issuer: this.jwtIssuer } : {}) }),
    );
    return { token, spiffeId: id.toString(), audience: [...audience], kid: slot.kid, issuedAt, expiresAt, keyLabel: slot.label };
  }

  /**
   * Mints a WIT-SVID for the workload key `publicKeyJwk` with the active JWT
   * key (its own kid, `wit-<kid>`); `exp` clamped as for JWT-SVIDs.
   */
  async mintWitSvid(r: WitSvidRequest): Promise<IssuedWitSvid> {
    this.checkOpen();
    const id = this.leafId(r.spiffeId, 'spiffeId');
    const ttlMs = this.ttlMs(r.ttlSeconds, this.jwtMaxTtlMs, 'ttlSeconds');
    // The workload key is checked before anything is journalled or signed.
    let cnf;
    try {
      cnf = checkCnfJwk(r.publicKeyJwk).jwk;
    } catch (e) {
      if (e instanceof WitSvidError) throw new CaIssueError('publicKeyJwk', e.message);
      throw e;
    }
    const { value: minted, slot, issuedAt, expiresAt } = await this.signWithActiveJwt(ttlMs, (signer, times) => mintWitSvid({ signer, sub: id, cnfJwk: cnf, ...times }));
    return { token: minted.token, spiffeId: id.toString(), kid: minted.kid, jti: minted.jti, issuedAt, expiresAt, keyLabel: slot.label };
  }

  /**
   * Signs a JWT- or WIT-SVID with the active JWT key: `exp` is clamped to
   * `ttlMs` and to the key's end of life, and the token is returned only once
   * the journal holds the key's new bound (the write overlaps the signature).
   */
  private async signWithActiveJwt<T>(
    ttlMs: number,
    sign: (signer: Signer, times: { readonly issuedAt: Date; readonly expiresAt: Date }) => Promise<T>,
  ): Promise<{ value: T; slot: JwtSlot; issuedAt: Date; expiresAt: Date }> {
    const slot = this.activeJwt;
    const now = this.now();
    if (!slot || slot.notAfterMs <= now) throw new CaStateError('no active JWT key (rotation has not run or the key expired)');
    const issuedAtMs = floorSecond(now);
    const expiresAtMs = Math.min(floorSecond(now + ttlMs), slot.notAfterMs);
    const durable = CertificateAuthority.settled(this.noteIssued(slot, expiresAtMs, this.jwtMaxTtlMs));
    const value = await sign(slot.signer, { issuedAt: new Date(issuedAtMs), expiresAt: new Date(expiresAtMs) });
    const failed = durable && (await durable);
    if (failed) throw failed;
    return { value, slot, issuedAt: new Date(issuedAtMs), expiresAt: new Date(expiresAtMs) };
  }

  // ---- bundle --------------------------------------------------------------

  /** X.509 authorities (keel's CA certificates, or the upstream roots) and JWT authorities, prepared ones included. */
  bundle(): TrustBundle {
    const x509 = this.upstream ? [...this.upstream.anchors] : this.x509.map((s) => s.cert.x509);
    return TrustBundle.create({
      trustDomain: this.trustDomain,
      x509Authorities: x509,
      jwtAuthorities: this.jwt.map((s) => [s.kid, s.signer.publicKey] as const),
      sequence: this.sequence,
    });
  }

  /** Called with the new bundle after every change; returns the unsubscribe function. */
  onBundleChange(listener: (b: TrustBundle) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Called after another X.509 CA key became active (the bundle itself may not have changed); returns the unsubscribe function. */
  onActivation(listener: () => void): () => void {
    this.activationListeners.add(listener);
    return () => this.activationListeners.delete(listener);
  }

  /** Every key the CA holds, with its state: for the admin API and tests. */
  status(): AuthorityStatus[] {
    return [...this.x509.map((s) => slotStatus('x509', s)), ...this.jwt.map((s) => slotStatus('jwt', s))];
  }

  /** Whether both kinds have an active, unexpired key (for /ready). */
  ready(): boolean {
    if (this.closed) return false;
    const now = this.now();
    return Boolean(this.activeX509 && this.activeX509.notAfterMs > now && this.activeJwt && this.activeJwt.notAfterMs > now);
  }

  /**
   * Whether the key store can sign with the active keys right now (logged in,
   * token present, keys there), when it can tell; signs nothing. For /ready.
   */
  async canSign(): Promise<boolean> {
    if (!this.ready()) return false;
    const keys = [this.activeX509!.key, this.activeJwt!.key];
    return this.keys.canSign ? this.keys.canSign(keys) : true;
  }

  /** The active CA certificate (DER), which signs new X.509-SVIDs. */
  activeCaCertificate(): Buffer | undefined {
    return this.activeX509?.cert.der;
  }

  // ---- rotation ------------------------------------------------------------

  /** Runs every rotation step due at `nowMs` (default: the clock). Calls are serialised. */
  rotate(nowMs?: number): Promise<void> {
    const run = this.rotating.then(() => this.rotateNow(nowMs ?? this.now()));
    this.rotating = run.catch(() => undefined);
    return run;
  }

  private bundleKey(): string {
    const x = this.upstream ? 'upstream' : this.x509.map((s) => s.index).join(',');
    return `${x}|${this.jwt.map((s) => s.index).join(',')}`;
  }

  private async rotateNow(nowMs: number): Promise<void> {
    if (this.closed) return;
    try {
      for (const kind of ['x509', 'jwt'] as const) {
        const rules = this.rules[kind];
        // Each pass either changes a state or stops; the bound only guards against a bug looping.
        for (let i = 0; i < 16; i++) {
          const slots: Slot[] = kind === 'x509' ? this.x509 : this.jwt;
          const step = nextRotationStep(slots, nowMs, this.schedule, rules);
          if (!step) break;
          if (step.kind === 'prepare') {
            await (kind === 'x509' ? this.prepareX509Key(nowMs) : this.prepareJwtKey(nowMs));
          } else if (step.kind === 'activate') {
            for (const s of slots) if (s.state === 'active') s.state = 'old';
            const next = slots.find((s) => s.index === step.index);
            if (next) next.state = 'active';
            if (step.underPublishedMs !== undefined && next) {
              this.warnOnce(`${kind}:${step.index}:forced`, `CA: activated ${next.label} after less than the minimum publication time, because the active key expired; agents that have not fetched the bundle since must recover it`, {
                key: next.label,
                publishedSeconds: Math.round((rules.minPublishMs - step.underPublishedMs) / 1000),
                minPublishSeconds: Math.round(rules.minPublishMs / 1000),
              });
            }
          } else {
            const gone = slots.find((s) => s.index === step.index);
            if (kind === 'x509') this.x509 = this.x509.filter((s) => s.index !== step.index);
            else this.jwt = this.jwt.filter((s) => s.index !== step.index);
            if (gone) this.doomed.push(gone.key);
          }
          this.refreshActive();
        }
        this.warnDeferred(kind, nowMs);
      }
    } finally {
      const key = this.bundleKey();
      if (key !== this.sequencedKey) {
        this.sequence++;
        this.sequencedKey = key;
      }
      // Throws when the store refuses the write: then nothing is announced or destroyed, and the next round retries.
      await this.persist();
      // Keys leave the HSM only once the journal no longer names them.
      const doomed = this.doomed;
      this.doomed = [];
      for (const k of doomed) {
        await this.keys.destroyKey(k).catch((e: unknown) => this.onError(e));
      }
      const active = this.activeX509?.cert.der;
      if (active && this.announcedActive && !active.equals(this.announcedActive)) {
        for (const l of this.activationListeners) {
          try {
            l();
          } catch (e) {
            this.onError(e);
          }
        }
      }
      this.announcedActive = active;
      if (key !== this.announcedKey) {
        this.announcedKey = key;
        const b = this.bundle();
        for (const l of this.listeners) {
          try {
            l(b);
          } catch (e) {
            this.onError(e);
          }
        }
      }
    }
  }

  private warnOnce(id: string, message: string, fields: Record<string, string | number>): void {
    if (this.warned.has(id)) return;
    this.warned.add(id);
    try {
      this.onWarning(message, fields);
    } catch (e) {
      this.onError(e);
    }
  }

  private warnDeferred(kind: 'x509' | 'jwt', nowMs: number): void {
    const slots: Slot[] = kind === 'x509' ? this.x509 : this.jwt;
    const maxTtl = kind === 'x509' ? this.x509MaxTtlMs : this.jwtMaxTtlMs;
    const d = deferredActivation(slots, nowMs, this.schedule, this.rules[kind], maxTtl);
    if (!d) return;
    const label = slots.find((s) => s.index === d.index)?.label ?? String(d.index);
    const fields = { key: label, publishedSeconds: Math.round(d.publishedMs / 1000), minPublishSeconds: Math.round(this.rules[kind].minPublishMs / 1000) };
    this.warnOnce(`${kind}:${d.index}:deferred`, `CA: activation of ${label} is due but held back until it has been published long enough; the active key signs meanwhile`, fields);
    if (!d.fullTtl) this.warnOnce(`${kind}:${d.index}:short`, `CA: activation of ${label} still held back; SVIDs are cut short at the end of the active key`, fields);
  }

  private async newKey(kind: 'x509-ca' | 'jwt', type: CaKeyType): Promise<{ index: number; key: CaKeyHandle }> {
    const counter = kind === 'x509-ca' ? 'x509' : 'jwt';
    const index = this.nextIndex[counter]++;
    // The index is journaled before the key exists, so a label is never used twice.
    await this.persist();
    const key = await this.keys.generateKey({ label: `${this.prefix}-${kind}-${index}`, id: randomBytes(16), type });
    return { index, key };
  }

  private async prepareX509Key(nowMs: number): Promise<void> {
    const { index, key } = await this.newKey('x509-ca', this.x509KeyType);
    let slot: X509Slot;
    try {
      const signer = this.keys.signer(key, algorithmForKeyType(key.type));
      const notBeforeMs = floorSecond(nowMs - this.backdateMs);
      let notAfterMs = floorSecond(nowMs + this.caTtlMs);
      if (this.upstream) notAfterMs = Math.min(notAfterMs, this.upstream.cert.notAfterMs);
      const subject = { organization: this.organization, commonName: `${this.trustDomain.name} X.509 CA ${index}` };
      const der = await buildCaCertificate({
        trustDomain: this.trustDomain,
        publicKey: key.publicKey,
        subject,
        serial: randomSerial(),
        notBeforeMs,
        notAfterMs,
        issuer: this.upstream
          ? { nameDer: this.upstream.cert.subjectNameDer, keyId: this.upstream.cert.subjectKeyId, signer: this.upstream.signer }
          : { selfSigned: signer },
      });
      const cert = readCaCertificate(der);
      if (this.upstream && !cert.x509.verify(this.upstream.cert.publicKey)) throw new CaStateError('the upstream signature on the new CA certificate does not verify');
      const endorsement = this.upstream ? undefined : await this.endorse(key.publicKey, subject, notBeforeMs, notAfterMs, nowMs);
      slot = this.x509Slot(index, 'prepared', key, cert, null, endorsement ? [checkedEndorsement(endorsement, cert, key.label)] : []);
    } catch (e) {
      await this.keys.destroyKey(key).catch(() => undefined);
      throw e;
    }
    slot.publishedSinceMs = nowMs;
    this.x509.push(slot);
    await this.persist();
  }

  /**
   * The rollover certificate of a new CA key: its CA certificate's subject
   * and key, signed by the active key, valid only while both are. A relying
   * party that has only the active key's certificate (an agent that was away
   * during the rotation) can then accept the new CA from the server's TLS
   * chain and fetch the bundle (endorsedAuthorities in spiffe/x509-svid.ts).
   * None when no active key can still sign.
   */
  private async endorse(publicKey: KeyObject, subject: { organization: string; commonName: string }, notBeforeMs: number, notAfterMs: number, nowMs: number): Promise<Buffer | undefined> {
    const by = this.activeX509;
    if (!by || by.notAfterMs <= nowMs) return undefined;
    return buildCaCertificate({
      trustDomain: this.trustDomain,
      publicKey,
      subject,
      serial: randomSerial(),
      notBeforeMs: Math.max(notBeforeMs, by.notBeforeMs),
      notAfterMs: Math.min(notAfterMs, by.notAfterMs),
      issuer: { nameDer: by.cert.subjectNameDer, keyId: by.cert.subjectKeyId, signer: by.signer },
    });
  }

  /**
   * What follows the server's own TLS leaf after keel's chain: the active CA's
   * rollover certificates still valid at this time (DER). Empty with an
   * upstream CA (the roots relying parties hold do not change) or when the
   * active key was the first.
   */
  rolloverCertificates(): Buffer[] {
    const slot = this.activeX509;
    if (!slot) return [];
    const now = this.now();
    return slot.endorsements.filter((d) => {
      const c = new X509Certificate(d);
      return Date.parse(c.validTo) > now;
    });
  }

  private async prepareJwtKey(nowMs: number): Promise<void> {
    const { index, key } = await this.newKey('jwt', this.jwtKeyType);
    const kid = key.id.toString('base64url');
    const slot = this.jwtSlot(index, 'prepared', key, kid, floorSecond(nowMs), floorSecond(nowMs + this.jwtKeyTtlMs), null);
    slot.publishedSinceMs = nowMs;
    this.jwt.push(slot);
    await this.persist();
  }

  /** Stops the timer and waits for rotation and journal writes under way. The key store stays open (its owner closes it). */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.rotating;
    this.closed = true;
    if (this.saving) await this.saving.catch(() => undefined);
  }
}

