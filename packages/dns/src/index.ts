/**
 * @postern/dns — the private DNS: A/AAAA for Services under `local.<domain>` from the watch-fed
 * cache, NXDOMAIN for unknown Services, everything else forwarded. dns-packet over UDP and TCP.
 * Imports apis and store only.
 */
export { DnsServer, ttlSeconds, type DnsServerOptions } from './server.js';
export { buildZone, type ServiceAddresses } from './zone.js';
