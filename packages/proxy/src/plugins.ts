import { createHash } from 'node:crypto';
import type { ProxyResponse } from './exchange.js';
import { compileJsonSchema, durationMs } from '@postern/apis';
import { compileCel, evaluateCondition } from '@postern/policy';
import { HttpError } from './http-error.js';
import type { Caller } from './identity.js';
import { LuaPlugin, type LuaRequestState, type LuaResponseState } from './lua.js';
import type { Route } from './routes.js';

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
   * Lua may change headers and body or `exit(status)`. Returns whether it answered on `res`
   * (without `res`, for upgrades, a direct answer is thrown as an HttpError).
   */
  async runRequest(plugins: Route['plugins'], state: LuaRequestState, caller: Caller | undefined, res: ProxyResponse | undefined): Promise<boolean> {
    for (const p of plugins) {
      if (p.direct) {
        // An upgrade request has no response object: the answer goes out as an error reply.
        if (!res) throw new HttpError(p.direct.statusCode ?? 200, p.direct.body ?? '', `plugin ${p.name} answered directly`, p.direct.headers ?? {});
        for (const [k, v] of Object.entries(p.direct.headers ?? {})) res.setHeader(k, v);
        res.statusCode = p.direct.statusCode ?? 200;
        res.end(p.direct.body ?? '');
        return true;
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

  async runResponse(plugins: Route['plugins'], state: LuaResponseState): Promise<void> {
    for (const p of plugins) {
      if (!p.lua) continue;
      try {
        (await this.luaPlugin(p.name, p.lua.inline)).onResponse(state);
      } catch (err) {
        throw new HttpError(500, 'a gateway plugin failed', `plugin ${p.name} onResponse: ${(err as Error).message}`);
      }
    }
  }

  close(): void {
    for (const p of this.lua.values()) void p.then((x) => x.close(), () => {});
  }
}
