import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server as TcpServer, type Socket } from 'node:net';
import * as packet from 'dns-packet';
import type { ResourceCache } from '@postern/store';
import { buildZone, type ServiceAddresses } from './zone.js';

export const ttlSeconds = 60;
const FLAG_QR = 1 << 15;
const FLAG_AA = 1 << 10;
const FLAG_RD = 1 << 8;
const FLAG_RA = 1 << 7;
const NOERROR = 0;
const SERVFAIL = 2;
const NXDOMAIN = 3;
const REFUSED = 5;

export interface DnsServerOptions {
  cache: ResourceCache;
  domain: string;
  /** Resolvers for every other name, `ip` or `ip:port`; none: such queries are REFUSED. */
  forwarders?: () => string[];
  forwardTimeoutMs?: number;
  log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

/**
 * The private DNS: answers for Services under `local.<domain>` (A and AAAA, TTL 60, round robin
 * over a Service's addresses, NXDOMAIN for unknown names), forwards everything else to the
 * configured resolvers. UDP and TCP. The zone is rebuilt from the watch-fed cache on change.
 */
export class DnsServer {
  private zone = new Map<string, ServiceAddresses>();
  private readonly rr = new Map<string, number>();
  private udp: UdpSocket[] = [];
  private tcp: TcpServer[] = [];
  private readonly unsubscribe: () => void;
  private readonly suffix: string;

  constructor(private readonly opts: DnsServerOptions) {
    this.suffix = `local.${opts.domain.toLowerCase()}`;
    this.rebuild();
    this.unsubscribe = opts.cache.onChange((ev) => {
      if (ev.type === 'RESYNC' || ev.resource.kind === 'Service') this.rebuild();
    });
  }

  private rebuild(): void {
    this.zone = buildZone(this.opts.cache.list('Service'), this.opts.domain);
  }

  /** Binds UDP and TCP on `host:port`; resolves to the port bound. */
  async listen(host: string, port: number): Promise<number> {
    const type = host.includes(':') ? 'udp6' : 'udp4';
    const udp = createSocket({ type, reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, host, () => {
        udp.off('error', reject);
        resolve();
      });
    });
    const bound = udp.address().port;
    udp.on('message', (msg, rinfo) => {
      void this.answer(msg).then((out) => {
        if (out) udp.send(out, rinfo.port, rinfo.address);
      });
    });
    udp.on('error', (err) => this.opts.log?.('warn', 'dns udp error', { err: err.message }));
    const tcp = createServer((sock) => this.serveTcp(sock));
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(bound, host, () => resolve());
    });
    this.udp.push(udp);
    this.tcp.push(tcp);
    return bound;
  }

  private serveTcp(sock: Socket): void {
    let buf = Buffer.alloc(0);
    sock.setTimeout(10_000, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        void this.answer(msg).then((out) => {
          if (!out || sock.destroyed) return;
          const head = Buffer.alloc(2);
          head.writeUInt16BE(out.length);
          sock.write(Buffer.concat([head, out]));
        });
      }
    });
  }

  /** The answer to one DNS message, or undefined for garbage (dropped, as resolvers do). */
  async answer(msg: Buffer): Promise<Buffer | undefined> {
    let q: packet.Packet;
    try {
      q = packet.decode(msg);
    } catch {
      return undefined;
    }
    const question = q.questions?.[0];
    if (!question || (q.flags ?? 0) & FLAG_QR) return undefined;
    const name = question.name.toLowerCase().replace(/\.$/, '');
    const rd = (q.flags ?? 0) & FLAG_RD;
    const reply = (rcode: number, answers: packet.Answer[] = [], authoritative = true) =>
      packet.encode({
        type: 'response',
        id: q.id ?? 0,
        // dns-packet ignores `rcode` when encoding: it has to be in the flags.
        flags: FLAG_QR | (authoritative ? FLAG_AA : 0) | rd | FLAG_RA | rcode,
        questions: q.questions ?? [],
        answers,
      });
    if (name === this.suffix || name.endsWith(`.${this.suffix}`)) {
      const entry = this.zone.get(name);
      if (!entry) return reply(name === this.suffix ? NOERROR : NXDOMAIN);
      const list = question.type === 'A' ? entry.v4 : question.type === 'AAAA' ? entry.v6 : [];
      // Round robin: start each answer at the next address.
      const start = this.rr.get(name) ?? 0;
      this.rr.set(name, start + 1);
      const ordered = list.map((_, i) => list[(start + i) % list.length]!);
      return reply(NOERROR, ordered.map((data) => ({ type: question.type as 'A' | 'AAAA', name: question.name, ttl: ttlSeconds, class: 'IN', data })));
    }
    const upstreams = this.opts.forwarders?.() ?? [];
    if (upstreams.length === 0) return reply(REFUSED, [], false);
    for (const up of upstreams) {
      const res = await this.forward(msg, up);
      if (res) return res;
    }
    return reply(SERVFAIL, [], false);
  }

  private forward(msg: Buffer, upstream: string): Promise<Buffer | undefined> {
    const m = upstream.match(/^\[?([^\]]+?)\]?(?::(\d+))?$/);
    const host = m?.[1] ?? upstream;
    const port = Number(m?.[2] ?? 53);
    return new Promise((resolve) => {
      const sock = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      const timer = setTimeout(() => {
        sock.close();
        resolve(undefined);
      }, this.opts.forwardTimeoutMs ?? 2000);
      sock.once('message', (res) => {
        clearTimeout(timer);
        sock.close();
        resolve(res);
      });
      sock.once('error', () => {
        clearTimeout(timer);
        sock.close();
        resolve(undefined);
      });
      sock.send(msg, port, host);
    });
  }

  async close(): Promise<void> {
    this.unsubscribe();
    for (const u of this.udp) u.close();
    await Promise.all(this.tcp.map((t) => new Promise<void>((r) => t.close(() => r()))));
    this.udp = [];
    this.tcp = [];
  }
}
