import { createHash } from 'node:crypto';
import { LuaFactory, LuaLibraries, type LuaEngine } from 'wasmoon';

/** What a Lua plugin may read and change of one request, and what it decided. */
export interface LuaRequestState {
  ctx: Record<string, unknown>;
  body: Buffer | undefined;
  requestHeaders: Record<string, string | string[]>;
  /** Set by `exit(status)`: answer this status and send nothing upstream. */
  exitStatus?: number;
  bodyChanged?: boolean;
}

export interface LuaResponseState {
  ctx: Record<string, unknown>;
  responseHeaders: Map<string, string | string[]>;
}

const factory = new LuaFactory();
/** Each plugin runs at most this long per call, in at most this much memory. */
export const luaTimeoutMs = 50;
export const luaMemoryBytes = 16 * 1024 * 1024;

/** Plain JSON data for Lua: resources and headers as tables, nothing callable. */
const plain = (v: unknown) => JSON.parse(JSON.stringify(v ?? null)) as unknown;

/**
 * One compiled Lua plugin (wasmoon: Lua 5.4 in WebAssembly), sandboxed: only the base, string,
 * table, math and utf8 libraries, without load/dofile/loadfile; each call limited in time and
 * memory. Calls are synchronous, so one engine serves requests one at a time without
 * interleaving; the request being served is in `current`.
 */
export class LuaPlugin {
  private current: { req?: LuaRequestState; res?: LuaResponseState } = {};

  private constructor(private readonly engine: LuaEngine, readonly name: string) {}

  static async compile(name: string, source: string): Promise<LuaPlugin> {
    const engine = await factory.createEngine({ openStandardLibs: false, traceAllocations: true, functionTimeout: luaTimeoutMs, enableProxy: false, injectObjects: false });
    for (const lib of [LuaLibraries.Base, LuaLibraries.String, LuaLibraries.Table, LuaLibraries.Math, LuaLibraries.UTF8]) engine.global.loadLibrary(lib);
    engine.global.setMemoryMax(luaMemoryBytes);
    const plugin = new LuaPlugin(engine, name);
    plugin.install();
    engine.doStringSync('load = nil; loadfile = nil; dofile = nil; require = nil; collectgarbage = nil');
    engine.global.setTimeout(Date.now() + 1000);
    engine.doStringSync(source);
    engine.global.setTimeout(undefined);
    return plugin;
  }

  private install(): void {
    const need = <T>(what: keyof LuaPlugin['current'], fn: string): NonNullable<LuaPlugin['current'][typeof what]> & T => {
      const s = this.current[what];
      if (!s) throw new Error(`${fn} is not available in ${what === 'req' ? 'onResponse' : 'onRequest'}`);
      return s as never;
    };
    const lower = (k: unknown) => String(k).toLowerCase();
    const req = {
      getRequestBody: () => need<LuaRequestState>('req', 'getRequestBody').body?.toString('utf8') ?? '',
      setRequestBody: (b: unknown) => {
        const s = need<LuaRequestState>('req', 'setRequestBody');
        s.body = Buffer.from(String(b), 'utf8');
        s.bodyChanged = true;
      },
      getRequestHeader: (k: unknown) => {
        const v = need<LuaRequestState>('req', 'getRequestHeader').requestHeaders[lower(k)];
        return Array.isArray(v) ? v.join(', ') : v;
      },
      setRequestHeader: (k: unknown, v: unknown) => void (need<LuaRequestState>('req', 'setRequestHeader').requestHeaders[lower(k)] = String(v)),
      deleteRequestHeader: (k: unknown) => void delete need<LuaRequestState>('req', 'deleteRequestHeader').requestHeaders[lower(k)],
      setResponseHeader: (k: unknown, v: unknown) => void need<LuaResponseState>('res', 'setResponseHeader').responseHeaders.set(lower(k), String(v)),
      deleteResponseHeader: (k: unknown) => void need<LuaResponseState>('res', 'deleteResponseHeader').responseHeaders.delete(lower(k)),
      exit: (status: unknown) => {
        const n = Number(status);
        need<LuaRequestState>('req', 'exit').exitStatus = Number.isInteger(n) && n >= 100 && n <= 599 ? n : 500;
      },
    };
    this.engine.global.set('octelium', { req });
    this.engine.global.set('postern', { req });
    this.engine.global.set('json', {
      encode: (v: unknown) => JSON.stringify(v ?? null),
      decode: (s: unknown) => {
        try {
          return JSON.parse(String(s)) as unknown;
        } catch {
          return undefined;
        }
      },
    });
    this.engine.global.set('strings', {
      toLower: (s: unknown) => String(s).toLowerCase(),
      toUpper: (s: unknown) => String(s).toUpperCase(),
      hasPrefix: (s: unknown, p: unknown) => String(s).startsWith(String(p)),
      hasSuffix: (s: unknown, p: unknown) => String(s).endsWith(String(p)),
      contains: (s: unknown, p: unknown) => String(s).includes(String(p)),
      trimSpace: (s: unknown) => String(s).trim(),
      split: (s: unknown, sep: unknown) => String(s).split(String(sep)),
      sha256: (s: unknown) => createHash('sha256').update(String(s)).digest('hex'),
    });
    this.engine.global.set('http', {
      client: () => {
        throw new Error('http.client() is not available to Postern Lua plugins yet');
      },
    });
  }

  private call(fnName: 'onRequest' | 'onResponse', ctx: Record<string, unknown>): void {
    const fn = this.engine.global.get(fnName) as ((ctx: unknown) => unknown) | undefined;
    if (typeof fn !== 'function') return;
    fn(plain(ctx));
  }

  /** Runs `onRequest(ctx)` if the plugin defines it; throws on a Lua error, timeout or memory excess. */
  onRequest(state: LuaRequestState): void {
    this.current = { req: state };
    try {
      this.call('onRequest', state.ctx);
    } finally {
      this.current = {};
    }
  }

  onResponse(state: LuaResponseState): void {
    this.current = { res: state };
    try {
      this.call('onResponse', state.ctx);
    } finally {
      this.current = {};
    }
  }

  close(): void {
    this.engine.global.close();
  }
}
