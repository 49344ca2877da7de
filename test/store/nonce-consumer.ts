/**
 * Child process for the nonce race: opens its own connection to the store
 * file, waits for the parent's "go", consumes every nonce it was given, and
 * reports which ones it won.
 */
import { SqliteDatastore } from '../../src/server/store/index.js';

interface Go {
  path: string;
  nonces: string[];
  now: number;
}

process.on('message', async (msg: Go) => {
  const store = SqliteDatastore.open({ path: msg.path, busyTimeoutMs: 20_000 });
  const results: string[] = [];
  for (const n of msg.nonces) results.push((await store.consumeNonce(n, new Date(msg.now))).kind);
  await store.close();
  process.send!({ results }, () => process.exit(0));
});
process.send!('ready');
