/** UDP fixtures shared by the UDP ASSOCIATE tests (the npm `socks` client's and PySocks'). */
import { type RemoteInfo, type Socket as UdpSocket, createSocket } from 'node:dgram';

/**
 * A UDP socket bound to exactly address:port (0: any free port); IPv6
 * addresses get an IPv6-only socket. Rejects with the bind error (such as
 * EADDRINUSE), after closing the socket.
 */
export async function bindUdp(address: string, port = 0): Promise<UdpSocket> {
  const v6 = address.includes(':');
  const socket = createSocket({ type: v6 ? 'udp6' : 'udp4', ipv6Only: v6 });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, address, () => {
        socket.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    socket.close();
    throw err;
  }
  socket.on('error', () => {});
  return socket;
}

/** A UDP echo server on one or more addresses (same port on each); it keeps a list of what it got, and where. */
export class UdpEcho {
  readonly received: Array<{ data: Buffer; from: RemoteInfo; at: string }> = [];
  readonly port: number;
  readonly #sockets: UdpSocket[];

  private constructor(sockets: UdpSocket[], port: number) {
    this.#sockets = sockets;
    this.port = port;
    for (const socket of sockets) {
      const at = socket.address().address;
      socket.on('message', (data, from) => {
        this.received.push({ data, from, at });
        socket.send(data, from.port, from.address);
      });
    }
  }

  /** Echo on every one of `addresses` at one port (retried until a port is free on all). */
  static async start(...addresses: string[]): Promise<UdpEcho> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const sockets: UdpSocket[] = [];
      let port = 0;
      try {
        for (const address of addresses) {
          const socket = await bindUdp(address, port);
          sockets.push(socket);
          port = socket.address().port;
        }
        return new UdpEcho(sockets, port);
      } catch {
        for (const s of sockets) s.close();
      }
    }
    throw new Error(`no common free UDP port on ${addresses.join(', ')}`);
  }

  /** The payloads received so far, as Latin-1 text. */
  payloads(): string[] {
    return this.received.map((r) => r.data.toString('latin1'));
  }

  close(): Promise<void> {
    return Promise.all(this.#sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))).then(() => {});
  }
}
