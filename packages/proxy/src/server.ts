import { randomUUID } from 'node:crypto';
import { createServer, type Server, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createH2cServer, createSecureServer } from 'node:http2';
import type { ServerOptions as HttpsOptions } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { ProxyCore, type Entry, type ProxyCoreOptions } from './handler.js';

const serverOptions = {
  // Slowloris and friends: bound how long headers and whole requests may take.
  headersTimeout: 20_000,
  requestTimeout: 300_000,
  keepAliveTimeout: 65_000,
  maxHeaderSize: 32 * 1024,
  // Never accept what the strict parser rejects (obs-fold, bad chunking, CR/LF in values).
  insecureHTTPParser: false,
};

/**
 * The identity-aware proxy's listeners: one per Service (where tunnel traffic arrives; the caller
 * is identified by source address) and one public HTTPS listener routed by Host.
 */
export class Proxy {
  readonly core: ProxyCore;
  private readonly servers = new Map<string, Server>();

  constructor(opts: ProxyCoreOptions) {
    this.core = new ProxyCore(opts);
  }

  private wire(server: Server, entry: Entry): Server {
    server.on('request', (req: IncomingMessage, res: ServerResponse) => void this.core.handle(req, res, entry));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.core.upgrade(req, socket, head, entry));
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      // The parser refused the request (smuggling attempts end here): 400, logged, never forwarded.
      if (!socket.writable || err.code === 'ECONNRESET') return socket.destroy();
      const rid = randomUUID();
      this.core.logMalformed(rid, err.code ?? err.message);
      const body = `400 Bad Request: malformed request\nrequest id: ${rid}\n`;
      socket.end(`HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nx-postern-request-id: ${rid}\r\nconnection: close\r\n\r\n${body}`);
    });
    return server;
  }

  private readonly sockets = new Map<Server, Set<Socket>>();

  private async bind(key: string, server: Server, host: string, port: number): Promise<number> {
    // Track connections so closing a listener ends HTTP/1.1 keep-alive and HTTP/2 sessions alike.
    const sockets = new Set<Socket>();
    this.sockets.set(server, sockets);
    server.on('connection', (sock: Socket) => {
      sockets.add(sock);
      sock.once('close', () => sockets.delete(sock));
    });
    server.on('secureConnection', (sock: Socket) => {
      sockets.add(sock);
      sock.once('close', () => sockets.delete(sock));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.servers.set(key, server);
    return (server.address() as { port: number }).port;
  }

  /**
   * Serves one Service on `host:port` (port 0 picks one); resolves to the port bound. GRPC-mode
   * Services get an HTTP/2 (h2c, prior knowledge) listener, as gRPC clients expect; the rest HTTP/1.1.
   */
  async listenService(fullName: string, host: string, port: number): Promise<number> {
    const key = `service:${fullName}:${host}`;
    await this.closeListener(key);
    const grpc = this.core.service(fullName)?.spec.mode === 'GRPC';
    const server = grpc ? (createH2cServer({ maxSessionMemory: 64 }) as unknown as Server) : createServer(serverOptions);
    return this.bind(key, this.wire(server, { kind: 'service', service: fullName }), host, port);
  }

  /**
   * Serves every public Service over HTTPS on `host:port`, routed by Host (`<svc>.<domain>`,
   * `<svc>.<ns>.<domain>`); HTTP/2 (so gRPC works) and HTTP/1.1, chosen by ALPN.
   */
  async listenPublic(host: string, port: number, tls: HttpsOptions): Promise<number> {
    const server = createSecureServer({ ...tls, allowHTTP1: true, maxSessionMemory: 64 } as never) as unknown as Server;
    server.headersTimeout = serverOptions.headersTimeout;
    server.requestTimeout = serverOptions.requestTimeout;
    return this.bind(`public:${host}`, this.wire(server, { kind: 'public' }), host, port);
  }

  /**
   * The public listener without TLS, for when a load balancer in front terminates it. Callers
   * are still identified by token; the scheme policies see stays `https`.
   */
  async listenPublicPlaintext(host: string, port: number): Promise<number> {
    return this.bind(`public:${host}`, this.wire(createServer(serverOptions), { kind: 'public' }), host, port);
  }

  private async closeListener(key: string): Promise<void> {
    const s = this.servers.get(key);
    if (!s) return;
    this.servers.delete(key);
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      for (const sock of this.sockets.get(s) ?? []) sock.destroy();
      this.sockets.delete(s);
    });
  }

  /** Stops serving a Service (it was deleted). */
  async unlistenService(fullName: string, host: string): Promise<void> {
    await this.closeListener(`service:${fullName}:${host}`);
  }

  async close(): Promise<void> {
    await Promise.all([...this.servers.keys()].map((k) => this.closeListener(k)));
    await this.core.close();
  }
}
