/**
 * A loopback TCP relay in front of swtpm's two ports (data p, control p+1),
 * so a test can cut the link to a TPM that keeps running: dropConnections()
 * destroys every relayed connection, both ends, and the relay keeps
 * listening for new ones.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { freePortPair } from '../../simulator/ports.js';

export interface TpmRelay {
  readonly port: number;
  readonly tcti: string;
  /** Relayed connections open now. */
  readonly open: number;
  dropConnections(): void;
  close(): Promise<void>;
}

export async function relaySwtpm(host: string, upstreamPort: number): Promise<TpmRelay> {
  const port = await freePortPair();
  const sockets = new Set<Socket>();
  const listen = (from: number, to: number): Promise<Server> =>
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
        down.pipe(up);
        up.pipe(down);
      });
      srv.once('error', reject);
      srv.listen(from, '127.0.0.1', () => resolve(srv));
    });
  const servers = [await listen(port, upstreamPort), await listen(port + 1, upstreamPort + 1)];
  return {
    port,
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    get open() {
      return sockets.size / 2;
    },
    dropConnections() {
      for (const s of [...sockets]) s.destroy();
      sockets.clear();
    },
    async close() {
      this.dropConnections();
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    },
  };
}
