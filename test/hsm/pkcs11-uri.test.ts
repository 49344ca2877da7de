import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hsmConfigFromPkcs11Uri, InvalidPkcs11UriError, parsePkcs11Uri } from '../../src/hsm/index.js';

describe('parsePkcs11Uri (RFC 7512)', () => {
  it('parses the keel form with percent-encoded id and query attributes', () => {
    const u = parsePkcs11Uri('pkcs11:token=keel;object=x509-ca;id=%01%ff;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keel/pin');
    expect(u).toEqual({
      token: 'keel',
      object: 'x509-ca',
      id: Buffer.from([1, 255]),
      type: 'private',
      modulePath: '/usr/lib/softhsm/libsofthsm2.so',
      pinSource: 'file:/etc/keel/pin',
    });
  });

  it('parses the RFC examples: encoded spaces and UTF-8, slot-id, library-version, vendor attributes', () => {
    expect(parsePkcs11Uri('pkcs11:').token).toBeUndefined();
    expect(parsePkcs11Uri('pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.').manufacturer).toBe('Snake Oil, Inc.');
    expect(parsePkcs11Uri('pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1').token).toBe('Name with a small A with acute: á');
    expect(parsePkcs11Uri('pkcs11:slot-id=7;library-version=3.1').slotId).toBe(7);
    expect(parsePkcs11Uri('pkcs11:library-version=3').libraryVersion).toEqual({ major: 3, minor: 0 });
    const v = parsePkcs11Uri('pkcs11:token=my-token;vendor-aaa=value-a?pin-source=file:/etc/token&vendor-bbb=value-b');
    expect(v.vendor).toEqual([
      { name: 'vendor-aaa', value: 'value-a', inQuery: false },
      { name: 'vendor-bbb', value: 'value-b', inQuery: true },
    ]);
  });

  it.each([
    ['http:token=keel', /scheme/],
    ['pkcs11:token=keel;token=other', /"token" appears more than once/],
    ['pkcs11:objet=x', /unknown path attribute "objet"/],
    ['pkcs11:token=keel?module=x', /unknown query attribute "module"/],
    ['pkcs11:token=ke%2', /percent-encoding/],
    ['pkcs11:token=ke%zz', /percent-encoding/],
    ['pkcs11:token=a b', /grammar/],
    ['pkcs11:token=%ff%fe', /UTF-8/],
    ['pkcs11:type=key', /"type"/],
    ['pkcs11:slot-id=-1', /slot-id/],
    ['pkcs11:token', /name=value/],
    ['pkcs11:token=', /empty/],
    ['pkcs11:id=', /empty/],
    ['pkcs11:token=k?module-path=lib.so', /absolute/],
    ['pkcs11:token=k?module-path=/a&module-path=/b', /more than once/],
    ['pkcs11:token=k#frag', /fragment/],
  ])('%s → InvalidPkcs11UriError %s', (uri, reason) => {
    expect(() => parsePkcs11Uri(uri)).toThrow(InvalidPkcs11UriError);
    expect(() => parsePkcs11Uri(uri)).toThrow(reason);
  });

  it('refuses pin-value without echoing the PIN', () => {
    let err: unknown;
    try {
      parsePkcs11Uri('pkcs11:token=keel?pin-value=s3cr3t-PIN');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidPkcs11UriError);
    expect(String((err as Error).message) + (err as Error).stack).not.toContain('s3cr3t');
  });

  it('builds an HsmConfig and key selector; pin-source is a file or an environment variable', () => {
    const { config, key } = hsmConfigFromPkcs11Uri('pkcs11:token=keel;object=x509-ca;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keel/pin', { sessions: 8 });
    expect(config).toEqual({ module: '/usr/lib/softhsm/libsofthsm2.so', token: { label: 'keel' }, pin: { file: '/etc/keel/pin' }, sessions: 8 });
    expect(key).toEqual({ label: 'x509-ca', id: Buffer.from([1]) });
    expect(hsmConfigFromPkcs11Uri('pkcs11:serial=abc?module-path=/m.so&pin-source=env:KEEL_PIN').config.pin).toEqual({ env: 'KEEL_PIN' });
    expect(hsmConfigFromPkcs11Uri('pkcs11:serial=abc?module-path=/m.so&pin-source=file:///run/pin').config.pin).toEqual({ file: '/run/pin' });
    expect(() => hsmConfigFromPkcs11Uri('pkcs11:token=keel?pin-source=env:X')).toThrow(/module-path/);
    expect(() => hsmConfigFromPkcs11Uri('pkcs11:token=keel?module-path=/m.so')).toThrow(/pin-source/);
    expect(() => hsmConfigFromPkcs11Uri('pkcs11:token=keel?module-path=/m.so&pin-source=|cat%20/pin')).toThrow(InvalidPkcs11UriError);
    expect(() => hsmConfigFromPkcs11Uri('pkcs11:token=a;serial=b?module-path=/m.so&pin-source=env:X')).toThrow(/not both/);
  });

  it('never crashes or hangs on arbitrary input: a result or InvalidPkcs11UriError', () => {
    const uriChars = fc.constantFrom(...'pkcs11:token=keel;object=id%01?&/-._~[]@!$\'()*+,|#% aé\u0000'.split(''));
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: uriChars, maxLength: 300 }).map((s) => `pkcs11:${s}`)), (s) => {
        try {
          const u = parsePkcs11Uri(s);
          expect(typeof u).toBe('object');
        } catch (e) {
          expect(e).toBeInstanceOf(InvalidPkcs11UriError);
        }
      }),
      { numRuns: 3000 },
    );
    expect(() => parsePkcs11Uri(`pkcs11:token=${'a'.repeat(5000)}`)).toThrow(/longer than/);
  });

  it('round-trips any label and id through percent-encoding', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 32 }), fc.uint8Array({ minLength: 1, maxLength: 32 }), (label, id) => {
        const enc = encodeURIComponent(label).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16)}`);
        let u;
        try {
          u = parsePkcs11Uri(`pkcs11:token=${enc};id=${[...id].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')}`);
        } catch (e) {
          // Lone surrogates are not UTF-8: the only acceptable failure.
          expect(String((e as Error).message)).toMatch(/UTF-8|percent/);
          return;
        }
        expect(u.token).toBe(label);
        expect(u.id).toEqual(Buffer.from(id));
      }),
    );
  });
});
