import { z } from 'zod';

/** A DNS label: lower-case letters, digits and '-', 1–63 characters, starting and ending alphanumeric. */
export const dnsLabelPattern = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export const durationUnits = ['milliseconds', 'seconds', 'minutes', 'hours', 'days', 'weeks', 'months'] as const;
export type DurationUnit = (typeof durationUnits)[number];

const unitMs: Record<DurationUnit, number> = {
  milliseconds: 1,
  seconds: 1000,
  minutes: 60_000,
  hours: 3_600_000,
  days: 86_400_000,
  weeks: 7 * 86_400_000,
  months: 30 * 86_400_000,
};

/** Octelium's duration: an object with exactly one unit, `{hours: 4}`. */
export const Duration = z
  .strictObject(Object.fromEntries(durationUnits.map((u) => [u, z.number().int().nonnegative().optional()])) as {
    [K in DurationUnit]: z.ZodOptional<z.ZodNumber>;
  })
  .check((ctx) => {
    const set = Object.values(ctx.value).filter((v) => v !== undefined).length;
    if (set !== 1) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        message: `a duration has exactly one unit (one of ${durationUnits.join(', ')}), e.g. {hours: 4}`,
        params: { postern: 'ERR_ONE_OF' },
      });
    }
  });
export type Duration = z.infer<typeof Duration>;

/** Milliseconds in a Duration; undefined when the duration is undefined. */
export function durationMs(d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  for (const unit of durationUnits) {
    const v = d[unit];
    if (v !== undefined) return v * unitMs[unit];
  }
  return undefined;
}

const labelMap = z.record(z.string().max(253), z.string().max(1024));

export const Metadata = z.strictObject({
  name: z.string(),
  uid: z.string().optional(),
  displayName: z.string().max(256).optional(),
  description: z.string().max(4096).optional(),
  labels: labelMap.optional(),
  annotations: labelMap.optional(),
  createdAt: z.string().optional(),
  updatedAt: z.string().optional(),
  resourceVersion: z.string().optional(),
});
export type Metadata = z.infer<typeof Metadata>;

/** A reference to a Secret by name, `{fromSecret: name}`. */
export const SecretRef = z.strictObject({ fromSecret: z.string().min(1) });

/** Free-form attributes, visible to policies as `attrs`. */
export const Attrs = z.record(z.string(), z.unknown());
