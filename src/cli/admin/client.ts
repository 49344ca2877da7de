/**
 * A client of the keel server's admin API over its local Unix socket. Errors
 * come back as the server's problem details, turned into CliErrors that read
 * well on a terminal.
 */
import { request } from 'node:http';
import { CliError } from '../command.js';

/** Where the server puts its admin socket unless the config says otherwise (as SPIRE's /tmp/spire-server/private/api.sock). */
export const DEFAULT_ADMIN_SOCKET = '/tmp/keel-server/private/admin.sock';

/** Answers larger than this are refused: the admin API pages its lists well below it. */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

export interface Problem {
  readonly type?: string;
  readonly title?: string;
  readonly status?: number;
  readonly detail?: string;
  readonly errors?: readonly { readonly path: string; readonly message: string }[];
}

/** The server answered with an error (a problem details document). */
export class AdminApiError extends CliError {
  constructor(
    readonly status: number,
    readonly problem: Problem,
  ) {
    const lines = [`${problem.title ?? `HTTP ${status}`}: ${problem.detail ?? ''}`.replace(/: $/, '')];
    for (const e of problem.errors ?? []) lines.push(`  ${e.path || '(body)'}: ${e.message}`);
    super(lines.join('\n'), 1);
    // CliError's name is a literal type; the instance still says what it is.
    Object.defineProperty(this, 'name', { value: 'AdminApiError' });
  }
}

export interface AdminResponse {
  readonly status: number;
  readonly contentType: string;
  readonly text: string;
}

export class AdminClient {
  constructor(readonly socketPath: string) {}

  /** Sends a request; a 4xx/5xx answer throws AdminApiError, an unreachable server a CliError. */
  async send(method: string, path: string, body?: unknown): Promise<AdminResponse> {
    const data = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const headers: Record<string, string> = { accept: 'application/json, application/problem+json' };
    if (data !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(data));
    }
    const res = await new Promise<AdminResponse>((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, method, path, headers }, (r) => {
        const chunks: Buffer[] = [];
        let size = 0;
        r.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy(new CliError(`the server's answer is larger than ${MAX_RESPONSE_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        r.on('error', reject);
        r.on('end', () => resolve({ status: r.statusCode ?? 0, contentType: String(r.headers['content-type'] ?? ''), text: Buffer.concat(chunks).toString('utf8') }));
      });
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (e instanceof CliError) return reject(e);
        const why = e.code === 'ENOENT' ? 'no socket there (is the server running? see --socket)' : e.code === 'EACCES' ? 'permission denied (run as the server\'s user)' : e.code === 'ECONNREFUSED' ? 'connection refused (is the server running?)' : e.message;
        reject(new CliError(`cannot reach the keel server at ${this.socketPath}: ${why}`));
      });
      req.end(data);
    });
    if (res.status >= 400) {
      let problem: Problem = { detail: res.text.slice(0, 500) };
      try {
        problem = JSON.parse(res.text) as Problem;
      } catch {
        // not JSON: keep the text
      }
      throw new AdminApiError(res.status, problem);
    }
    return res;
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const r = await this.send(method, path, body);
    if (r.status === 204 || r.text === '') return undefined as T;
    try {
      return JSON.parse(r.text) as T;
    } catch {
      throw new CliError(`the server answered ${method} ${path} with something that is not JSON`);
    }
  }
}
