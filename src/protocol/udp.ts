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

/** Header and payload in one buffer, ready for `send`. */
export function encodeUdpDatagram(destination: Destination, payload: Uint8Array, frag = 0): Buffer {
  const headerLength = 3 + encodedAddressLength(destination);
  const buf = Buffer.allocUnsafe(headerLength + payload.length);
  buf[0] = 0;
  buf[1] = 0;
  buf[2] = frag;
  writeAddress(buf, 3, destination);
  buf.set(payload, headerLength);
  return buf;
}
