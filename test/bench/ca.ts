import { connect, type DetailedPeerCertificate } from 'node:tls';

/** The root of the chain a TLS server sends, as PEM (benchmarks trust the cluster CA this way). */
export async function fetchCa(address: string): Promise<string> {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  const cert = await new Promise<DetailedPeerCertificate>((resolve, reject) => {
    const s = connect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'] }, () => {
      resolve(s.getPeerCertificate(true));
      s.end();
    });
    s.once('error', reject);
  });
  let root = cert;
  while (root.issuerCertificate && root.issuerCertificate.fingerprint256 !== root.fingerprint256) root = root.issuerCertificate;
  return `-----BEGIN CERTIFICATE-----\n${root.raw.toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END CERTIFICATE-----\n`;
}
