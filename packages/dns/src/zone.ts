import { splitNamespaced, type AnyResource } from '@postern/apis';

export interface ServiceAddresses {
  v4: string[];
  v6: string[];
}

/**
 * Translator: Services → the private zone. `<svc>.<ns>.local.<domain>` and, for the default
 * namespace, `<svc>.local.<domain>`, each naming the Service's addresses. Pure.
 */
export function buildZone(services: readonly AnyResource[], domain: string): Map<string, ServiceAddresses> {
  const zone = new Map<string, ServiceAddresses>();
  const suffix = `local.${domain.toLowerCase()}`;
  for (const svc of services) {
    const addrs = ((svc.status as { addresses?: { dualStackIP?: { ipv4?: string; ipv6?: string } }[] } | undefined)?.addresses ?? []);
    const entry: ServiceAddresses = {
      v4: addrs.flatMap((a) => (a.dualStackIP?.ipv4 ? [a.dualStackIP.ipv4] : [])),
      v6: addrs.flatMap((a) => (a.dualStackIP?.ipv6 ? [a.dualStackIP.ipv6] : [])),
    };
    if (!entry.v4.length && !entry.v6.length) continue;
    const { name, namespace } = splitNamespaced(svc.metadata.name);
    zone.set(`${name}.${namespace}.${suffix}`, entry);
    if (namespace === 'default') zone.set(`${name}.${suffix}`, entry);
  }
  return zone;
}
