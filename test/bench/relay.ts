/**
 * The least a proxy written for Node can do: relay bytes between each client connection and one
 * upstream connection of its own (`net.Socket.pipe`), no HTTP parsing at all. A reference for the
 * latency rows: what Node's runtime and this machine add at a given rate, under anything the
 * proxy does. Runs as its own process:  node relay.js <upstream-port>
 * and prints the port it listens on (loopback).
 */
import { connect, createServer } from 'node:net';

const upstreamPort = Number(process.argv[2]);
const server = createServer((client) => {
  const upstream = connect(upstreamPort, '127.0.0.1');
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
});
server.listen(0, '127.0.0.1', () => console.log((server.address() as { port: number }).port));
