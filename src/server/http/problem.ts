/**
 * RFC 9457 problem details: every error of the HTTP API is one JSON object
 * with type, title, status and detail (plus `errors` for validation), sent as
 * application/problem+json. Store errors map to their HTTP meaning here.
 */
import { ConflictError, InvalidRecordError, NodeBannedError, NodeNotActiveError, NotFoundError, StoreError } from '../store/index.js';
import { BundleError, InvalidSpiffeIdError, InvalidTrustDomainError } from '../../spiffe/index.js';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** One thing wrong with the input: a JSON pointer into the body (or the query/path parameter name) and why. */
export interface FieldError {
  readonly path: string;
  readonly message: string;
}

export type ProblemSlug =
  | 'validation'
  | 'not-found'
  | 'conflict'
  | 'unauthenticated'
  | 'forbidden'
  | 'not-ready'
  | 'unsupported-media-type'
  | 'payload-too-large'
  | 'bad-request'
  | 'method-not-allowed'
  | 'internal';

const TITLES: Record<ProblemSlug, string> = {
  validation: 'Invalid request',
  'not-found': 'Not found',
  conflict: 'Conflict',
  unauthenticated: 'Authentication required',
  forbidden: 'Forbidden',
  'not-ready': 'Not ready',
  'unsupported-media-type': 'Unsupported media type',
  'payload-too-large': 'Payload too large',
  'bad-request': 'Bad request',
  'method-not-allowed': 'Method not allowed',
  internal: 'Internal server error',
};

export interface ProblemBody {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail?: string;
  readonly errors?: readonly FieldError[];
  readonly [extension: string]: unknown;
}

/** A URN rather than a URL: the types are stable names, not documents to fetch. */
export const problemType = (slug: ProblemSlug): string => `urn:keel:problem:${slug}`;

/** Thrown by handlers; the error handler turns it into the response. */
export class ProblemError extends Error {
  override name = 'ProblemError';
  constructor(
    readonly status: number,
    readonly slug: ProblemSlug,
    readonly detail: string,
    readonly extensions: { readonly errors?: readonly FieldError[]; readonly [k: string]: unknown } = {},
  ) {
    super(detail);
  }

  body(): ProblemBody {
    return { type: problemType(this.slug), title: TITLES[this.slug], status: this.status, detail: this.detail, ...this.extensions };
  }
}

export const validationProblem = (errors: readonly FieldError[], detail = 'the request does not match the schema'): ProblemError =>
  new ProblemError(400, 'validation', detail, { errors });

/** The problem a store (or SPIFFE parsing) error means; undefined for anything unexpected. */
export function problemFromError(err: unknown): ProblemError | undefined {
  if (err instanceof ProblemError) return err;
  if (err instanceof NotFoundError) return new ProblemError(404, 'not-found', err.message, { kind: err.kind });
  if (err instanceof ConflictError) {
    return new ProblemError(409, 'conflict', err.message, err.existingId !== undefined ? { existingId: err.existingId } : {});
  }
  if (err instanceof InvalidRecordError) return validationProblem([{ path: `/${err.field}`, message: err.reason }], err.message);
  if (err instanceof NodeBannedError || err instanceof NodeNotActiveError) return new ProblemError(409, 'conflict', err.message);
  if (err instanceof BundleError) return validationProblem([{ path: '', message: err.message }], `not a valid SPIFFE bundle: ${err.message}`);
  if (err instanceof InvalidSpiffeIdError || err instanceof InvalidTrustDomainError) return new ProblemError(400, 'bad-request', err.message);
  return undefined;
}

/** A store error inside a batch item, as the batch response reports it. */
export function batchItemError(err: StoreError): { status: number; title: string; detail: string; errors?: FieldError[] } {
  const p = problemFromError(err) ?? new ProblemError(500, 'internal', 'internal error');
  const body = p.body();
  return { status: body.status, title: body.title, detail: body.detail ?? '', ...(body.errors ? { errors: [...body.errors] } : {}) };
}

/** Maps fastify's own client errors (bad JSON, body too large, media type) to problems. */
export function problemFromFastifyError(err: { statusCode?: number; code?: string; message: string }): ProblemError | undefined {
  const status = err.statusCode;
  if (status === undefined || status < 400 || status >= 500) return undefined;
  if (status === 413) return new ProblemError(413, 'payload-too-large', err.message);
  if (status === 415) return new ProblemError(415, 'unsupported-media-type', err.message);
  if (status === 405) return new ProblemError(405, 'method-not-allowed', err.message);
  if (status === 404) return new ProblemError(404, 'not-found', err.message);
  return new ProblemError(status, 'bad-request', err.message);
}
