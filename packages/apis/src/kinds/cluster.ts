import { z } from 'zod';
import { Attrs } from '../meta.js';
import { SessionDurations } from './identity.js';
import { Authorization } from './policy.js';

/** A Secret holds `value` (text) or `valueBytes` (base64). Write-only through the API. */
export const SecretSpec = z.strictObject({
  data: z
    .strictObject({ value: z.string().optional(), valueBytes: z.base64().optional() })
    .check((ctx) => {
      if ((ctx.value.value === undefined) === (ctx.value.valueBytes === undefined)) {
        ctx.issues.push({ code: 'custom', input: ctx.value, message: 'data takes exactly one of value, valueBytes', params: { postern: 'ERR_ONE_OF' } });
      }
    })
    .optional(),
});
export type SecretSpec = z.infer<typeof SecretSpec>;

/** Non-secret configuration data, readable by anyone whose policy allows `get`. */
export const ConfigSpec = z.strictObject({
  data: z.strictObject({ value: z.string().optional(), valueBytes: z.base64().optional(), attrs: Attrs.optional() }).optional(),
});

export const GatewaySpec = z.strictObject({});
export const GatewayStatus = z.looseObject({
  /** READY while its agent runs; DOWN once it stopped cleanly. */
  state: z.enum(['READY', 'DOWN']).optional(),
  /** The agent's last heartbeat; a gateway silent for 3 heartbeats is treated as gone. */
  lastSeenAt: z.string().optional(),
  heartbeatSeconds: z.number().optional(),
  regionRef: z.looseObject({ name: z.string() }).optional(),
  hostname: z.string().optional(),
  publicIPs: z.array(z.string()).optional(),
  cidr: z.looseObject({ v4: z.string().optional(), v6: z.string().optional() }).optional(),
  wireguard: z.looseObject({ port: z.number().optional(), publicKey: z.string().optional() }).optional(),
  quic: z.looseObject({ port: z.number().optional() }).optional(),
});

export const RegionSpec = z.strictObject({});

export const ClusterConfigSpec = z.strictObject({
  authorization: Authorization.optional(),
  session: z.strictObject({ human: SessionDurations.optional(), workload: SessionDurations.optional() }).optional(),
  dns: z.strictObject({ fallbackServers: z.array(z.string()).optional() }).optional(),
  attrs: Attrs.optional(),
});
export type ClusterConfigSpec = z.infer<typeof ClusterConfigSpec>;
