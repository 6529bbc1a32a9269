import { createHash } from 'node:crypto';
import type { ProxyResponse } from './exchange.js';
import { compileJsonSchema, durationMs } from '@postern/apis';
import { compileCel, evaluateCondition } from '@postern/policy';
import { HttpError } from './http-error.js';
import { ExtProcClients, type ExtProcAnswer, type ExtProcExchange } from './ext-proc.js';
import type { Caller } from './identity.js';
import { LuaPlugin, type LuaRequestState, type LuaResponseState } from './lua.js';
import type { Route } from './routes.js';

type Plugin = Route['plugins'][number];

/** One request as its plugins see and change it: Lua's state, and the open ext_proc streams. */
export interface PluginRequestState extends LuaRequestState {
  /** ext_proc streams opened on the request side, kept for the response side, in plugin order. */
  exchanges?: Map<Plugin, ExtProcExchange>;
}

/** The response as plugins see it; `body()` reads the upstream's whole body when a processor asks for it. */
export interface PluginResponseState extends LuaResponseState {
  status: number;
  body: () => Promise<Buffer>;
}

/** The status, headers and body a plugin answered with, instead of the upstream. */
export function answer(res: ProxyResponse | undefined, status: number, headers: Record<string, string | string[]>, body: string | Buffer, why: string): true {
  // An upgrade request has no response object: the answer goes out as an error reply.
  if (!res) throw new HttpError(status, body.toString(), why, headers);
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.statusCode = status;
  res.setHeader('content-length', Buffer.byteLength(body));
  res.end(body);
  return true;
}

/** A rate-limit window: when it started and how many hits it holds, this one included. */
export interface RateWindow {
  start: number;
  count: number;
}

/** Counts hits per key in fixed windows. With proxy workers, one counter in the primary serves them all. */
export interface RateCounter {
  hit(key: string, windowMs: number, now: number): RateWindow | Promise<RateWindow>;
}

/** Windows in this process's memory; ended ones are pruned, so many keys cannot grow it without bound. */
export class LocalRateCounter implements RateCounter {
  private readonly windows = new Map<string, RateWindow & { windowMs: number }>();

  hit(key: string, windowMs: number, now: number): RateWindow {
    const w = this.windows.get(key);
    if (w && now - w.start < windowMs) {
      w.count++;
      return { start: w.start, count: w.count };
    }
    if (!w && this.windows.size >= 100_000) for (const [k, x] of this.windows) if (now - x.start >= x.windowMs) this.windows.delete(k);
    this.windows.set(key, { start: now, count: 1, windowMs });
    return { start: now, count: 1 };
  }
}

/**
 * Runs a route's plugins: `direct` answers at once, `rateLimit` counts per key in fixed windows,
 * `jsonSchema` checks the buffered body, Lua runs in its sandbox (compiled once per distinct
 * source). Failures become HttpErrors.
 */
export class PluginRunner {
  private readonly lua = new Map<string, Promise<LuaPlugin>>();
  private readonly extProc = new ExtProcClients();
  constructor(
    private readonly now: () => Date,
    private readonly counter: RateCounter = new LocalRateCounter(),
  ) {}

  /** Compiles a Lua plugin once per distinct source. */
  private luaPlugin(name: string, source: string): Promise<LuaPlugin> {
    const key = createHash('sha256').update(source).digest('base64url');
    let p = this.lua.get(key);
    if (!p) {
      p = LuaPlugin.compile(name, source);
      p.catch(() => this.lua.delete(key));
      this.lua.set(key, p);
    }
    return p;
  }

  /** The plugins of a route for a phase whose condition holds, in order. */
  select(route: Route, phase: 'PRE_AUTH' | 'POST_AUTH', ctx: Record<string, unknown>): Route['plugins'] {
    return route.plugins.filter((p) => {
      if ((p.phase ?? 'POST_AUTH') !== phase) return false;
      if (!p.condition) return true;
      try {
        return evaluateCondition(p.condition, { ctx, attrs: {} });
      } catch (err) {
        throw new HttpError(500, 'a gateway plugin failed', `plugin ${p.name} condition: ${(err as Error).message}`);
      }
    });
  }

  /**
   * Runs the request side of plugins: `direct` answers at once, `rateLimit` may answer 429,
   * Lua may change headers and body or `exit(status)`, an external processor may change them or
   * answer itself. Returns whether it answered on `res` (without `res`, for upgrades, an answer
   * is thrown as an HttpError).
   */
  async runRequest(plugins: Route['plugins'], state: PluginRequestState, caller: Caller | undefined, res: ProxyResponse | undefined): Promise<boolean> {
    for (const p of plugins) {
      if (p.direct) return answer(res, p.direct.statusCode ?? 200, p.direct.headers ?? {}, p.direct.body ?? '', `plugin ${p.name} answered directly`);
      if (p.extProc) {
        const ex = this.extProc.open(p.name, p.extProc);
        (state.exchanges ??= new Map()).set(p, ex);
        const http = (state.ctx.request as { http: { method: string; uri: string; host: string; scheme: string } }).http;
        const a = await ex.request(state.requestHeaders, { method: http.method, path: http.uri, authority: http.host, scheme: http.scheme }, state.body);
        if (a.immediate) return answer(res, a.immediate.status, a.immediate.headers, a.immediate.body, `plugin ${p.name}: the external processor answered ${a.immediate.status}`);
        if (a.body) {
          state.body = a.body;
          state.bodyChanged = true;
        }
        continue;
      }
      if (p.rateLimit) {
        const rl = p.rateLimit;
        const who = rl.key?.eval ? this.evalKey(p.name, rl.key.eval, state.ctx) : rl.key?.perSession ? caller?.session.metadata.name : rl.key?.perUser ? caller?.user.metadata.name : 'all';
        const key = `${p.name}|${who ?? 'anonymous'}`;
        const windowMs = durationMs(rl.window) ?? 60_000;
        const t = this.now().getTime();
        const w = await this.counter.hit(key, windowMs, t);
        if (w.count > rl.limit) throw new HttpError(429, 'rate limit exceeded', `plugin ${p.name}`, { 'retry-after': String(Math.max(1, Math.ceil((w.start + windowMs - t) / 1000))) });
        continue;
      }
      if (p.lua) {
        try {
          (await this.luaPlugin(p.name, p.lua.inline)).onRequest(state);
        } catch (err) {
          throw new HttpError(500, 'a gateway plugin failed', `plugin ${p.name}: ${(err as Error).message}`);
        }
        if (state.exitStatus) throw new HttpError(state.exitStatus, 'the request was stopped by a gateway plugin', `plugin ${p.name} exit(${state.exitStatus})`);
        continue;
      }
      if (p.jsonSchema) {
        const text = state.body?.toString('utf8') ?? '';
        if (!text.trim()) throw new HttpError(400, 'the request needs a JSON body', `plugin ${p.name}: empty body`);
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch {
          throw new HttpError(400, 'the request body is not JSON', `plugin ${p.name}`);
        }
        const why = compileJsonSchema(p.jsonSchema.inline)(value);
        if (why) throw new HttpError(400, `the request body does not match the schema: ${why}`, `plugin ${p.name}: ${why}`);
        continue;
      }
      throw new HttpError(501, 'a gateway plugin of this kind is not implemented', `plugin ${p.name}`);
    }
    return false;
  }

  /** A rate-limit key from CEL (`key.eval`): its value as text; a failure stops the request. */
  private evalKey(plugin: string, expr: string, ctx: Record<string, unknown>): string {
    let v: unknown;
    try {
      v = compileCel(expr)({ ctx, attrs: {} });
    } catch (err) {
      throw new HttpError(500, 'a gateway plugin failed', `plugin ${plugin} key.eval: ${(err as Error).message}`);
    }
    return typeof v === 'string' ? v : JSON.stringify(v ?? null, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x));
  }

  /**
   * Runs the response side: Lua's `onResponse` in plugin order, then each external processor
   * that asked for the response. Returns what a processor changed: the status, the body (the
   * upstream's whole body once read), or its own answer.
   */
  async runResponse(plugins: Route['plugins'], state: PluginResponseState, exchanges: PluginRequestState['exchanges']): Promise<ExtProcAnswer> {
    for (const p of plugins) {
      if (!p.lua) continue;
      try {
        (await this.luaPlugin(p.name, p.lua.inline)).onResponse(state);
      } catch (err) {
        throw new HttpError(500, 'a gateway plugin failed', `plugin ${p.name} onResponse: ${(err as Error).message}`);
      }
    }
    const out: ExtProcAnswer = {};
    if (!exchanges) return out;
    const headers = Object.fromEntries(state.responseHeaders);
    let body: Buffer | undefined;
    const read = async () => (body ??= await state.body());
    for (const ex of exchanges.values()) {
      if (!ex.wantsResponse) continue;
      const a = await ex.response(out.status ?? state.status, headers, read);
      if (a.immediate) return a;
      if (a.status) out.status = a.status;
      if (a.body) body = a.body;
    }
    state.responseHeaders.clear();
    for (const [k, v] of Object.entries(headers)) state.responseHeaders.set(k, v);
    if (body) out.body = body;
    return out;
  }

  /** Ends a request's ext_proc streams once it is answered, however it was (a processor that failed was already cancelled). */
  finish(state: PluginRequestState | undefined): void {
    for (const ex of state?.exchanges?.values() ?? []) ex.end();
  }

  close(): void {
    this.extProc.close();
    for (const p of this.lua.values()) void p.then((x) => x.close(), () => {});
  }
}
