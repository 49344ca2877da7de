/**
 * The HSM PIN file unlocks the CA's keys: readable by group or others, it is
 * refused, with the file, its mode and the chmod that fixes it (issue 12).
 * No token is needed: the check comes before the module is touched.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm, PinSourceError, readPinSync } from '../../src/hsm/index.js';

const PIN = 'pin-0123456789';
let dir: string;
let n = 0;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keel-pin-mode-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pinFile(mode: number): string {
  const p = join(dir, `pin-${n++}`);
  writeFileSync(p, `${PIN}\n`);
  chmodSync(p, mode);
  return p;
}

function refusal(fn: () => unknown): PinSourceError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(PinSourceError);
    return e as PinSourceError;
  }
  throw new Error('the PIN file was accepted');
}

describe('PIN file mode', () => {
  it('refuses a 0644 PIN file, naming the file, the mode and the chmod; never the PIN', () => {
    const file = pinFile(0o644);
    const e = refusal(() => readPinSync({ file }));
    expect(e.message).toContain(file);
    expect(e.message).toContain('0644');
    expect(e.message).toContain(`chmod 600 ${file}`);
    expect(e.message).not.toContain(PIN);
  });

  it('refuses group-readable 0640 and group-writable 0620 as well', () => {
    expect(refusal(() => readPinSync({ file: pinFile(0o640) })).message).toContain('0640');
    expect(refusal(() => readPinSync({ file: pinFile(0o620) })).message).toContain('0620');
  });

  it('reads a 0600 (and 0400) PIN file', () => {
    expect(readPinSync({ file: pinFile(0o600) })).toBe(PIN);
    expect(readPinSync({ file: pinFile(0o400) })).toBe(PIN);
  });

  it('Hsm.open refuses a 0644 PIN file before loading the module', async () => {
    const file = pinFile(0o644);
    // The module does not exist: reaching it would fail otherwise than with PinSourceError.
    const opened = Hsm.open({ module: join(dir, 'no-such-module.so'), token: { label: 'keel' }, pin: { file } });
    await expect(opened).rejects.toThrow(PinSourceError);
    await expect(opened).rejects.toThrow(/mode 0644/);
  });
});
