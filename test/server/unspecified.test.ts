/**
 * The unspecified address (0.0.0.0, ::) is not a destination: Linux connects
 * it, and sends datagrams to it, to this host, which would take clients past
 * rules that keep them off loopback. CONNECT to it, given as an address, an
 * IPv4-mapped address, a SOCKS4 DSTIP or a name that resolves only to it, is
 * refused as host unreachable on both handshake engines, with or without
 * rules; UDP datagrams to it are dropped and counted on both relays.
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { after, before, describe, test } from 'node:test';
import type { Resolver } from '../../src/index.js';
import { isUnspecifiedAddress } from '../../src/protocol/address.js';
import { NativeUdpAssociation } from '../../src/relay/native-udp.js';
import { type UdpAssociationOptions, type UdpRelay, UdpAssociation } from '../../src/relay/udp.js';
import { createDirectDialer } from '../../src/upstream/dialer.js';
import { RawClient, connectRequest, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, startTcpServer } from '../helpers/server.js';
import { ENGINES, connectRequest6, recordOf, socks4Connect, startEngineProxy } from './native-helpers.js';

/** Names this test's resolver knows: one that only a blocklist would answer so, one with a usable address after it. */
const resolver: Resolver = {
  resolve: async (name) => {
    if (name === 'blocked.test') return [{ address: '0.0.0.0', family: 4 }];
    if (name === 'mixed.test') return [{ address: '::', family: 6 }, { address: '127.0.0.1', family: 4 }];
    if (name === '0') return [{ address: '0.0.0.0', family: 4 }]; // as getaddrinfo reads "0"
    throw Object.assign(new Error(`${name} not found`), { code: 'ENOTFOUND' });
  },
};

test('isUnspecifiedAddress: every spelling of 0.0.0.0 and ::, and nothing else', () => {
  for (const text of ['0.0.0.0', '::', '0:0:0:0:0:0:0:0', '::0', '::ffff:0.0.0.0', '::FFFF:0:0', '0:0:0:0:0:ffff:0:0']) {
    assert.equal(isUnspecifiedAddress(text), true, text);
  }
  for (const text of ['0.0.0.1', '::1', '::ffff:0.0.0.1', '0', '', 'ffff', '::ffff:0:0:0', '127.0.0.1', '0.0.0.0.', 'localhost']) {
    assert.equal(isUnspecifiedAddress(text), false, text);
  }
});

describe('the direct dialer and the unspecified address', () => {
  let listener: Fixture;
  before(async () => {
    listener = await startTcpServer((socket) => socket.destroy());
  });
  after(() => listener.close());

  test('0.0.0.0, :: and a name answering only 0.0.0.0 are refused as host unreachable; a name with another address connects to that one', async () => {
    const dialer = createDirectDialer({ resolver });
    const options = { timeoutMs: 5000 };
    for (const target of [
      { kind: 'ipv4', host: '0.0.0.0', port: listener.port },
      { kind: 'ipv6', host: '::', port: listener.port },
      { kind: 'domain', host: 'blocked.test', port: listener.port },
    ] as const) {
      await assert.rejects(dialer.dial(target, options), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_HOST_UNREACHABLE', target.host);
        assert.match(err.message, /the unspecified address: a connection to it would reach this host/);
        return true;
      });
    }
    const socket = await dialer.dial({ kind: 'domain', host: 'mixed.test', port: listener.port }, options);
    assert.equal(socket.remoteAddress, '127.0.0.1');
    socket.destroy();
  });
});

for (const engine of ENGINES) {
  describe(`CONNECT to the unspecified address (${engine} handshakes)`, () => {
    let v4: Fixture;
    let v6: Fixture;
    let reached = 0;
    before(async () => {
      v4 = await startTcpServer((socket) => { reached++; socket.end('loopback'); }, '127.0.0.1');
      v6 = await startTcpServer((socket) => { reached++; socket.end('loopback'); }, '::1');
    });
    after(async () => {
      await v4.close();
      await v6.close();
    });

    const cases = [
      { name: 'SOCKS5 0.0.0.0', bytes: () => Buffer.concat([hex('05 01 00'), connectRequest('0.0.0.0', v4.port)]), answer: '05 00 05 04 00 01 00000000 0000' },
      { name: 'SOCKS5 ::', bytes: () => Buffer.concat([hex('05 01 00'), connectRequest6('::', v6.port)]), answer: '05 00 05 04 00 01 00000000 0000' },
      { name: 'SOCKS5 ::ffff:0.0.0.0', bytes: () => Buffer.concat([hex('05 01 00'), connectRequest6('::ffff:0:0', v4.port)]), answer: '05 00 05 04 00 01 00000000 0000' },
      { name: 'SOCKS5 the name "0"', bytes: () => Buffer.concat([hex('05 01 00'), connectRequestByName('0', v4.port)]), answer: '05 00 05 04 00 01 00000000 0000' },
      { name: 'SOCKS4 DSTIP 0.0.0.0', bytes: () => socks4Connect('0.0.0.0', v4.port), answer: '00 5b 0000 00000000' },
    ];
    for (const rules of [undefined, [{ name: 'no-loopback', deny: { to: { nets: ['127.0.0.0/8', '::1/128'] } } }, { name: 'rest', allow: {} }]]) {
      for (const c of cases) {
        test(`${c.name} ${rules ? 'with rules denying loopback' : 'without rules'}: host unreachable, nothing reaches this host`, async () => {
          const proxy = await startEngineProxy(engine, { listen: [{ address: '127.0.0.1', port: 0, socks4: true }], resolver, ...(rules ? { rules } : {}) });
          try {
            const before = reached;
            const client = await RawClient.connect(proxy.port);
            client.write(c.bytes());
            assert.equal((await client.readToEnd()).toString('hex'), hex(c.answer).toString('hex'));
            const record = await recordOf(proxy, client.localPort);
            assert.equal(record.reason, 'connect-failed');
            assert.match(record.error ?? '', /unspecified address/);
            assert.equal(reached, before, 'no connection reached a loopback listener');
          } finally {
            await proxy.close();
          }
        });
      }
    }
  });
}

/** A SOCKS5 UDP header for an IPv4 or IPv6 literal, or a name, then the payload. */
function datagram(atyp: 1 | 3 | 4, address: Buffer, port: number, payload: string): Buffer {
  const length = atyp === 3 ? [address.length] : [];
  return Buffer.concat([Buffer.from([0, 0, 0, atyp, ...length]), address, Buffer.from([port >> 8, port & 0xff, ...Buffer.from(payload)])]);
}

for (const engine of ['splice', 'stream'] as const) {
  test(`UDP (${engine} relay): datagrams to 0.0.0.0, ::ffff:0.0.0.0 or a name answering 0.0.0.0 are dropped and counted; the next one to a real address is relayed`, async () => {
    const target = createSocket('udp4');
    const got: string[] = [];
    target.on('message', (msg) => got.push(msg.toString()));
    await new Promise<void>((resolve) => target.bind(0, '127.0.0.1', resolve));
    const port = target.address().port;
    const options: UdpAssociationOptions = {
      bindAddress: '127.0.0.1', clientAddress: '127.0.0.1', clientPort: null, resolver, lookupMs: 5000,
      limits: { maxDatagram: 65_535, pendingDatagrams: 64, cachedNames: 64 }, idleMs: 60_000, onIdle: () => {}, allows: null,
    };
    const relay: UdpRelay = engine === 'stream' ? await UdpAssociation.open(options) : NativeUdpAssociation.open(options)!;
    assert.ok(relay, 'the addon carries UDP (the test command builds it)');
    const client = createSocket('udp4');
    try {
      const mappedZero = Buffer.from('00000000000000000000ffff00000000', 'hex');
      for (const msg of [
        datagram(1, Buffer.from([0, 0, 0, 0]), port, 'zero'),
        datagram(4, mappedZero, port, 'mapped zero'),
        datagram(3, Buffer.from('blocked.test'), port, 'blocked name'),
        datagram(1, Buffer.from([127, 0, 0, 1]), port, 'real'),
      ]) {
        await new Promise<void>((resolve, reject) => client.send(msg, relay.address.port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
      }
      for (let i = 0; i < 500 && got.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      for (let i = 0; i < 500 && relay.counters.droppedInvalid < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.deepEqual(got, ['real'], 'only the datagram to a real address arrived');
      assert.equal(relay.counters.droppedInvalid, 3);
    } finally {
      relay.close();
      client.close();
      target.close();
    }
  });
}
