import { X509Certificate } from 'node:crypto';
import { connect, type PeerCertificate, type DetailedPeerCertificate } from 'node:tls';
import { PosternError } from '@postern/apis';

export interface FetchedCa {
  pem: string;
  fingerprint: string;
}

export function caFingerprint(pem: string): string {
  const hex = new X509Certificate(pem).fingerprint256;
  return `SHA256:${hex}`;
}

function splitHostPort(address: string): { host: string; port: number } {
  const m = address.match(/^\[?([^\]]+?)\]?:(\d+)$/);
  if (!m) throw new PosternError('ERR_USAGE', `"${address}" is not host:port`);
  return { host: m[1]!, port: Number(m[2]) };
}

/**
 * Trust on first use: connects without verifying, reads the chain the server sends and returns
 * its root (the cluster CA). The caller pins it; later connections verify against the pin.
 */
export async function fetchClusterCa(address: string, timeoutMs = 10_000): Promise<FetchedCa> {
  const { host, port } = splitHostPort(address);
  const chain = await new Promise<DetailedPeerCertificate>((resolve, reject) => {
    const sock = connect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'], servername: /^[\d.:]+$/.test(host) ? undefined : host });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new PosternError('ERR_STORE_UNAVAILABLE', `no TLS answer from ${address} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      const cert = sock.getPeerCertificate(true);
      sock.end();
      resolve(cert);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(new PosternError('ERR_STORE_UNAVAILABLE', `cannot reach the cluster API at ${address}: ${err.message}`));
    });
  });
  let root: PeerCertificate & { issuerCertificate?: DetailedPeerCertificate } = chain;
  for (let i = 0; i < 10 && root.issuerCertificate && root.issuerCertificate !== root && root.issuerCertificate.raw; i++) {
    if (root.issuerCertificate.fingerprint256 === root.fingerprint256) break;
    root = root.issuerCertificate;
  }
  const pem = `-----BEGIN CERTIFICATE-----\n${root.raw.toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END CERTIFICATE-----\n`;
  const x = new X509Certificate(pem);
  if (!x.ca) throw new PosternError('ERR_TLS_PIN_MISMATCH', `the server at ${address} sent no CA certificate in its chain; pass the cluster CA with --ca FILE`);
  return { pem, fingerprint: caFingerprint(pem) };
}
