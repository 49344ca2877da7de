#!/usr/bin/env node
/**
 * The `keel` command. Sub-commands are loaded lazily so that `keel entry list`
 * does not pay for the TPM addon or the HSM module.
 */
import { CliError, type Command } from './command.js';

const commands: Record<string, () => Promise<Command>> = {
  demo: async () => (await import('./demo.js')).demo,
  'agent run': async () => (await import('./agent/index.js')).agentRunCommand,
  'agent api fetch x509': async () => (await import('./agent/index.js')).fetchX509Command(),
  'agent api fetch jwt': async () => (await import('./agent/index.js')).fetchJwtCommand(),
  'agent api validate jwt': async () => (await import('./agent/index.js')).validateJwtCommand(),
  'agent api watch': async () => (await import('./agent/index.js')).watchCommand(),
  'agent api write': async () => (await import('./agent/index.js')).writeCommand(),
  'agent validate': async () => (await import('./validate.js')).agentValidate,
  'agent healthcheck': async () => (await import('./agent/index.js')).agentHealthcheckCommand(),
  'server run': async () => (await import('./server-run.js')).serverRun,
  'server validate': async () => (await import('./validate.js')).serverValidate,
  'server migrate-store': async () => (await import('./migrate-store.js')).migrateStore,
  'entry create': async () => (await import('./admin/index.js')).entryCreate,
  'entry list': async () => (await import('./admin/index.js')).entryList,
  'entry show': async () => (await import('./admin/index.js')).entryShow,
  'entry update': async () => (await import('./admin/index.js')).entryUpdate,
  'entry delete': async () => (await import('./admin/index.js')).entryDelete,
  'agent list': async () => (await import('./admin/index.js')).agentList,
  'agent show': async () => (await import('./admin/index.js')).agentShow,
  'agent evict': async () => (await import('./admin/index.js')).agentEvict,
  'agent ban': async () => (await import('./admin/index.js')).agentBan,
  'agent unban': async () => (await import('./admin/index.js')).agentUnban,
  'bundle show': async () => (await import('./admin/index.js')).bundleShow,
  'bundle list': async () => (await import('./admin/index.js')).bundleList,
  'bundle set': async () => (await import('./admin/index.js')).bundleSet,
  'bundle delete': async () => (await import('./admin/index.js')).bundleDelete,
  'healthcheck': async () => (await import('./admin/index.js')).healthcheck,
  'policy create-from-machine': async () => (await import('./policy.js')).policyCreateFromMachine,
  version: async () => (await import('./version.js')).version,
  'policy check': async () => (await import('./policy.js')).policyCheck,
};

function usage(): string {
  const names = Object.keys(commands).sort();
  return ['usage: keel <command> [flags]', '', 'commands:', ...names.map((n) => `  keel ${n}`), '', 'Run `keel <command> --help` for its flags; `keel --version` for the version.'].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    console.log(usage());
    return argv.length === 0 ? 2 : 0;
  }
  // `keel --version [--json]` is `keel version`.
  if (argv[0] === '--version' || argv[0] === '-V') argv = ['version', ...argv.slice(1)];
  // Longest matching command name wins: `agent api fetch x509` before `agent`.
  let name: string | undefined;
  for (let n = Math.min(4, argv.length); n >= 1; n--) {
    const candidate = argv.slice(0, n).join(' ');
    if (candidate in commands) {
      name = candidate;
      break;
    }
  }
  if (!name) {
    console.error(`keel: unknown command "${argv.slice(0, 2).join(' ')}"\n\n${usage()}`);
    return 2;
  }
  const cmd = await commands[name]!();
  const rest = argv.slice(name.split(' ').length);
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(`usage: keel ${name} ${cmd.usage}\n\n${cmd.description}`);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof CliError) {
      console.error(`keel ${name}: ${e.message}`);
      return e.exitCode;
    }
    const err = e as Error;
    console.error(`keel ${name}: ${err.name}: ${err.message}`);
    return 1;
  }
}

const isEntry = import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/cli/main.js') || process.argv[1]?.endsWith('/cli/main.ts');
if (isEntry) {
  // `keel … | head`: a closed pipe ends the command quietly, as Unix tools do.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
  }
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
