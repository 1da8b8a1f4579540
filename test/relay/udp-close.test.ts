/**
 * Datagrams an association had taken but not yet sent when it closes are
 * counted as dropped, never lost silently: those waiting for a name lookup
 * (both relays), and, with the native relay, those the relay thread had
 * handed to JavaScript that JavaScript had not taken yet.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { describe, test } from 'node:test';
import { NativeUdpAssociation } from '../../src/relay/native-udp.js';
import { type UdpAssociationOptions, type UdpRelay, UdpAssociation } from '../../src/relay/udp.js';
import type { Resolver } from '../../src/upstream/resolver.js';

/** A resolver that never answers, and counts the names it was asked. */
function silentResolver(): Resolver & { readonly asked: string[] } {
  const asked: string[] = [];
  return { asked, resolve: (host: string) => (asked.push(host), new Promise(() => {})) };
}

function options(resolver: Resolver): UdpAssociationOptions {
  return {
    bindAddress: '127.0.0.1',
    clientAddress: '127.0.0.1',
    clientPort: null,
    resolver,
    lookupMs: 60_000,
    limits: { maxDatagram: 65_535, pendingDatagrams: 64, cachedNames: 64 },
    idleMs: 60_000,
    onIdle: () => {},
    allows: null,
  };
}

/** A SOCKS5 UDP header for `name`:`port` (ATYP 3), then the payload. */
function toName(name: string, port: number, payload: string): Buffer {
  const header = Buffer.from([0, 0, 0, 3, name.length, ...Buffer.from(name), port >> 8, port & 0xff]);
  return Buffer.concat([header, Buffer.from(payload)]);
}

async function openRelay(engine: 'splice' | 'stream', resolver: Resolver): Promise<UdpRelay> {
  if (engine === 'stream') return UdpAssociation.open(options(resolver));
  const native = NativeUdpAssociation.open(options(resolver));
  assert.ok(native, 'the addon carries UDP (the test command builds it)');
  return native;
}

for (const engine of ['splice', 'stream'] as const) {
  describe(`an association closing with datagrams still in hand (${engine} relay)`, () => {
    test('datagrams waiting for a name lookup are counted as dropped', async () => {
      const resolver = silentResolver();
      const relay = await openRelay(engine, resolver);
      const client = createSocket('udp4');
      try {
        const { port } = relay.address;
        for (const name of ['a.invalid', 'b.invalid', 'c.invalid']) client.send(toName(name, 9, 'held'), port, '127.0.0.1');
        for (let i = 0; i < 500 && resolver.asked.length < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10));
        assert.equal(resolver.asked.length, 3, 'each datagram is waiting for its lookup');
        relay.close();
        assert.equal(relay.counters.droppedAtClose, 3);
        assert.equal(relay.counters.datagramsUp, 0);
      } finally {
        relay.close();
        client.close();
      }
    });
  });
}

describe('the native relay closing while JavaScript is busy', () => {
  test('datagrams the relay thread handed to JavaScript, not yet taken, are counted as dropped', async () => {
    const resolver = silentResolver();
    const relay = await openRelay('splice', resolver);
    try {
      // Names go to JavaScript. This thread is blocked while Python sends five
      // and gives the relay thread time to hand them over; then the association
      // closes before the event loop runs again, so none was taken.
      const send = [
        'import socket, sys, time',
        's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
        'for i in range(5): s.sendto(b"\\0\\0\\0\\3\\x09a.invalid\\0\\x09held", ("127.0.0.1", int(sys.argv[1])))',
        'time.sleep(0.3)',
      ].join('\n');
      execFileSync('python3', ['-c', send, String(relay.address.port)]);
      relay.close();
      assert.equal(relay.counters.droppedAtClose, 5);
      assert.deepEqual(resolver.asked, [], 'JavaScript never saw them');
      await new Promise((resolve) => setTimeout(resolve, 50)); // their deliveries find the association gone
      assert.deepEqual(resolver.asked, []);
      assert.equal(relay.counters.droppedAtClose, 5);
    } finally {
      relay.close();
    }
  });
});
