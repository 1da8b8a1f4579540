/**
 * The SOCKS5 UDP request header (RFC 1928 §7), which prefixes every datagram
 * between the client and the UDP relay:
 *
 *   +----+------+------+----------+----------+----------+
 *   |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
 *   +----+------+------+----------+----------+----------+
 *   | 2  |  1   |  1   | Variable |    2     | Variable |
 *
 * A datagram arrives whole, so decoding is not incremental: a short one is
 * malformed, never NEED_MORE.
 */
import { SocksError } from '../errors.js';
import { type Destination, NEED_MORE, decodeAddress, encodedAddressLength, writeAddress } from './address.js';
import { checkByte } from './check.js';

export interface UdpHeader {
  /** Fragment number; 0 means a whole datagram. */
  readonly frag: number;
  readonly destination: Destination;
  /** Offset in the datagram where the payload starts. */
  readonly payloadOffset: number;
}

export function decodeUdpHeader(datagram: Uint8Array): UdpHeader {
  if (datagram.length < 4) throw new SocksError('ERR_MALFORMED', `UDP datagram of ${datagram.length} bytes has no header`);
  if (datagram[0] !== 0 || datagram[1] !== 0) throw new SocksError('ERR_MALFORMED', 'UDP header reserved bytes are not zero');
  const address = decodeAddress(datagram, 3);
  if (address === NEED_MORE) throw new SocksError('ERR_MALFORMED', 'UDP header is truncated');
  return { frag: datagram[2]!, destination: address.value, payloadOffset: 3 + address.bytesRead };
}

/**
 * The header alone, to send ahead of a payload without copying it:
 * `socket.send([header, payload])`. A relay encodes it once per peer.
 * Refuses (SocksError) a FRAG that is not an integer 0-255 (ERR_MALFORMED),
 * and what writeAddress refuses.
 */
export function encodeUdpHeader(destination: Destination, frag = 0): Buffer {
  checkByte(frag, 'FRAG');
  const buf = Buffer.allocUnsafe(3 + encodedAddressLength(destination));
  buf[0] = 0;
  buf[1] = 0;
  buf[2] = frag;
  writeAddress(buf, 3, destination);
  return buf;
}

/** Header and payload in one buffer, ready for `send`. */
export function encodeUdpDatagram(destination: Destination, payload: Uint8Array, frag = 0): Buffer {
  const header = encodeUdpHeader(destination, frag);
  const buf = Buffer.allocUnsafe(header.length + payload.length);
  buf.set(header, 0);
  buf.set(payload, header.length);
  return buf;
}

/**
 * Whether `datagram` starts with exactly the bytes of `header`, a header that
 * was decoded before: then it names the same destination with the same FRAG
 * and its payload starts at `header.length`, with no decoding (no strings, no
 * objects). Byte equality only: an empty `header` matches anything, so pass
 * only headers that decoded.
 */
export function startsWithUdpHeader(datagram: Uint8Array, header: Uint8Array): boolean {
  const length = header.length;
  if (datagram.length < length) return false;
  for (let i = 0; i < length; i++) {
    if (datagram[i] !== header[i]) return false;
  }
  return true;
}
