/**
 * `npm run bench`: runs every benchmark in bench/ one after another (so they
 * do not compete for the cores) and prints one table of every figure, with
 * the machine it ran on. Each script's own report goes to stderr as it runs.
 * `npm run bench -- hsm svid` runs only the scripts whose names match.
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

const cells = (line: string): string[] => line.trim().replace(/^\||\|$/g, '').split('|').map((c) => c.trim());
const isRule = (line: string): boolean => /^\|?\s*:?-{3,}/.test(line.trim());

/** Every data row of every markdown table in `text`, as (measurement, value) pairs. */
export function figures(text: string): [string, string][] {
  const out: [string, string][] = [];
  const lines = text.split('\n');
  for (let i = 0; i + 1 < lines.length; i++) {
    if (!lines[i]!.trim().startsWith('|') || !isRule(lines[i + 1]!)) continue;
    const head = cells(lines[i]!);
    let j = i + 2;
    for (; j < lines.length && lines[j]!.trim().startsWith('|'); j++) {
      const row = cells(lines[j]!);
      if (head.length === 3 && /^unit$/i.test(head[2]!)) out.push([row[0]!, `${row[1]} ${row[2]}`.trim()]);
      else if (head.length === 2) out.push([row[0]!, row[1]!]);
      else for (let k = 1; k < row.length; k++) out.push([`${row[0]} — ${head[k] ?? ''}`, row[k]!]);
    }
    i = j - 1;
  }
  return out;
}

const rows: [string, string, string][] = [];
let failed = 0;
for (const s of scripts) {
  const name = s.replace(/\.ts$/, '');
  process.stderr.write(`\n=== ${name} ===\n`);
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', join(here, s)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '8' },
    maxBuffer: 64 * 1024 * 1024,
  });
  const text = r.stdout?.toString() ?? '';
  process.stderr.write(text);
  if (r.status !== 0) {
    failed++;
    rows.push([name, 'FAILED', `exit status ${r.status}`]);
    continue;
  }
  for (const [m, v] of figures(text)) rows.push([name, m, v]);
}

const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`# keel benchmarks\n`);
console.log(`${cpus().length} × ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${release()}, Node ${process.version}, ${new Date().toISOString()}\n`);
console.log('| benchmark | measurement | value |');
console.log('| --- | --- | ---: |');
for (const [b, m, v] of rows) console.log(`| ${b} | ${m.replace(/\|/g, '/')} | ${v.replace(/\|/g, '/')} |`);
process.exit(failed ? 1 : 0);
