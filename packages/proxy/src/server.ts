import { randomUUID } from 'node:crypto';
import type { Server, IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createH2cServer, createSecureServer } from 'node:http2';
import type { ServerOptions as HttpsOptions } from 'node:https';
import type { Server as NetServer, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { ProxyCore, type Entry, type ProxyCoreOptions } from './handler.js';
import { createH1Server, defaultLimits } from './h1/server.js';

/** Slowloris and friends on Node's servers (HTTP/2 and TLS): how long headers and whole requests may take. */
const serverOptions = { headersTimeout: defaultLimits.headersTimeoutMs, requestTimeout: defaultLimits.requestTimeoutMs };

/**
 * The identity-aware proxy's listeners: one per Service (where tunnel traffic arrives; the caller
 * is identified by source address) and one public HTTPS listener routed by Host.
 */
export class Proxy {
  readonly core: ProxyCore;
  private readonly servers = new Map<string, NetServer>();

  constructor(opts: ProxyCoreOptions) {
    this.core = new ProxyCore(opts);
  }

  /** The proxy's own HTTP/1.1 listener (`h1/`), for plaintext HTTP/1.1. */
  private h1(entry: Entry): NetServer {
    return createH1Server({
      request: (req, res) => void this.core.handle(req, res, entry),
      upgrade: (req, socket, head) => void this.core.upgrade(req, socket, head, entry),
      malformed: (reason) => {
        const rid = randomUUID();
        this.core.logMalformed(rid, reason);
        return rid;
      },
    });
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

  private readonly sockets = new Map<NetServer, Set<Socket>>();

  private async bind(key: string, server: NetServer, host: string, port: number): Promise<number> {
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
    const entry: Entry = { kind: 'service', service: fullName };
    const server = grpc ? this.wire(createH2cServer({ maxSessionMemory: 64 }) as unknown as Server, entry) : this.h1(entry);
    return this.bind(key, server, host, port);
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
    return this.bind(`public:${host}`, this.h1({ kind: 'public' }), host, port);
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
