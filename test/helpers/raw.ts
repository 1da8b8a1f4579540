/**
 * A byte-level client for handshake tests: write exact bytes, read exact
 * counts, and observe how the server ends the connection.
 */
import { once } from 'node:events';
import { type Socket, connect } from 'node:net';

export class RawClient {
  readonly socket: Socket;
  /** The client's port, kept because a closed socket forgets it: records are matched by it. */
  readonly localPort: number;
  #buffer = Buffer.alloc(0);
  #ended = false;
  #waiters: Array<() => void> = [];
  /** Resolves when the server ends or closes the connection: 'end' (FIN) or 'reset'. */
  readonly ended: Promise<'end' | 'reset'>;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.localPort = socket.localPort ?? 0;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake();
    });
    this.ended = new Promise((resolve) => {
      socket.on('end', () => resolve('end'));
      socket.on('error', () => resolve('reset'));
      socket.on('close', () => {
        this.#ended = true;
        this.#wake();
        resolve('end');
      });
    });
  }

  /**
   * `localPort`: connect from this port (rules on the client's port); by
   * default the kernel picks one. `localAddress`: from this address (another
   * client, as 127.0.0.2 is to a proxy on 127.0.0.1).
   */
  static async connect(port: number, host = '127.0.0.1', localPort?: number, localAddress?: string): Promise<RawClient> {
    const socket = connect({ port, host, ...(localPort === undefined ? {} : { localPort }), ...(localAddress === undefined ? {} : { localAddress }) });
    await once(socket, 'connect');
    return new RawClient(socket);
  }

  write(bytes: Buffer | string): void {
    this.socket.write(typeof bytes === 'string' ? Buffer.from(bytes.replace(/\s+/g, ''), 'hex') : bytes);
  }

  /** Exactly `n` bytes; rejects if the connection ends first. */
  async read(n: number): Promise<Buffer> {
    while (this.#buffer.length < n) {
      if (this.#ended) throw new Error(`connection ended after ${this.#buffer.length} of ${n} bytes`);
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }

  /** Everything until the server closes. */
  async readToEnd(): Promise<Buffer> {
    await this.ended;
    while (!this.#ended) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    const out = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    return out;
  }

  destroy(): void {
    this.socket.destroy();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}

/** Hex string (spaces allowed) to bytes. */
export function hex(text: string): Buffer {
  return Buffer.from(text.replace(/\s+/g, ''), 'hex');
}

/** SOCKS5 CONNECT request bytes for an IPv4 address. */
export function connectRequest(host: string, port: number, command = 1): Buffer {
  const parts = host.split('.').map(Number);
  return Buffer.from([5, command, 0, 1, ...parts, port >> 8, port & 0xff]);
}

/** SOCKS5 CONNECT request bytes for a domain name. */
export function connectRequestByName(name: string, port: number, command = 1): Buffer {
  return Buffer.concat([Buffer.from([5, command, 0, 3, name.length]), Buffer.from(name, 'latin1'), Buffer.from([port >> 8, port & 0xff])]);
}
