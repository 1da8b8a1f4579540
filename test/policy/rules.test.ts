/**
 * Request rules as pure logic: the config schema that validates them, the
 * compiler, and `decide` against hand-made requests. No sockets.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ConfigError, validateConfig } from '../../src/config/load.js';
import { configJsonSchema } from '../../src/config/schema.js';
import { DEFAULT_DENY, type RuleRequest, type RuleSet, compileRules } from '../../src/policy/rules.js';
import { destination } from '../../src/protocol/address.js';

/** Validates `rules` through the one config schema, then compiles them. */
function ruleSet(rules: unknown[]): RuleSet {
  const config = validateConfig({ rules });
  const compiled = compileRules(config.rules);
  assert.ok(compiled, 'rules compile to a rule set');
  return compiled;
}

/** A request with defaults: 127.0.0.1:40000 CONNECT to 192.0.2.1:80, no user, listener 127.0.0.1:1080. */
function request(over: Partial<Omit<RuleRequest, 'destination'>> & { to?: string; port?: number; kind?: 'domain' } = {}): RuleRequest {
  const host = over.to ?? '192.0.2.1';
  const port = over.port ?? 80;
  return {
    clientAddress: over.clientAddress ?? '127.0.0.1',
    clientPort: over.clientPort ?? 40000,
    command: over.command ?? 'connect',
    destination: over.kind === 'domain' ? { kind: 'domain', host, port } : destination(host, port),
    user: over.user ?? null,
    listener: over.listener ?? '127.0.0.1:1080',
  };
}

/** The name of the rule deciding `req`, prefixed with the verdict: `allow:x` / `deny:y`. */
function verdict(set: RuleSet, req: RuleRequest): string {
  const d = set.decide(req);
  return `${d.allowed ? 'allow' : 'deny'}:${d.rule}`;
}

/** One allow rule with `match`, and nothing else: requests it does not match fall to default-deny. */
function only(match: Record<string, unknown>): RuleSet {
  return ruleSet([{ name: 'r', allow: match }]);
}

const YES = 'allow:r';
const NO = `deny:${DEFAULT_DENY}`;

/** The problems validateConfig reports for `input`. */
function problems(input: unknown): string[] {
  try {
    validateConfig(input);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return [...err.problems];
  }
  return [];
}

describe('request rules: decide', () => {
  test('no rules, or an empty list: nothing to decide (everything allowed)', () => {
    assert.equal(compileRules(undefined), null);
    assert.equal(compileRules(validateConfig({}).rules), null);
    assert.equal(compileRules(validateConfig({ rules: [] }).rules), null);
  });

  test('first match wins, and default-deny when none matches', () => {
    const set = ruleSet([
      { name: 'no-smtp', deny: { to: { ports: [25, 465, '587'] } } },
      { name: 'web', allow: { to: { ports: [80, 443] } } },
      { name: 'web-again', deny: { to: { ports: [80] } } },
    ]);
    assert.equal(set.size, 3);
    assert.equal(verdict(set, request({ port: 25 })), 'deny:no-smtp');
    assert.equal(verdict(set, request({ port: 587 })), 'deny:no-smtp');
    assert.equal(verdict(set, request({ port: 80 })), 'allow:web', 'the later deny of port 80 is never reached');
    assert.equal(verdict(set, request({ port: 8080 })), NO);
    // The decision objects are shared, never built per request.
    assert.equal(set.decide(request({ port: 443 })), set.decide(request({ port: 80 })));
  });

  test('a rule with no matchers matches everything', () => {
    const set = ruleSet([{ name: 'all', allow: {} }]);
    assert.equal(verdict(set, request({ command: 'udp', to: '0.0.0.0', port: 0 })), 'allow:all');
    assert.equal(verdict(set, request({ to: 'example.org', kind: 'domain' })), 'allow:all');
  });

  test('from.nets: IPv4 and IPv6 client networks', () => {
    const set = only({ from: { nets: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'] } });
    assert.equal(verdict(set, request({ clientAddress: '10.255.0.1' })), YES);
    assert.equal(verdict(set, request({ clientAddress: '11.0.0.1' })), NO);
    assert.equal(verdict(set, request({ clientAddress: '192.0.2.7' })), YES);
    assert.equal(verdict(set, request({ clientAddress: '192.0.2.8' })), NO);
    assert.equal(verdict(set, request({ clientAddress: '2001:db8:1::5' })), YES);
    assert.equal(verdict(set, request({ clientAddress: '2001:db9::5' })), NO);
    assert.equal(verdict(set, request({ clientAddress: '' })), NO, 'a client without an address matches no network');
  });

  test('from.nets: an IPv4-mapped IPv6 client matches IPv4 networks (and a mapped network matches plain IPv4)', () => {
    const set = only({ from: { nets: ['127.0.0.0/8'] } });
    assert.equal(verdict(set, request({ clientAddress: '::ffff:127.0.0.1' })), YES);
    assert.equal(verdict(set, request({ clientAddress: '::ffff:128.0.0.1' })), NO);
    const mapped = only({ from: { nets: ['::ffff:10.0.0.0/104'] } });
    assert.equal(verdict(mapped, request({ clientAddress: '10.1.2.3' })), YES);
    assert.equal(verdict(mapped, request({ clientAddress: '11.1.2.3' })), NO);
  });

  test('an IPv6 network holds IPv6 addresses only: "::/0" is not every IPv4 address too', () => {
    // Node's BlockList alone would check 127.0.0.1 against ::/0 as ::ffff:127.0.0.1, inside it.
    const set = ruleSet([
      { name: 'no-ipv6', deny: { to: { nets: ['::/0'] } } },
      { name: 'ipv6-clients', allow: { from: { nets: ['::/0'] }, to: { ports: [443] } } },
      { name: 'rest', allow: {} },
    ]);
    assert.equal(verdict(set, request({ to: '127.0.0.1' })), 'allow:rest');
    assert.equal(verdict(set, request({ to: '::ffff:7f00:1' })), 'allow:rest', 'an IPv4-mapped destination is IPv4');
    assert.equal(verdict(set, request({ to: '::1' })), 'deny:no-ipv6');
    assert.equal(verdict(set, request({ to: '::ffff:7f00:1', port: 443, clientAddress: '::1' })), 'allow:ipv6-clients');
    assert.equal(verdict(set, request({ to: '127.0.0.1', port: 443, clientAddress: '127.0.0.1' })), 'allow:rest');
    assert.equal(verdict(set, request({ to: '127.0.0.1', port: 443, clientAddress: '::ffff:127.0.0.1' })), 'allow:rest');
  });

  test('an IPv4-mapped network written in hex (::ffff:a00:0/104) is the IPv4 network it maps', () => {
    const set = only({ to: { nets: ['::ffff:a00:0/104'] }, from: { nets: ['::ffff:7f00:0/104'] } });
    assert.equal(verdict(set, request({ to: '10.1.2.3', clientAddress: '127.0.0.1' })), YES);
    assert.equal(verdict(set, request({ to: '::ffff:10.1.2.3', clientAddress: '::ffff:127.0.0.2' })), YES);
    assert.equal(verdict(set, request({ to: '11.1.2.3', clientAddress: '127.0.0.1' })), NO);
    assert.equal(verdict(set, request({ to: '10.1.2.3', clientAddress: '128.0.0.1' })), NO);
  });

  test('many distinct client addresses (past what the rule set remembers) are all decided correctly', () => {
    const set = only({ from: { nets: ['10.0.0.0/16'] } });
    for (let i = 0; i < 5000; i++) {
      const inside = `10.0.${i >> 8}.${i & 0xff}`;
      const outside = `10.1.${i >> 8}.${i & 0xff}`;
      assert.equal(verdict(set, request({ clientAddress: inside })), YES, inside);
      assert.equal(verdict(set, request({ clientAddress: `::ffff:${outside}` })), NO, outside);
    }
    assert.equal(verdict(set, request({ clientAddress: '10.0.0.1' })), YES, 'an address seen long ago');
  });

  test('from.ports: client source port ranges, edges included', () => {
    const set = only({ from: { ports: ['1024-2048', 5000] } });
    for (const [port, expected] of [[1023, NO], [1024, YES], [2048, YES], [2049, NO], [4999, NO], [5000, YES], [5001, NO]] as const) {
      assert.equal(verdict(set, request({ clientPort: port })), expected, `client port ${port}`);
    }
  });

  test('to.ports: single ports, "a-b" ranges, 1 and 65535', () => {
    const set = only({ to: { ports: [1, '100-200', '65535'] } });
    for (const [port, expected] of [[1, YES], [2, NO], [99, NO], [100, YES], [150, YES], [200, YES], [201, NO], [65534, NO], [65535, YES], [0, NO]] as const) {
      assert.equal(verdict(set, request({ port })), expected, `port ${port}`);
    }
  });

  test('to.nets: an address destination matches; a name never does (decided before DNS)', () => {
    const set = only({ to: { nets: ['10.0.0.0/8', '::1/128'] } });
    assert.equal(verdict(set, request({ to: '10.1.2.3' })), YES);
    assert.equal(verdict(set, request({ to: '172.16.0.1' })), NO);
    assert.equal(verdict(set, request({ to: '::1' })), YES);
    assert.equal(verdict(set, request({ to: '::ffff:10.0.0.9' })), YES, 'IPv4-mapped destination');
    assert.equal(verdict(set, request({ to: 'localhost', kind: 'domain' })), NO, 'a name is not resolved to decide');
  });

  test('to.nets: a "name" that is an address literal counts as that address (no bypass by ATYP)', () => {
    const set = ruleSet([
      { name: 'no-10', deny: { to: { nets: ['10.0.0.0/8'] } } },
      { name: 'rest', allow: {} },
    ]);
    for (const literal of ['10.0.0.1', '10.1', '167772161', '0x0a.0.0.1', '012.0.0.1', '::ffff:10.0.0.1']) {
      assert.equal(verdict(set, request({ to: literal, kind: 'domain' })), 'deny:no-10', literal);
    }
    assert.equal(verdict(set, request({ to: '10.example', kind: 'domain' })), 'allow:rest');
    assert.equal(verdict(set, request({ to: '1password.com', kind: 'domain' })), 'allow:rest');
  });

  test('to.nets: a numeric name with a trailing dot is a name, as getaddrinfo takes it (it asks DNS): an allow by nets does not let it through', () => {
    const set = ruleSet([{ name: 'only-10', allow: { to: { nets: ['10.0.0.0/8'] } } }]);
    assert.equal(verdict(set, request({ to: '10.0.0.1', kind: 'domain' })), 'allow:only-10');
    assert.equal(verdict(set, request({ to: '0X0A000001', kind: 'domain' })), 'allow:only-10', 'hex in capitals is an address too');
    for (const name of ['10.0.0.1.', '10.1.', '167772161.']) {
      assert.equal(verdict(set, request({ to: name, kind: 'domain' })), 'deny:default-deny', name);
    }
  });

  test('to.hosts: exact names and *.suffix patterns, case-insensitive', () => {
    const set = only({ to: { hosts: ['*.corp.example', 'Example.ORG'] } });
    const name = (host: string) => verdict(set, request({ to: host, kind: 'domain' }));
    assert.equal(name('a.corp.example'), YES);
    assert.equal(name('a.b.corp.example'), YES);
    assert.equal(name('A.B.CORP.Example'), YES);
    assert.equal(name('corp.example'), NO, 'the bare suffix is not a subdomain');
    assert.equal(name('xcorp.example'), NO, 'a suffix matches whole labels only');
    assert.equal(name('corp.example.evil'), NO);
    assert.equal(name('example.org'), YES);
    assert.equal(name('EXAMPLE.org'), YES);
    assert.equal(name('example.org.'), YES, 'a fully qualified name with its trailing dot');
    assert.equal(name('www.example.org'), NO, 'an exact name does not match subdomains');
  });

  test('to.hosts: an address destination matches only the same literal', () => {
    const set = only({ to: { hosts: ['*.corp.example', '192.0.2.5', '2001:db8::1'] } });
    assert.equal(verdict(set, request({ to: '192.0.2.5' })), YES);
    assert.equal(verdict(set, request({ to: '192.0.2.6' })), NO);
    assert.equal(verdict(set, request({ to: '2001:db8:0:0::1' })), YES, 'the same IPv6 address, written longer');
    assert.equal(verdict(set, request({ to: '192.0.2.5', kind: 'domain' })), YES, 'a literal sent as a name');
    assert.equal(verdict(set, request({ to: '10.0.0.1' })), NO, 'a name pattern never matches an address');
  });

  test('to.nets and to.hosts in one rule: the destination matches either; to.ports must match too', () => {
    const set = only({ to: { nets: ['10.0.0.0/8'], hosts: ['*.corp.example'], ports: ['1-1024'] } });
    assert.equal(verdict(set, request({ to: '10.0.0.1', port: 22 })), YES);
    assert.equal(verdict(set, request({ to: 'db.corp.example', kind: 'domain', port: 22 })), YES);
    assert.equal(verdict(set, request({ to: 'db.corp.example', kind: 'domain', port: 5432 })), NO);
    assert.equal(verdict(set, request({ to: '11.0.0.1', port: 22 })), NO);
    assert.equal(verdict(set, request({ to: 'example.org', kind: 'domain', port: 22 })), NO);
  });

  test('commands', () => {
    const set = only({ commands: ['connect', 'udp'] });
    assert.equal(verdict(set, request({ command: 'connect' })), YES);
    assert.equal(verdict(set, request({ command: 'udp' })), YES);
    assert.equal(verdict(set, request({ command: 'bind' })), NO);
  });

  test('UDP ASSOCIATE (no destination): a deny with `to` is passed over, an allow with `to` opens it', () => {
    const set = ruleSet([
      { name: 'no-smtp', deny: { to: { ports: [25] } } },
      { name: 'dns', allow: { commands: ['udp'], to: { nets: ['192.0.2.53/32'], ports: [53] } } },
      { name: 'no-udp-from-lan', deny: { commands: ['udp'], from: { nets: ['10.0.0.0/8'] } } },
    ]);
    const association = (over: Parameters<typeof request>[0] = {}) => {
      const d = set.decideAssociation(request({ command: 'udp', to: '0.0.0.0', port: 0, ...over }));
      return `${d.allowed ? 'allow' : 'deny'}:${d.rule}`;
    };
    assert.equal(association(), 'allow:dns', 'the deny of port 25 takes only some destinations away');
    assert.equal(association({ command: 'connect' }), NO, 'only for UDP');
    const noUdp = ruleSet([
      { name: 'no-udp-from-lan', deny: { commands: ['udp'], from: { nets: ['10.0.0.0/8'] } } },
      { name: 'dns', allow: { to: { ports: [53] } } },
    ]);
    assert.equal(noUdp.decideAssociation(request({ command: 'udp', clientAddress: '10.1.1.1' })).rule, 'no-udp-from-lan');
    assert.equal(noUdp.decideAssociation(request({ command: 'udp', clientAddress: '11.1.1.1' })).rule, 'dns');
    assert.equal(ruleSet([{ name: 'web', deny: { to: { ports: [80] } } }]).decideAssociation(request({ command: 'udp' })).rule, DEFAULT_DENY);
  });

  test('each UDP datagram is decided by its destination, as CONNECT is', () => {
    const set = ruleSet([
      { name: 'no-smtp', deny: { to: { ports: [25] } } },
      { name: 'dns', allow: { commands: ['udp'], to: { nets: ['192.0.2.53/32'], hosts: ['dns.example'], ports: [53] } } },
    ]);
    assert.equal(verdict(set, request({ command: 'udp', to: '192.0.2.53', port: 53 })), 'allow:dns');
    assert.equal(verdict(set, request({ command: 'udp', to: 'dns.example', kind: 'domain', port: 53 })), 'allow:dns');
    assert.equal(verdict(set, request({ command: 'udp', to: '192.0.2.53', port: 25 })), 'deny:no-smtp');
    assert.equal(verdict(set, request({ command: 'udp', to: '192.0.2.54', port: 53 })), NO);
    assert.equal(verdict(set, request({ command: 'bind', to: '192.0.2.1', port: 25 })), 'deny:no-smtp', 'BIND is matched on its expected peer');
  });

  test('checksUdpDestinations: only when a rule that may match UDP has a `to` matcher', () => {
    assert.equal(ruleSet([{ name: 'a', allow: {} }]).checksUdpDestinations, false);
    assert.equal(ruleSet([{ name: 'a', deny: { commands: ['connect'], to: { ports: [25] } } }, { name: 'b', allow: {} }]).checksUdpDestinations, false);
    assert.equal(ruleSet([{ name: 'a', deny: { to: { ports: [25] } } }]).checksUdpDestinations, true);
    assert.equal(ruleSet([{ name: 'a', allow: { commands: ['udp'], to: { hosts: ['x.example'] } } }]).checksUdpDestinations, true);
  });

  test('users: exact, case-sensitive; a session without a user matches no users list', () => {
    const set = only({ users: ['alice', 'bob'] });
    assert.equal(verdict(set, request({ user: 'alice' })), YES);
    assert.equal(verdict(set, request({ user: 'bob' })), YES);
    assert.equal(verdict(set, request({ user: 'Alice' })), NO);
    assert.equal(verdict(set, request({ user: 'carol' })), NO);
    assert.equal(verdict(set, request({ user: null })), NO);
  });

  test('listeners: the label sessions carry; IPv6 written in any form', () => {
    const set = only({ listeners: ['127.0.0.1:1080', '[0:0::1]:1081'] });
    assert.equal(verdict(set, request({ listener: '127.0.0.1:1080' })), YES);
    assert.equal(verdict(set, request({ listener: '127.0.0.1:1081' })), NO);
    assert.equal(verdict(set, request({ listener: '[::1]:1081' })), YES);
  });

  test('all matchers of a rule must match (AND)', () => {
    const set = only({
      from: { nets: ['127.0.0.0/8'], ports: ['1024-65535'] },
      to: { hosts: ['example.org'], ports: [443] },
      commands: ['connect'],
      users: ['alice'],
      listeners: ['127.0.0.1:1080'],
    });
    const good = { clientAddress: '127.0.0.1', clientPort: 40000, to: 'example.org', kind: 'domain' as const, port: 443, user: 'alice', listener: '127.0.0.1:1080' };
    assert.equal(verdict(set, request(good)), YES);
    assert.equal(verdict(set, request({ ...good, clientAddress: '10.0.0.1' })), NO);
    assert.equal(verdict(set, request({ ...good, clientPort: 1000 })), NO);
    assert.equal(verdict(set, request({ ...good, to: 'example.com' })), NO);
    assert.equal(verdict(set, request({ ...good, port: 80 })), NO);
    assert.equal(verdict(set, request({ ...good, command: 'bind' })), NO);
    assert.equal(verdict(set, request({ ...good, user: 'bob' })), NO);
    assert.equal(verdict(set, request({ ...good, listener: '127.0.0.1:1081' })), NO);
  });

  test('property: to.ports matching agrees with a naive check over the written ranges', () => {
    const entry = fc.oneof(
      fc.integer({ min: 1, max: 65535 }),
      fc.tuple(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 1, max: 65535 })).map(([a, b]) => `${Math.min(a, b)}-${Math.max(a, b)}`),
      fc.integer({ min: 1, max: 65535 }).map(String),
    );
    const naive = (entries: (number | string)[], port: number) =>
      entries.some((e) => {
        const [low, high = low] = String(e).split('-').map(Number) as [number, number?];
        return port >= low && port <= high;
      });
    fc.assert(
      fc.property(fc.array(entry, { minLength: 1, maxLength: 12 }), fc.array(fc.integer({ min: 0, max: 65535 }), { minLength: 1, maxLength: 20 }), (entries, ports) => {
        const set = only({ to: { ports: entries } });
        const probes = [...ports, ...entries.flatMap((e) => String(e).split('-').map(Number).flatMap((p) => [p - 1, p, p + 1]))];
        for (const port of probes) {
          if (port < 0 || port > 65535) continue;
          assert.equal(set.decide(request({ port })).allowed, naive(entries, port), `port ${port} in ${JSON.stringify(entries)}`);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('request rules: configuration errors name the key path', () => {
  test('both or neither of allow / deny', () => {
    assert.deepEqual(problems({ rules: [{ name: 'a', allow: {}, deny: {} }] }), ['rules[0]: a rule has allow or deny, not both']);
    assert.deepEqual(problems({ rules: [{ name: 'a', allow: {} }, { name: 'b' }] }), ['rules[1]: a rule needs allow or deny']);
  });

  test('duplicate names, a missing name, a reserved name', () => {
    assert.deepEqual(problems({ rules: [{ name: 'x', allow: {} }, { name: 'y', allow: {} }, { name: 'x', deny: {} }] }), [
      'rules[2].name: duplicate rule name "x" (first at rules[0])',
    ]);
    assert.match(problems({ rules: [{ allow: {} }] }).join('\n'), /^rules\[0\]\.name: /);
    assert.match(problems({ rules: [{ name: 'default-deny', deny: {} }] }).join('\n'), /^rules\[0\]\.name: .*implicit last rule/);
    assert.match(problems({ rules: [{ name: 'has space', deny: {} }] }).join('\n'), /^rules\[0\]\.name: /);
  });

  test('bad port ranges: 0, above 65535, a > b, garbage', () => {
    const found = problems({ rules: [{ name: 'a', allow: {} }, { name: 'b', allow: {} }, { name: 'p', deny: { to: { ports: [25, 0, '70000', '20-10', 'smtp', true] }, from: { ports: ['0-5'] } } }] });
    const expected = [
      /^rules\[2\]\.deny\.to\.ports\[1\]: .*1-65535/,
      /^rules\[2\]\.deny\.to\.ports\[2\]: .*1-65535/,
      /^rules\[2\]\.deny\.to\.ports\[3\]: .*starts above its end/,
      /^rules\[2\]\.deny\.to\.ports\[4\]: /,
      /^rules\[2\]\.deny\.to\.ports\[5\]: /,
      /^rules\[2\]\.deny\.from\.ports\[0\]: .*1-65535/,
    ];
    for (const pattern of expected) assert.ok(found.some((line) => pattern.test(line)), `${pattern} in\n${found.join('\n')}`);
    assert.equal(found.length, expected.length, found.join('\n'));
  });

  test('bad CIDRs, host patterns, listeners, commands, unknown keys, empty lists', () => {
    const found = problems({
      rules: [
        {
          name: 'bad',
          allow: {
            from: { nets: ['10.0.0.0/33'] },
            to: { nets: ['300.1.1.1'], hosts: ['a.*.example', '*', '[::1]'] },
            commands: ['connect', 'ftp'],
            listeners: ['1080'],
            users: [],
            groups: ['staff'],
          },
        },
      ],
    });
    const expected = [
      /^rules\[0\]\.allow\.from\.nets\[0\]: /,
      /^rules\[0\]\.allow\.to\.nets\[0\]: /,
      /^rules\[0\]\.allow\.to\.hosts\[0\]: /,
      /^rules\[0\]\.allow\.to\.hosts\[1\]: /,
      /^rules\[0\]\.allow\.to\.hosts\[2\]: /,
      /^rules\[0\]\.allow\.commands\[1\]: .*connect/,
      /^rules\[0\]\.allow\.listeners\[0\]: /,
      /^rules\[0\]\.allow\.users: /,
      /^rules\[0\]\.allow\.groups: unknown key/,
    ];
    for (const pattern of expected) assert.ok(found.some((line) => pattern.test(line)), `${pattern} in\n${found.join('\n')}`);
    assert.equal(found.length, expected.length, found.join('\n'));
    assert.deepEqual(problems({ rules: [{ name: 'a', deny: { to: { port: [25] } } }] }), ['rules[0].deny.to.port: unknown key']);
  });

  test('a valid rule set passes, and the JSON Schema export describes `rules`', () => {
    assert.deepEqual(
      problems({
        rules: [
          { name: 'no-smtp', deny: { to: { ports: [25, 465, '587'] } } },
          {
            name: 'lan-only',
            allow: {
              from: { nets: ['127.0.0.0/8', '::1/128'], ports: ['1024-65535'] },
              to: { nets: ['10.0.0.0/8'], hosts: ['*.corp.example', 'example.org'], ports: ['1-65535'] },
              commands: ['connect', 'bind', 'udp'],
              users: ['alice', 'bob'],
              listeners: ['127.0.0.1:1080'],
            },
          },
        ],
      }),
      [],
    );
    const schema = configJsonSchema() as { properties: Record<string, { type?: string; items?: { required?: string[] } }> };
    assert.equal(schema.properties.rules?.type, 'array');
    assert.deepEqual(schema.properties.rules?.items?.required, ['name']);
  });
});

test('a listeners entry with port 0 is refused: listeners are named by the port they bound, so it could match nothing', () => {
  assert.deepEqual(problems({ rules: [{ name: 'a', allow: { listeners: ['127.0.0.1:0', '[::1]:00', '127.0.0.1:1080', '[::1]:1080'] } }] }), [
    'rules[0].allow.listeners[0]: port 0 matches no listener: a listener is named by the port it bound (see the listening lines)',
    'rules[0].allow.listeners[1]: port 0 matches no listener: a listener is named by the port it bound (see the listening lines)',
  ]);
});
