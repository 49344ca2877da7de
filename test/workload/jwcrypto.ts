/**
 * WIT-SVIDs checked by an independent JOSE implementation: Debian's
 * python3-jwcrypto, run on fixtures/jwcrypto_verify_wit.py with the WIT
 * bundle and the SVIDs as the Workload API served them.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';

/** Debian's interpreter, where python3-jwcrypto is installed (a pyenv python3 on PATH would not have it). */
const PYTHON = '/usr/bin/python3';
const VERIFY = join(import.meta.dirname, 'fixtures', 'jwcrypto_verify_wit.py');

export interface JwcryptoResult {
  spiffe_id: string;
  verified: boolean;
  error?: string;
  typ?: string;
  kid?: string;
  alg?: string;
  sub?: string;
  exp_in_future?: boolean;
  cnf_alg?: string;
  key_is_private?: boolean;
  pop_verified?: boolean;
}

export function jwcryptoVerifyWit(bundle: string, svids: { spiffe_id: string; wit_svid: string; wit_svid_key: string }[]): Promise<JwcryptoResult[]> {
  return new Promise((resolve, reject) => {
    const child = execFile(PYTHON, [VERIFY], { timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout) as JwcryptoResult[])));
    child.stdin!.end(JSON.stringify({ bundle, svids }));
  });
}

export interface WitSvidResponse {
  svids: { spiffe_id: string; wit_svid: string; wit_svid_key: string; hint: string }[];
}
export interface WitBundlesResponse {
  bundles: Record<string, string>;
}
