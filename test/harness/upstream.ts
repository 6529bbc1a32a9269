import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

/** What an upstream saw of one request. */
export interface Seen {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/**
 * A real HTTP upstream that records every request and answers with JSON describing it, unless a
 * custom handler is given. Tests assert on what it did or did not receive.
 */
export class RecordingUpstream {
  readonly seen: Seen[] = [];
  private constructor(readonly server: Server, readonly port: number, readonly name: string) {}

  static async start(port: number, name: string, handler?: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<RecordingUpstream> {
    let up: RecordingUpstream | undefined;
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        up!.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
        if (handler) return handler(req, res, body);
        res.setHeader('content-type', 'application/json');
        res.setHeader('server', `upstream-${name}`);
        res.setHeader('x-internal', 'secret-internal-header');
        // An upstream that sends its own request ID must not replace the gateway's.
        res.setHeader('x-postern-request-id', 'set-by-the-upstream');
        res.end(JSON.stringify({ upstream: name, method: req.method, url: req.url, headers: req.headers, body }));
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    up = new RecordingUpstream(server, (server.address() as { port: number }).port, name);
    return up;
  }

  last(): Seen | undefined {
    return this.seen.at(-1);
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
