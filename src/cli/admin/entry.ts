/** `keel entry create|list|show|update|delete`. */
import { readFileSync } from 'node:fs';
import type { Command } from '../command.js';
import { CliError, parseFlags } from '../command.js';
import type { EntryJson } from '../../server/http/wire.js';
import { clientFor, COMMON_FLAGS, COMMON_USAGE, enc, required, serverIdFor, ttlFlag, usageError } from './common.js';
import { formatEntries, formatEntry } from './format.js';
import { processIo, type CliIo } from './io.js';

const ENTRY_FIELDS = {
  'spiffe-id': { type: 'string' },
  'parent-id': { type: 'string' },
  node: { type: 'boolean' },
  selector: { type: 'string', multiple: true },
  'x509-svid-ttl': { type: 'string' },
  'jwt-svid-ttl': { type: 'string' },
  dns: { type: 'string', multiple: true },
  'federates-with': { type: 'string', multiple: true },
  admin: { type: 'boolean' },
  downstream: { type: 'boolean' },
  hint: { type: 'string' },
  'expires-at': { type: 'string' },
} as const;

function parentOf(v: { 'parent-id'?: string | undefined; node?: boolean | undefined }, spiffeId: string | undefined): string | undefined {
  if (v.node && v['parent-id'] !== undefined) throw usageError('give --node or --parent-id, not both');
  if (v.node) return serverIdFor(required(spiffeId, 'spiffe-id'));
  return v['parent-id'];
}

function expiresAt(text: string): string {
  const d = new Date(text);
  if (Number.isNaN(d.getTime()) || !/^\d{4}-\d{2}-\d{2}T/.test(text)) throw usageError(`--expires-at: expected an RFC 3339 time like 2030-01-01T00:00:00Z, got ${JSON.stringify(text)}`);
  return d.toISOString();
}

function printEntry(io: CliIo, json: boolean, e: EntryJson): void {
  io.out(json ? JSON.stringify(e, null, 2) : formatEntry(e));
}

export function entryCommands(io: CliIo = processIo): Record<'create' | 'list' | 'show' | 'update' | 'delete', Command> {
  const create: Command = {
    usage: `--spiffe-id ID (--parent-id ID | --node) --selector TYPE:VALUE... [--x509-svid-ttl 1h] [--jwt-svid-ttl 5m] [--dns NAME]... [--federates-with TD]... [--admin] [--downstream] [--hint TEXT] [--entry-id UUID] [--expires-at TIME] | --data FILE ${COMMON_USAGE}`,
    description: 'Creates a registration entry (or, with --data, every entry of a JSON file {"entries": [...]}, all or none). --node makes a node group: an entry parented to the server, whose selectors are node selectors.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, ...ENTRY_FIELDS, 'entry-id': { type: 'string' }, data: { type: 'string' } });
      const client = clientFor(v);
      if (v.data !== undefined) {
        let body: unknown;
        try {
          body = JSON.parse(readFileSync(v.data, 'utf8'));
        } catch (e) {
          throw new CliError(`--data ${v.data}: ${(e as Error).message}`);
        }
        const r = await client.json<{ results: { entry: EntryJson }[] }>('POST', '/v1/entries/batch', body);
        const entries = r.results.map((x) => x.entry);
        io.out(v.json ? JSON.stringify({ entries }, null, 2) : entries.map(formatEntry).join('\n'));
        return 0;
      }
      const spiffeId = required(v['spiffe-id'], 'spiffe-id');
      const parentId = required(parentOf(v, spiffeId), 'parent-id (or --node)');
      if (!v.selector?.length) throw usageError('at least one --selector is required');
      const body = {
        ...(v['entry-id'] !== undefined ? { id: v['entry-id'] } : {}),
        spiffeId,
        parentId,
        selectors: v.selector,
        ...(v['x509-svid-ttl'] !== undefined ? { x509SvidTtl: ttlFlag(v['x509-svid-ttl'], 'x509-svid-ttl') } : {}),
        ...(v['jwt-svid-ttl'] !== undefined ? { jwtSvidTtl: ttlFlag(v['jwt-svid-ttl'], 'jwt-svid-ttl') } : {}),
        ...(v.dns?.length ? { dnsNames: v.dns } : {}),
        ...(v['federates-with']?.length ? { federatesWith: v['federates-with'] } : {}),
        ...(v.admin ? { admin: true } : {}),
        ...(v.downstream ? { downstream: true } : {}),
        ...(v.hint !== undefined ? { hint: v.hint } : {}),
        ...(v['expires-at'] !== undefined ? { expiresAt: expiresAt(v['expires-at']) } : {}),
      };
      printEntry(io, v.json ?? false, await client.json<EntryJson>('POST', '/v1/entries', body));
      return 0;
    },
  };

  const list: Command = {
    usage: `[--parent-id ID] [--spiffe-id ID] [--selector TYPE:VALUE]... [--match superset|exact|subset|any] [--federates-with TD]... [--hint TEXT] ${COMMON_USAGE}`,
    description: 'Lists registration entries matching every filter given (all entries without filters). --match says how an entry\'s selectors must relate to the ones given (default superset: the entry has all of them).',
    async run(argv) {
      const { values: v } = parseFlags(argv, {
        ...COMMON_FLAGS,
        'parent-id': { type: 'string' },
        'spiffe-id': { type: 'string' },
        selector: { type: 'string', multiple: true },
        match: { type: 'string' },
        'federates-with': { type: 'string', multiple: true },
        hint: { type: 'string' },
      });
      if (v.match !== undefined && !['exact', 'subset', 'superset', 'any'].includes(v.match)) throw usageError(`--match must be exact, subset, superset or any, got ${JSON.stringify(v.match)}`);
      const q = new URLSearchParams();
      if (v['parent-id']) q.set('parentId', v['parent-id']);
      if (v['spiffe-id']) q.set('spiffeId', v['spiffe-id']);
      for (const s of v.selector ?? []) q.append('selector', s);
      if (v.match) {
        q.set('selectorMatch', v.match);
        q.set('federatesWithMatch', v.match);
      }
      for (const f of v['federates-with'] ?? []) q.append('federatesWith', f);
      if (v.hint !== undefined) q.set('hint', v.hint);
      q.set('limit', '1000');
      const client = clientFor(v);
      const entries: EntryJson[] = [];
      for (let cursor: string | undefined, first = true; first || cursor !== undefined; first = false) {
        if (cursor !== undefined) q.set('cursor', cursor);
        const page = await client.json<{ entries: EntryJson[]; nextCursor?: string }>('GET', `/v1/entries?${q}`);
        entries.push(...page.entries);
        cursor = page.nextCursor;
      }
      io.out(v.json ? JSON.stringify({ entries }, null, 2) : formatEntries(entries));
      return 0;
    },
  };

  const show: Command = {
    usage: `--entry-id UUID ${COMMON_USAGE}`,
    description: 'Shows one registration entry.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, 'entry-id': { type: 'string' } });
      const id = required(v['entry-id'], 'entry-id');
      printEntry(io, v.json ?? false, await clientFor(v).json<EntryJson>('GET', `/v1/entries/${enc(id)}`));
      return 0;
    },
  };

  const update: Command = {
    usage: `--entry-id UUID [--spiffe-id ID] [--parent-id ID | --node] [--selector TYPE:VALUE]... [--x509-svid-ttl 1h|default] [--jwt-svid-ttl 5m|default] [--dns NAME]... [--federates-with TD]... [--admin | --no-admin] [--downstream | --no-downstream] [--hint TEXT] [--expires-at TIME|never] ${COMMON_USAGE}`,
    description: 'Changes the fields given and leaves the rest. Repeated flags (--selector, --dns, --federates-with) replace the whole list; "default" resets a TTL, an empty --hint clears it.',
    async run(argv) {
      const { values: v } = parseFlags(argv, {
        ...COMMON_FLAGS,
        ...ENTRY_FIELDS,
        'entry-id': { type: 'string' },
        'no-admin': { type: 'boolean' },
        'no-downstream': { type: 'boolean' },
      });
      const id = required(v['entry-id'], 'entry-id');
      if (v.admin && v['no-admin']) throw usageError('give --admin or --no-admin, not both');
      if (v.downstream && v['no-downstream']) throw usageError('give --downstream or --no-downstream, not both');
      const client = clientFor(v);
      let spiffeId = v['spiffe-id'];
      if (v.node && spiffeId === undefined) spiffeId = (await client.json<EntryJson>('GET', `/v1/entries/${enc(id)}`)).spiffeId;
      const parentId = parentOf(v, spiffeId);
      const ttl = (t: string | undefined, flag: string) => (t === undefined ? undefined : t === 'default' ? null : ttlFlag(t, flag));
      const changes: Record<string, unknown> = {
        spiffeId: v['spiffe-id'],
        parentId,
        selectors: v.selector,
        x509SvidTtl: ttl(v['x509-svid-ttl'], 'x509-svid-ttl'),
        jwtSvidTtl: ttl(v['jwt-svid-ttl'], 'jwt-svid-ttl'),
        dnsNames: v.dns,
        federatesWith: v['federates-with'],
        admin: v.admin ? true : v['no-admin'] ? false : undefined,
        downstream: v.downstream ? true : v['no-downstream'] ? false : undefined,
        hint: v.hint === undefined ? undefined : v.hint === '' ? null : v.hint,
        expiresAt: v['expires-at'] === undefined ? undefined : v['expires-at'] === 'never' ? null : expiresAt(v['expires-at']),
      };
      const body = Object.fromEntries(Object.entries(changes).filter(([, x]) => x !== undefined));
      if (Object.keys(body).length === 0) throw usageError('nothing to change: give at least one field flag');
      printEntry(io, v.json ?? false, await client.json<EntryJson>('PATCH', `/v1/entries/${enc(id)}`, body));
      return 0;
    },
  };

  const del: Command = {
    usage: `--entry-id UUID... ${COMMON_USAGE}`,
    description: 'Deletes registration entries; with several --entry-id, all or none.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, 'entry-id': { type: 'string', multiple: true } });
      const ids = v['entry-id'] ?? [];
      if (ids.length === 0) throw usageError('--entry-id is required');
      const client = clientFor(v);
      const deleted: EntryJson[] =
        ids.length === 1
          ? [await client.json<EntryJson>('DELETE', `/v1/entries/${enc(ids[0]!)}`)]
          : (await client.json<{ results: { entry: EntryJson }[] }>('POST', '/v1/entries/batch-delete', { ids })).results.map((r) => r.entry);
      io.out(v.json ? JSON.stringify({ entries: deleted }, null, 2) : deleted.map((e) => `Deleted entry with ID: ${e.id}`).join('\n'));
      return 0;
    },
  };

  return { create, list, show, update, delete: del };
}
