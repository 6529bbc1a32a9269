import { compileJsonSchema } from '../jsonschema.js';
import { z } from 'zod';
import { Duration, SecretRef } from '../meta.js';
import { Authorization, Condition } from './policy.js';

const oneOf = <T extends Record<string, unknown>>(keys: readonly (keyof T & string)[], what: string) =>
  (ctx: { value: T; issues: z.core.$ZodRawIssue[] }) => {
    const set = keys.filter((k) => ctx.value[k] !== undefined);
    if (set.length !== 1) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        message: `${what} takes exactly one of ${keys.join(', ')}${set.length ? `; found ${set.join(' and ')}` : ''}`,
        params: { postern: 'ERR_ONE_OF' },
      });
    }
  };

const url = z.url({ protocol: /^(https?|grpcs?|tcp|udp|wss?)$/ });

export const Endpoint = z.strictObject({ url, user: z.string().optional() });

export const Upstream = z
  .strictObject({
    url: url.optional(),
    loadbalance: z.strictObject({ endpoints: z.array(Endpoint).min(1) }).optional(),
    container: z
      .strictObject({
        image: z.string(),
        port: z.number().int().min(1).max(65535),
        replicas: z.number().int().min(0).optional(),
        args: z.array(z.string()).optional(),
        command: z.array(z.string()).optional(),
        env: z.array(z.strictObject({ name: z.string(), value: z.string().optional(), fromSecret: z.string().optional() })).optional(),
      })
      .optional(),
    user: z.string().optional(),
  })
  .check(oneOf(['url', 'loadbalance', 'container', 'user'], 'upstream'));

/**
 * An ext_proc server's address: `host:port` or `grpc://host:port` (HTTP/2 without TLS),
 * `grpcs://host:port` (TLS). Returns the gRPC target and whether to use TLS.
 */
export function grpcAddress(address: string): { target: string; tls: boolean } | undefined {
  const m = /^(?:(grpcs?):\/\/)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(address.trim());
  if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) return undefined;
  return { target: `${m[2]}:${m[3]}`, tls: m[1] === 'grpcs' };
}

/** An HTTP field name (RFC 9110 token) and a value without CR, LF or NUL: nothing can split a header. */
const headerName = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'not an HTTP header name (letters, digits and !#$%&\'*+.^_`|~-)');
const headerText = z.string().regex(/^[^\r\n\0]*$/, 'a header value cannot hold CR, LF or NUL');
const HeaderValue = z.strictObject({ key: headerName, value: headerText, append: z.boolean().optional() });

export const HttpAuth = z
  .strictObject({
    bearer: SecretRef.optional(),
    basic: z.strictObject({ username: z.string(), password: SecretRef }).optional(),
    custom: z.strictObject({ header: z.string().min(1), value: SecretRef }).optional(),
    oauth2ClientCredentials: z
      .strictObject({
        tokenURL: z.url(),
        clientID: z.string(),
        clientSecret: SecretRef,
        scopes: z.array(z.string()).optional(),
      })
      .optional(),
    sigv4: z
      .strictObject({
        accessKeyID: z.string(),
        secretAccessKey: SecretRef,
        region: z.string(),
        service: z.string(),
      })
      .optional(),
  })
  .check(oneOf(['bearer', 'basic', 'custom', 'oauth2ClientCredentials', 'sigv4'], 'auth'));

export const Plugin = z
  .strictObject({
    name: z.string().min(1),
    phase: z.enum(['PRE_AUTH', 'POST_AUTH']).optional(),
    condition: Condition.optional(),
    lua: z.strictObject({ inline: z.string().min(1) }).optional(),
    extProc: z
      .strictObject({
        address: z.string().refine((a) => grpcAddress(a) !== undefined, 'not a gRPC address: write host:port (HTTP/2 without TLS) or grpcs://host:port (TLS)'),
        timeout: Duration.optional(),
        requestMode: z.enum(['NONE', 'HEADERS', 'BODY']).optional(),
        responseMode: z.enum(['NONE', 'HEADERS', 'BODY']).optional(),
      })
      .optional(),
    rateLimit: z
      .strictObject({
        limit: z.number().int().positive(),
        window: Duration,
        key: z
          .strictObject({ perUser: z.boolean().optional(), perSession: z.boolean().optional(), eval: z.string().optional() })
          .optional(),
      })
      .optional(),
    direct: z
      .strictObject({
        statusCode: z.number().int().min(100).max(599).optional(),
        body: z.string().optional(),
        headers: z.record(headerName, headerText).optional(),
      })
      .optional(),
    jsonSchema: z
      .strictObject({
        inline: z
          .string()
          .min(1)
          .check((ctx) => {
            try {
              compileJsonSchema(ctx.value);
            } catch (err) {
              ctx.issues.push({ code: 'custom', input: ctx.value, message: `not a usable JSON Schema: ${(err as Error).message}` });
            }
          }),
      })
      .optional(),
  })
  .check(oneOf(['lua', 'extProc', 'rateLimit', 'direct', 'jsonSchema'], 'a plugin'));

export const HttpConfig = z.strictObject({
  auth: HttpAuth.optional(),
  path: z.strictObject({ removePrefix: z.string().optional(), addPrefix: z.string().optional() }).optional(),
  header: z
    .strictObject({
      addRequestHeaders: z.array(HeaderValue).optional(),
      removeRequestHeaders: z.array(z.string()).optional(),
      addResponseHeaders: z.array(HeaderValue).optional(),
      removeResponseHeaders: z.array(z.string()).optional(),
      authorizationMode: z.enum(['PASS', 'DELETE']).optional(),
    })
    .optional(),
  cors: z
    .strictObject({
      allowOriginStringMatch: z
        .array(
          z.strictObject({
            exact: z.string().optional(),
            prefix: z.string().optional(),
            regex: z
              .string()
              .refine((r) => {
                try {
                  new RegExp(r);
                  return true;
                } catch {
                  return false;
                }
              }, 'not a valid regular expression')
              .optional(),
          }),
        )
        .optional(),
      allowMethods: z.string().optional(),
      allowHeaders: z.string().optional(),
      exposeHeaders: z.string().optional(),
      maxAge: z.string().optional(),
      allowCredentials: z.boolean().optional(),
    })
    .optional(),
  body: z
    .strictObject({ mode: z.enum(['JSON']).optional(), maxRequestSize: z.number().int().positive().optional() })
    .optional(),
  enableRequestBuffering: z.boolean().optional(),
  isUpstreamHTTP2: z.boolean().optional(),
  retry: z
    .strictObject({
      maxRetries: z.number().int().min(0).max(10).optional(),
      initialInterval: Duration.optional(),
      maxInterval: Duration.optional(),
      statusCodes: z.array(z.number().int().min(100).max(599)).optional(),
    })
    .optional(),
  plugins: z.array(Plugin).optional(),
});

export const ServiceConfig = z.strictObject({
  name: z.string().optional(),
  upstream: Upstream.optional(),
  tls: z.strictObject({ insecureSkipVerify: z.boolean().optional(), trustedCAs: z.array(z.string()).optional() }).optional(),
  http: HttpConfig.optional(),
});
export type ServiceConfig = z.infer<typeof ServiceConfig>;

export const ServiceMode = z.enum(['HTTP', 'WEB', 'GRPC', 'TCP', 'UDP', 'SSH', 'POSTGRES', 'MYSQL', 'KUBERNETES', 'DNS']);

export const ServiceSpec = z
  .strictObject({
    mode: ServiceMode.default('HTTP'),
    port: z.number().int().min(0).max(65535).default(0),
    isTLS: z.boolean().optional(),
    isPublic: z.boolean().optional(),
    isAnonymous: z.boolean().optional(),
    authorization: Authorization.optional(),
    config: ServiceConfig.optional(),
    dynamicConfig: z
      .strictObject({
        configs: z.array(ServiceConfig.extend({ name: z.string().min(1) })).default([]),
        rules: z.array(z.strictObject({ condition: Condition, configName: z.string().min(1) })).default([]),
      })
      .optional(),
  })
  .check((ctx) => {
    const spec = ctx.value;
    if (spec.isAnonymous && !spec.isPublic) {
      ctx.issues.push({
        code: 'custom',
        input: spec.isAnonymous,
        path: ['isAnonymous'],
        message: 'isAnonymous needs isPublic: true (an anonymous Service is a public one)',
        params: { postern: 'ERR_INVALID_VALUE' },
      });
    }
    if (!spec.config?.upstream && !spec.dynamicConfig?.configs.length) {
      ctx.issues.push({
        code: 'custom',
        input: spec.config,
        path: ['config', 'upstream'],
        message: 'a Service needs an upstream: set config.upstream (or dynamicConfig.configs)',
        params: { postern: 'ERR_REQUIRED' },
      });
    }
    const names = new Set<string>();
    (spec.dynamicConfig?.configs ?? []).forEach((c, i) => {
      if (names.has(c.name)) {
        ctx.issues.push({
          code: 'custom',
          input: c.name,
          path: ['dynamicConfig', 'configs', i, 'name'],
          message: `config name "${c.name}" is used twice`,
          params: { postern: 'ERR_DUPLICATE_RESOURCE' },
        });
      }
      names.add(c.name);
    });
    (spec.dynamicConfig?.rules ?? []).forEach((r, i) => {
      if (!names.has(r.configName)) {
        ctx.issues.push({
          code: 'custom',
          input: r.configName,
          path: ['dynamicConfig', 'rules', i, 'configName'],
          message: `no config named "${r.configName}" in dynamicConfig.configs${names.size ? ` (have: ${[...names].join(', ')})` : ''}`,
          params: { postern: 'ERR_MISSING_REFERENCE' },
        });
      }
    });
  });
export type ServiceSpec = z.infer<typeof ServiceSpec>;

/**
 * The port a Service is served on at its private address: its own `port`, else (0 or unset, as
 * REFERENCE.md says, inferred) 443 for `isTLS` and 80 otherwise. The gateway listens there and
 * every listing shows it.
 */
export function servicePort(spec: { port?: number | undefined; isTLS?: boolean | undefined }): number {
  return spec.port || (spec.isTLS ? 443 : 80);
}

export const ServiceStatus = z.looseObject({
  addresses: z.array(z.strictObject({ dualStackIP: z.strictObject({ ipv4: z.string().optional(), ipv6: z.string().optional() }) })).optional(),
  namespaceRef: z.strictObject({ name: z.string(), uid: z.string().optional() }).optional(),
});
