/** `keel agent list|show|evict|ban|unban`. */
import type { Command } from '../command.js';
import { parseFlags } from '../command.js';
import type { AgentJson } from '../../server/http/wire.js';
import { clientFor, COMMON_FLAGS, COMMON_USAGE, enc, required, usageError } from './common.js';
import { formatAgent, formatAgents } from './format.js';
import { processIo, type CliIo } from './io.js';

export function agentCommands(io: CliIo = processIo): Record<'list' | 'show' | 'evict' | 'ban' | 'unban', Command> {
  const list: Command = {
    usage: `[--status active|evicted|banned] [--selector TYPE:VALUE]... [--match superset|exact|subset|any] ${COMMON_USAGE}`,
    description: 'Lists attested agents.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, status: { type: 'string' }, selector: { type: 'string', multiple: true }, match: { type: 'string' } });
      if (v.status !== undefined && !['active', 'evicted', 'banned', 'drifted'].includes(v.status)) throw usageError(`--status must be active, evicted, banned or drifted, got ${JSON.stringify(v.status)}`);
      const q = new URLSearchParams({ limit: '1000' });
      if (v.status) q.set('status', v.status);
      for (const s of v.selector ?? []) q.append('selector', s);
      if (v.match) q.set('selectorMatch', v.match);
      const client = clientFor(v);
      const agents: AgentJson[] = [];
      for (let cursor: string | undefined, first = true; first || cursor !== undefined; first = false) {
        if (cursor !== undefined) q.set('cursor', cursor);
        const page = await client.json<{ agents: AgentJson[]; nextCursor?: string }>('GET', `/v1/agents?${q}`);
        agents.push(...page.agents);
        cursor = page.nextCursor;
      }
      io.out(v.json ? JSON.stringify({ agents }, null, 2) : formatAgents(agents));
      return 0;
    },
  };

  const one = (description: string, action: 'show' | 'evict' | 'unban', done: string): Command => ({
    usage: `--spiffe-id AGENT_ID ${COMMON_USAGE}`,
    description,
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, 'spiffe-id': { type: 'string' } });
      const id = required(v['spiffe-id'], 'spiffe-id');
      const client = clientFor(v);
      const a =
        action === 'show' ? await client.json<AgentJson>('GET', `/v1/agents/${enc(id)}`) : await client.json<AgentJson>('POST', `/v1/agents/${enc(id)}/${action}`);
      io.out(v.json ? JSON.stringify(a, null, 2) : done ? `${done}\n\n${formatAgent(a)}` : formatAgent(a));
      return 0;
    },
  });

  const ban: Command = {
    usage: `--spiffe-id AGENT_ID --reason TEXT ${COMMON_USAGE}`,
    description: 'Bans an agent: it loses its identity and may not attest again until unbanned.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, 'spiffe-id': { type: 'string' }, reason: { type: 'string' } });
      const id = required(v['spiffe-id'], 'spiffe-id');
      const reason = required(v.reason, 'reason');
      const a = await clientFor(v).json<AgentJson>('POST', `/v1/agents/${enc(id)}/ban`, { reason });
      io.out(v.json ? JSON.stringify(a, null, 2) : `Agent banned successfully\n\n${formatAgent(a)}`);
      return 0;
    },
  };

  return {
    list,
    show: one('Shows one attested agent.', 'show', ''),
    evict: one('Evicts an agent: its SVID is no longer renewed; it may attest again.', 'evict', 'Agent evicted successfully'),
    ban,
    unban: one('Lifts a ban: the agent may attest again.', 'unban', 'Agent unbanned successfully'),
  };
}
