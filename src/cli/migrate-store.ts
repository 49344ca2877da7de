/**
 * `keel server migrate-store --from keel.db --to server.yaml`: copies an
 * SQLite store into the PostgreSQL store that the server configuration names
 * (its `store: postgres:`), which must be empty. Stop the servers that write
 * the SQLite file first; servers on the target may run, they see the copy
 * appear at once.
 */
import { copySqliteToPostgres } from '../server/store/copy-store.js';
import { describeConnection, StoreError } from '../server/store/index.js';
import { CliError, parseFlags, type Command } from './command.js';
import { configForCommand, loadServerConfig } from './config-file.js';

export const migrateStore: Command = {
  usage: '--from SQLITE_FILE --to CONFIG_FILE',
  description:
    'Copies an SQLite store (entries, nodes, bundles, CA journals, nonces, revisions) into the empty PostgreSQL store named by the store: postgres: section of a server configuration.',
  async run(argv) {
    const { values } = parseFlags(argv, { from: { type: 'string' }, to: { type: 'string' } });
    if (!values.from) throw new CliError('--from SQLITE_FILE is required', 2);
    if (!values.to) throw new CliError('--to CONFIG_FILE is required', 2);
    const to = values.to;
    const store = configForCommand(() => loadServerConfig(to)).store;
    if (store.kind !== 'postgres') throw new CliError(`${values.to}: server.store is not postgres; nothing to migrate to`, 2);
    try {
      const report = await copySqliteToPostgres(values.from, store.connection);
      const counts = Object.entries(report.rows).map(([t, n]) => `${t} ${n}`).join(', ');
      console.log(`copied ${values.from} into ${describeConnection(store.connection)} at revision ${report.revision}: ${counts}`);
      return 0;
    } catch (e) {
      if (e instanceof StoreError) throw new CliError(e.message);
      throw e;
    }
  },
};
