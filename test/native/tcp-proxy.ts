/**
 * A loopback TCP relay in front of swtpm's two ports (data p, control p+1),
 * so a test can cut the link to a TPM that keeps running: dropConnections()
 * destroys every relayed connection, both ends; cutOnNextCommand() does so
 * when the next command arrives, before it reaches the TPM, so the client
 * waits for an answer that never comes. The relay keeps listening for new
 * connections either way.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { freePortPair } from '../../simulator/ports.js';

export interface TpmRelay {
  readonly port: number;
  readonly tcti: string;
  /** Relayed connections open now. */
  readonly open: number;
  dropConnections(): void;
  cutOnNextCommand(): void;
  close(): Promise<void>;
}

export async function relaySwtpm(host: string, upstreamPort: number): Promise<TpmRelay> {
  const port = await freePortPair();
  const sockets = new Set<Socket>();
  let cut = false;
  const drop = (): void => {
    for (const s of [...sockets]) s.destroy();
    sockets.clear();
  };
  const listen = (from: number, to: number, data: boolean): Promise<Server> =>
    new Promise((resolve, reject) => {
      const srv = createServer((down) => {
        const up = connect({ host, port: to });
        sockets.add(down);
        sockets.add(up);
        const end = (): void => {
          down.destroy();
          up.destroy();
          sockets.delete(down);
          sockets.delete(up);
        };
        down.on('error', end).on('close', end);
        up.on('error', end).on('close', end);
        down.on('data', (chunk: Buffer) => {
          if (data && cut) {
            cut = false;
            drop();
            return;
          }
          up.write(chunk);
        });
        up.pipe(down);
      });
      srv.once('error', reject);
      srv.listen(from, '127.0.0.1', () => resolve(srv));
    });
  const servers = [await listen(port, upstreamPort, true), await listen(port + 1, upstreamPort + 1, false)];
  return {
    port,
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    get open() {
      return sockets.size / 2;
    },
    dropConnections: drop,
    cutOnNextCommand() {
      cut = true;
    },
    async close() {
      drop();
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    },
  };
}
