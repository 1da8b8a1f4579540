/**
 * Sets of IP networks that keep the two families apart, for `clients.allow`
 * and the rules' `from.nets` and `to.nets`.
 *
 * Node's BlockList checks an IPv4 address against an IPv6 subnet through the
 * address's IPv4-mapped form, so `::/0`, written to mean every IPv6 address,
 * would hold every IPv4 address too (and `deny: { to: { nets: ["::/0"] } }`
 * would deny all of IPv4). Here an IPv6 network holds IPv6 addresses only,
 * except an IPv4-mapped network (`::ffff:0:0/96` or inside it), which is the
 * IPv4 network it maps; and an IPv4-mapped address, in any spelling, is
 * checked as the IPv4 address it maps.
 */
import { BlockList, type SocketAddress, isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { unmappedAddress } from '../protocol/address.js';

export interface Network {
  readonly family: 4 | 6;
  readonly address: string;
  readonly prefix: number;
}

/** The network in the family it belongs to: an IPv4-mapped IPv6 network becomes the IPv4 network it maps. */
export function canonicalNetwork(net: Network): Network {
  if (net.family !== 6 || net.prefix < 96) return net;
  const address = ipaddr.IPv6.parse(net.address);
  if (!address.isIPv4MappedAddress()) return net;
  return { family: 4, address: address.toIPv4Address().toString(), prefix: net.prefix - 96 };
}

export class NetworkSet {
  readonly #v4 = new BlockList();
  readonly #v6 = new BlockList();

  constructor(networks: readonly Network[]) {
    for (const net of networks.map(canonicalNetwork)) {
      if (net.family === 4) this.#v4.addSubnet(net.address, net.prefix, 'ipv4');
      else this.#v6.addSubnet(net.address, net.prefix, 'ipv6');
    }
  }

  /** `address` must be unmapped already (see unmappedAddress): the rules' cache holds it so. */
  check(address: SocketAddress): boolean {
    return address.family === 'ipv4' ? this.#v4.check(address) : this.#v6.check(address);
  }

  /** Address text, mapped or not; false for text that is not an address. */
  has(text: string): boolean {
    const address = unmappedAddress(text);
    const family = isIP(address);
    if (family === 4) return this.#v4.check(address, 'ipv4');
    return family === 6 && this.#v6.check(address, 'ipv6');
  }
}
