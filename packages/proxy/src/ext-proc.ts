import { credentials, type ClientDuplexStream } from '@grpc/grpc-js';
import { durationMs, grpcAddress, type Duration } from '@postern/apis';
import {
  BodySendMode,
  CommonResponse_ResponseStatus,
  ExternalProcessorClient,
  HeaderValueOption_HeaderAppendAction as AppendAction,
  type CommonResponse,
  type HeaderMutation,
  type HeaderValue,
  type ProcessingRequest,
  type ProcessingResponse,
} from './gen/envoy/service/ext_proc/v3/external_processor.js';
import { pluginCannotChange } from './headers.js';
import { HttpError } from './http-error.js';

/** A Service's `extProc` plugin settings (REFERENCE.md: `extProc{address, …}`). */
export interface ExtProcConfig {
  address: string;
  timeout?: Duration | undefined;
  /** What of the request the processor sees: nothing, the headers (default), or headers and the whole body. */
  requestMode?: 'NONE' | 'HEADERS' | 'BODY' | undefined;
  /** The same for the upstream's response; default HEADERS, as Envoy's default processing mode. */
  responseMode?: 'NONE' | 'HEADERS' | 'BODY' | undefined;
}

/** How long the processor may take to answer each message, unless the plugin sets `timeout`. */
export const defaultExtProcTimeoutMs = 1000;

type Headers = Record<string, string | string[]>;

/** What the processor decided about one part of the exchange. */
export interface ExtProcAnswer {
  /** Answer the client with this and send nothing further (ImmediateResponse). */
  immediate?: { status: number; headers: Headers; body: Buffer };
  /** The body replaced or cleared. */
  body?: Buffer;
  /** A new response status (`:status` set by the processor, response side only). */
  status?: number;
}

/** A header name, or a pseudo-header (`:path`, `:status`). */
const token = /^:?[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const fieldValue = /^[\t\x20-\x7e\x80-\xff]*$/;
function valueOf(h: HeaderValue): string {
  return h.rawValue.length ? Buffer.from(h.rawValue).toString('latin1') : h.value;
}

/**
 * Applies a HeaderMutation the way Envoy does: removals first, then sets; `append_action` when
 * given, else the old `append` flag (default: replace). An invalid name or value fails the whole
 * message rather than reaching a client or upstream.
 */
export function mutate(m: HeaderMutation | undefined, headers: Headers, plugin: string, allow: (k: string) => boolean = (k) => !pluginCannotChange(k)): void {
  if (!m) return;
  const bad = (what: string) => new HttpError(500, 'a gateway plugin failed', `plugin ${plugin}: the external processor sent ${what}`);
  for (const name of m.removeHeaders) {
    const k = name.toLowerCase();
    if (!token.test(k)) throw bad(`an invalid header name to remove (${JSON.stringify(name)})`);
    if (allow(k)) delete headers[k];
  }
  for (const o of m.setHeaders) {
    if (!o.header) continue;
    const k = o.header.key.toLowerCase();
    const v = valueOf(o.header);
    if (!token.test(k) || !fieldValue.test(v)) throw bad(`an invalid header (${JSON.stringify(o.header.key)})`);
    if (!allow(k) || (v === '' && !o.keepEmptyValue)) continue;
    const have = headers[k];
    const action = o.appendAction !== AppendAction.APPEND_IF_EXISTS_OR_ADD ? o.appendAction : o.append?.value ? AppendAction.APPEND_IF_EXISTS_OR_ADD : AppendAction.OVERWRITE_IF_EXISTS_OR_ADD;
    if (action === AppendAction.APPEND_IF_EXISTS_OR_ADD) headers[k] = have === undefined ? v : [...(Array.isArray(have) ? have : [have]), v];
    else if (action === AppendAction.ADD_IF_ABSENT) headers[k] ??= v;
    else if (action === AppendAction.OVERWRITE_IF_EXISTS) {
      if (have !== undefined) headers[k] = v;
    } else headers[k] = v;
  }
}

function headerMap(headers: Headers, pseudo: [string, string][]): ProcessingRequest['requestHeaders'] {
  const list: HeaderValue[] = [];
  const add = (key: string, value: string) => list.push({ key, value, rawValue: Buffer.from(value, 'latin1') });
  for (const [k, v] of pseudo) add(k, v);
  for (const [k, v] of Object.entries(headers)) if (!k.startsWith(':')) for (const one of Array.isArray(v) ? v : [v]) add(k, one);
  return { headers: { headers: list }, endOfStream: false };
}

/** Whether headers announce a body (end_of_stream is false then, even when the body is not sent). */
const hasBody = (h: Headers) => (h['content-length'] !== undefined && h['content-length'] !== '0') || h['transfer-encoding'] !== undefined;

const bodyMode = (m: ExtProcConfig['requestMode']) => (m === 'BODY' ? BodySendMode.BUFFERED : BodySendMode.NONE);

/**
 * One HTTP request's conversation with an Envoy ext_proc server: one gRPC stream, one message at
 * a time, each answered before the next is sent (Envoy's BUFFERED body mode). If the processor
 * closes the stream cleanly, the request carries on without it, as with Envoy; a gRPC error or a
 * missed deadline stops the request (500, 504), with the reason in the access log only.
 */
export class ExtProcExchange {
  private readonly call: ClientDuplexStream<ProcessingRequest, ProcessingResponse>;
  private readonly arrived: ProcessingResponse[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private failure: Error | undefined;
  private first = true;
  private readonly timeoutMs: number;
  /** The processor asked to see no more of the request (or of the response). */
  private doneRequest = false;
  private doneResponse = false;

  constructor(
    client: ExternalProcessorClient,
    readonly plugin: string,
    private readonly cfg: ExtProcConfig,
  ) {
    this.timeoutMs = durationMs(cfg.timeout) ?? defaultExtProcTimeoutMs;
    this.call = client.process();
    this.call.on('data', (m: ProcessingResponse) => {
      this.arrived.push(m);
      this.wake?.();
    });
    this.call.on('end', () => {
      this.closed = true;
      this.wake?.();
    });
    this.call.on('error', (err: Error) => {
      this.failure ??= err;
      this.closed = true;
      this.wake?.();
    });
  }

  /** Whether the response goes to the processor (a stream that failed meanwhile still stops it, in `send`). */
  get wantsResponse(): boolean {
    return (this.cfg.responseMode ?? 'HEADERS') !== 'NONE' && !this.doneResponse && !(this.closed && !this.failure);
  }

  get wantsResponseBody(): boolean {
    return this.cfg.responseMode === 'BODY' && this.wantsResponse;
  }

  /** Sends one message; resolves with the processor's answer of kind `expect`, or undefined if it closed the stream cleanly. */
  private async send(msg: Partial<ProcessingRequest>, expect: keyof ProcessingResponse): Promise<ProcessingResponse | undefined> {
    if (this.closed && !this.arrived.length) return this.settled();
    const full: ProcessingRequest = { observabilityMode: false, protocolConfig: undefined, ...msg };
    if (this.first) {
      full.protocolConfig = { requestBodyMode: bodyMode(this.cfg.requestMode), responseBodyMode: bodyMode(this.cfg.responseMode), sendBodyWithoutWaitingForHeaderResponse: false };
      this.first = false;
    }
    this.call.write(full);
    const deadline = setTimeout(() => {
      this.failure ??= Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { timeout: true });
      this.wake?.();
    }, this.timeoutMs);
    try {
      while (!this.arrived.length && !this.closed && !this.failure) await new Promise<void>((r) => (this.wake = r));
    } finally {
      clearTimeout(deadline);
      this.wake = undefined;
    }
    const answer = this.arrived.shift();
    if (!answer) return this.settled();
    if (answer.immediateResponse || answer[expect]) return answer;
    throw new HttpError(500, 'a gateway plugin failed', `plugin ${this.plugin}: the external processor answered ${Object.keys(answer).find((k) => (answer as unknown as Record<string, unknown>)[k] !== undefined) ?? 'nothing'} to ${String(expect)}`);
  }

  /** After the stream closed: carry on if it closed cleanly, else stop the request. */
  private settled(): undefined {
    const err = this.failure as (Error & { timeout?: boolean; code?: number }) | undefined;
    if (!err) return undefined;
    this.call.cancel();
    if (err.timeout) throw new HttpError(504, 'a gateway plugin did not answer in time', `plugin ${this.plugin}: the external processor sent ${err.message}`);
    throw new HttpError(500, 'a gateway plugin failed', `plugin ${this.plugin}: the external processor failed: ${err.message}`);
  }

  private immediate(answer: ProcessingResponse): ExtProcAnswer | undefined {
    const r = answer.immediateResponse;
    if (!r) return undefined;
    this.doneRequest = this.doneResponse = true;
    const status = r.status?.code ?? 0;
    const headers: Headers = {};
    mutate(r.headers, headers, this.plugin);
    return { immediate: { status: status >= 200 && status <= 599 ? status : 200, headers, body: Buffer.from(r.body) } };
  }

  /** Applies a CommonResponse: header mutations, and the body when it replaces it. */
  private common(c: CommonResponse | undefined, headers: Headers, allow?: (k: string) => boolean): ExtProcAnswer {
    if (!c) return {};
    mutate(c.headerMutation, headers, this.plugin, allow);
    const m = c.bodyMutation;
    const out: ExtProcAnswer = {};
    if (m?.body !== undefined) out.body = Buffer.from(m.body);
    else if (m?.clearBody) out.body = Buffer.alloc(0);
    return out;
  }

  /**
   * The request side: headers (with `:method`, `:path`, `:authority`, `:scheme` as Envoy sends
   * them) and, in BODY mode, the whole body. Changes `headers` in place.
   */
  async request(headers: Headers, pseudo: { method: string; path: string; authority: string; scheme: string }, body: Buffer | undefined): Promise<ExtProcAnswer> {
    const out: ExtProcAnswer = {};
    if ((this.cfg.requestMode ?? 'HEADERS') === 'NONE') return out;
    const sendBody = this.cfg.requestMode === 'BODY' && body !== undefined && body.length > 0;
    const hm = headerMap(headers, [[':method', pseudo.method], [':path', pseudo.path], [':authority', pseudo.authority], [':scheme', pseudo.scheme]]);
    hm!.endOfStream = !sendBody && !hasBody(headers);
    const h = await this.send({ requestHeaders: hm }, 'requestHeaders');
    if (!h) return out;
    const now = this.immediate(h);
    if (now) return now;
    Object.assign(out, this.common(h.requestHeaders!.response, headers));
    if (h.requestHeaders!.response?.status === CommonResponse_ResponseStatus.CONTINUE_AND_REPLACE) {
      this.doneRequest = true;
      return out;
    }
    if (!sendBody || this.doneRequest) return out;
    const b = await this.send({ requestBody: { body: body!, endOfStream: true } }, 'requestBody');
    if (!b) return out;
    return this.immediate(b) ?? Object.assign(out, this.common(b.requestBody!.response, headers));
  }

  /**
   * The response side: headers with `:status`, then in BODY mode the whole body (`body()` reads
   * it). The processor may change the status by setting `:status`. Changes `headers` in place.
   */
  async response(status: number, headers: Headers, body: () => Promise<Buffer>): Promise<ExtProcAnswer> {
    const out: ExtProcAnswer = {};
    if (!this.wantsResponse) return out;
    const wantsBody = this.wantsResponseBody;
    const hm = headerMap(headers, [[':status', String(status)]]);
    const whole = wantsBody ? await body() : undefined;
    hm!.endOfStream = whole ? !whole.length : !hasBody(headers);
    const h = await this.send({ responseHeaders: hm }, 'responseHeaders');
    if (!h) return out;
    const now = this.immediate(h);
    if (now) return now;
    const withStatus: Headers = { ':status': String(status) };
    const allowResponse = (k: string) => k === ':status' || !pluginCannotChange(k);
    Object.assign(out, this.common(h.responseHeaders!.response, Object.assign(headers, withStatus), allowResponse));
    const changed = Number(headers[':status']);
    delete headers[':status'];
    if (changed !== status) {
      if (!Number.isInteger(changed) || changed < 200 || changed > 599) throw new HttpError(500, 'a gateway plugin failed', `plugin ${this.plugin}: the external processor set :status to ${JSON.stringify(changed)}`);
      out.status = changed;
    }
    if (h.responseHeaders!.response?.status === CommonResponse_ResponseStatus.CONTINUE_AND_REPLACE || !whole?.length) {
      this.doneResponse = true;
      return out;
    }
    const b = await this.send({ responseBody: { body: whole, endOfStream: true } }, 'responseBody');
    this.doneResponse = true;
    if (!b) return out;
    return this.immediate(b) ?? Object.assign(out, this.common(b.responseBody!.response, headers));
  }

  /** Ends the stream from our side; a processor that does not end its side soon is cancelled. */
  end(): void {
    if (this.closed) return;
    this.call.end();
    setTimeout(() => {
      if (!this.closed) this.call.cancel();
    }, this.timeoutMs).unref();
  }
}

/** gRPC channels to ext_proc servers, one per address, shared by every request and plugin. */
export class ExtProcClients {
  private readonly clients = new Map<string, ExternalProcessorClient>();

  open(plugin: string, cfg: ExtProcConfig): ExtProcExchange {
    let client = this.clients.get(cfg.address);
    if (!client) {
      const t = grpcAddress(cfg.address);
      // The schema checked the address; this is a bug if it fires.
      if (!t) throw new HttpError(500, 'a gateway plugin failed', `plugin ${plugin}: bad extProc address ${JSON.stringify(cfg.address)}`);
      client = new ExternalProcessorClient(t.target, t.tls ? credentials.createSsl() : credentials.createInsecure());
      this.clients.set(cfg.address, client);
    }
    return new ExtProcExchange(client, plugin, cfg);
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
