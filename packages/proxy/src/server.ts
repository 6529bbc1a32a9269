import { randomUUID } from 'node:crypto';
import type { Server, IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createH2cServer, createSecureServer, type Http2Session } from 'node:http2';
import type { ServerOptions as HttpsOptions } from 'node:https';
import type { Server as NetServer, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { ProxyCore, type Entry, type ProxyCoreOptions } from './handler.js';
import { createH1Server, defaultLimits } from './h1/server.js';

/** How long a stopping proxy waits for the answers in progress before it cuts them. */
const defaultDrainMs = 10_000;

/** Slowloris and friends on Node's servers (HTTP/2 and TLS): how long headers and whole requests may take. */
const serverOptions = { headersTimeout: defaultLimits.headersTimeoutMs, requestTimeout: defaultLimits.requestTimeoutMs };

/**
 * The identity-aware proxy's listeners: one per Service (where tunnel traffic arrives; the caller
 * is identified by source address) and one public HTTPS listener routed by Host.
 */
export class Proxy {
  readonly core: ProxyCore;
  private readonly servers = new Map<string, NetServer>();
  /** How each listener asks its connections to finish (see close). */
  private readonly drains = new Map<NetServer, (sockets: Set<Socket>) => void>();
  private draining = false;

  constructor(opts: ProxyCoreOptions) {
    this.core = new ProxyCore(opts);
  }

  /** The proxy's own HTTP/1.1 listener (`h1/`), for plaintext HTTP/1.1. */
  private h1(entry: Entry): NetServer {
    const server = createH1Server({
      request: (req, res) => void this.core.handle(req, res, entry),
      upgrade: (req, socket, head) => void this.core.upgrade(req, this.upgrading(socket), head, entry),
      malformed: (reason) => {
        const rid = randomUUID();
        this.core.logMalformed(rid, reason);
        return rid;
      },
    });
    this.drains.set(server, () => server.drain());
    return server;
  }

  /**
   * Node's servers (HTTP/2, and HTTP/1.1 on the TLS listener). `h2only`: an h2c listener, where
   * every connection is an HTTP/2 session.
   */
  private wire(server: Server, entry: Entry, h2only = false): Server {
    // What draining needs: the HTTP/2 sessions, and the HTTP/1.1 answers in progress.
    const sessions = new Set<Http2Session>();
    const answering = new Set<ServerResponse>();
    server.on('session', (session: Http2Session) => {
      sessions.add(session);
      session.once('close', () => sessions.delete(session));
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (req.httpVersionMajor === 1) {
        if (this.draining) res.shouldKeepAlive = false;
        answering.add(res);
        res.once('close', () => answering.delete(res));
      }
      void this.core.handle(req, res, entry);
    });
    this.drains.set(server as unknown as NetServer, (sockets) => {
      for (const session of sessions) session.close(); // GOAWAY: open streams finish, no new ones
      if (h2only) return;
      const busy = new Set<Socket>();
      for (const res of answering) {
        const sock = res.socket as Socket;
        busy.add(sock);
        // Not yet answered: its head says `connection: close`, and Node closes after it. Head
        // out already: the connection ends once the answer is written (Node detaches it first).
        if (!res.headersSent) res.shouldKeepAlive = false;
        else res.once('finish', () => sock.end());
      }
      // The TLS connections only: each also has its TCP socket in the set, which must be left to it.
      for (const sock of sockets) if (sock instanceof TLSSocket && sock.alpnProtocol !== 'h2' && !busy.has(sock)) sock.end();
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.core.upgrade(req, this.upgrading(socket), head, entry));
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
  /** Connections that left HTTP (WebSockets): a drain cannot wait for them. */
  private readonly upgraded = new Set<Duplex>();

  private upgrading<T extends Duplex>(socket: T): T {
    this.upgraded.add(socket);
    socket.once('close', () => this.upgraded.delete(socket));
    return socket;
  }

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
    const server = grpc ? this.wire(createH2cServer({ maxSessionMemory: 64 }) as unknown as Server, entry, true) : this.h1(entry);
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
    this.drains.delete(s);
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

  /**
   * Stops every listener: no new connections; requests in progress are answered (HTTP/1.1
   * connections close after their answer, HTTP/2 sessions get GOAWAY) for up to `drainMs`, then
   * whatever is still open is cut. WebSockets and other upgraded connections are cut at once.
   */
  async close(drainMs = defaultDrainMs): Promise<void> {
    this.draining = true;
    const servers = [...this.servers.values()];
    this.servers.clear();
    await Promise.all(
      servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            const sockets = this.sockets.get(s) ?? new Set<Socket>();
            const cut = setTimeout(() => {
              for (const sock of sockets) sock.destroy();
            }, drainMs);
            s.close(() => {
              clearTimeout(cut);
              this.sockets.delete(s);
              this.drains.delete(s);
              resolve();
            });
            for (const sock of this.upgraded) if (sockets.has(sock as Socket)) sock.destroy();
            this.drains.get(s)?.(sockets);
          }),
      ),
    );
    await this.core.close();
  }
}
