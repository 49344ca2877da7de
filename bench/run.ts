/**
 * Runs every benchmark in bench/ (each a standalone script that prints a
 * markdown table) one after another, so they do not compete for the two
 * cores, and prints one combined report with the machine it ran on.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { cpus, totalmem, release } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const scripts = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();

const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`# keel benchmarks\n`);
console.log(`Machine: ${cpus().length} × ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${release()}, Node ${process.version}`);
console.log(`Date: ${new Date().toISOString()}\n`);

let failed = 0;
for (const s of scripts) {
  console.log(`## ${s.replace(/\.ts$/, '')}\n`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(here, s)], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '8' },
  });
  if (r.status !== 0) {
    failed++;
    console.log(`\n(${s} failed with status ${r.status})`);
  }
  console.log('');
}
process.exit(failed ? 1 : 0);
