import { createHash, webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';
import type { ResourceStore } from '@postern/store';

x509.cryptoProvider.set(webcrypto as never);

const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const caKey = 'cluster/ca';

interface StoredCa {
  certPem: string;
  keyPkcs8: string;
}

export interface ClusterTls {
  caPem: string;
  /** SHA-256 of the CA certificate (DER), as `SHA256:<hex pairs>`; `postern login` shows the same. */
  caFingerprint: string;
  /** Server key (PKCS#8 PEM) and chain (server certificate then CA). */
  key: string;
  cert: string;
}

export function fingerprint(pem: string): string {
  const der = new x509.X509Certificate(pem).rawData;
  const hex = createHash('sha256').update(Buffer.from(der)).digest('hex').toUpperCase();
  return `SHA256:${hex.match(/../g)!.join(':')}`;
}

const pem = (label: string, der: ArrayBuffer) => `-----BEGIN ${label}-----\n${Buffer.from(der).toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END ${label}-----\n`;

/**
 * The cluster CA (made once, kept in the store's internal table) and a fresh server certificate
 * for `names` (DNS names and IP addresses) signed by it. Several replicas share one CA.
 */
/**
 * Issues leaf certificates for hostnames on demand, signed by the cluster CA, for the public
 * HTTPS listener (`<svc>.<domain>`, `<svc>.<ns>.<domain>`); each name is issued once per process.
 */
export class LeafIssuer {
  private readonly issued = new Map<string, Promise<{ key: string; cert: string }>>();

  private constructor(private readonly ca: StoredCa, private readonly now: () => Date) {}

  static async open(store: ResourceStore, domain: string, now: () => Date): Promise<LeafIssuer> {
    await clusterTls(store, domain, [`api.${domain}`], now());
    return new LeafIssuer((await store.getInternal<StoredCa>(caKey))!, now);
  }

  certFor(hostname: string): Promise<{ key: string; cert: string }> {
    const name = hostname.toLowerCase();
    let p = this.issued.get(name);
    if (!p) {
      p = issueLeaf(this.ca, [name], this.now());
      this.issued.set(name, p);
    }
    return p;
  }
}

async function issueLeaf(ca: StoredCa, names: readonly string[], now: Date): Promise<{ key: string; cert: string }> {
  const caCert = new x509.X509Certificate(ca.certPem);
  const caPrivate = await webcrypto.subtle.importKey('pkcs8', Buffer.from(ca.keyPkcs8, 'base64'), alg, false, ['sign']);
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const sans = [...new Set(names)].map((n) => (isIP(n) ? { type: 'ip' as const, value: n } : { type: 'dns' as const, value: n }));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex'),
    subject: `CN=${names[0]}`,
    issuer: caCert.subject,
    notBefore: new Date(now.getTime() - 3_600_000),
    notAfter: new Date(now.getTime() + 365 * 86_400_000),
    signingKey: caPrivate,
    publicKey: keys.publicKey,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(sans),
    ],
  });
  const keyDer = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { key: pem('PRIVATE KEY', keyDer), cert: `${cert.toString('pem')}\n${ca.certPem}` };
}

export async function clusterTls(store: ResourceStore, domain: string, names: readonly string[], now: Date): Promise<ClusterTls> {
  let ca = await store.getInternal<StoredCa>(caKey);
  if (!ca) {
    const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex'),
      name: `CN=Postern cluster CA ${domain}`,
      notBefore: new Date(now.getTime() - 3_600_000),
      notAfter: new Date(now.getTime() + 10 * 365 * 86_400_000),
      keys,
      signingAlgorithm: alg,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      ],
    });
    const keyDer = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
    ca = await store.putInternal<StoredCa>(caKey, { certPem: cert.toString('pem'), keyPkcs8: Buffer.from(keyDer).toString('base64') }, { onlyIfAbsent: true });
  }
  const leaf = await issueLeaf(ca, names.length ? names : [`api.${domain}`], now);
  return { caPem: ca.certPem, caFingerprint: fingerprint(ca.certPem), key: leaf.key, cert: leaf.cert };
}
