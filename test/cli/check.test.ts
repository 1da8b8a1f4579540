/**
 * `socksgate --check`, configuration errors, users-file errors and
 * `socksgate schema`, run as a child process against the compiled CLI.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { startEchoServer } from '../helpers/server.js';
import { Daemon, echo, lines, runCli, socksConnect, startDaemon, tempDir } from './helpers.js';

const CONFIG_PROBLEM = /^socksgate: config: /;

describe('socksgate --check', () => {
  let dir: ReturnType<typeof tempDir>;
  const write = (name: string, text: string): string => {
    const path = dir.file(name);
    writeFileSync(path, text);
    return path;
  };

  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());

  it('accepts a valid YAML file: exit 0, nothing on stderr', async () => {
    const file = write(
      'valid.yaml',
      [
        'listen:',
        '  - address: 127.0.0.1',
        '    port: 1081',
        '    socks4: true',
        'auth:',
        '  methods: [userpass]',
        '  users:',
        '    - name: alice',
        '      password: wonderland',
        'clients:',
        '  allow: [127.0.0.0/8, "::1"]',
        'timeouts:',
        '  handshake: 5s',
        '  connect: 500ms',
        '  idle: 1h',
        '  shutdownGrace: 2000',
        'log:',
        '  level: warn',
        '  format: json',
        '',
      ].join('\n'),
    );
    const r = await runCli(['--check', '--config', file]);
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
    assert.match(r.stdout.toString(), /configuration is valid/);
  });

  it('reports a port out of range with its key path', async () => {
    const file = write('port.yaml', 'listen:\n  - address: 127.0.0.1\n    port: 70000\n');
    const r = await runCli(['--check', '-c', file]);
    assert.notEqual(r.code, 0);
    assert.equal(r.stdout.toString(), '');
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.match(problems[0]!, CONFIG_PROBLEM);
    assert.match(problems[0]!, /listen\[0\]\.port: /);
    assert.match(problems[0]!, /65535/);
  });

  it('reports a YAML syntax error on one line naming the file and position, exit 2', async () => {
    const file = write('syntax.yaml', 'listen: [\n  a: b\n');
    const r = await runCli(['--check', '-c', file]);
    assert.equal(r.code, 2);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.match(problems[0]!, /syntax\.yaml: .*at line \d+, column \d+$/);
  });

  it('refuses a file whose top level is not a mapping (a list, or a key without its colon), exit 2; an empty file means the defaults', async () => {
    for (const [name, text, found] of [
      ['list.yaml', '- listen: 127.0.0.1:1080\n', 'a list'],
      ['nocolon.yaml', 'listen 127.0.0.1:1081\n', 'a string ("listen 127.0.0.1:1081")'],
    ] as const) {
      const r = await runCli(['--check', '-c', write(name, text)]);
      assert.equal(r.code, 2, r.stderr);
      assert.deepEqual(lines(r.stderr), [`socksgate: config: ${dir.file(name)}: the top level must be a mapping of settings (key: value), not ${found}`]);
    }
    const empty = await runCli(['--check', '-c', write('empty.yaml', '# nothing set yet\n')]);
    assert.equal(empty.code, 0, empty.stderr);
  });

  it('refuses a duration longer than Node\'s longest timer (it would fire at once), a fraction of a millisecond, and 0 where it ends every session; idle 0 (never) is valid', async () => {
    const range = (floor: string) => `is out of range: at least ${floor}, at most 2147483647 ms (about 24.8 days, the longest timer Node has)`;
    const cases = [
      ['timeouts:\n  handshake: 1000h\n', `timeouts.handshake: "1000h" ${range('1 ms (0 would end every session at once)')}`],
      ['timeouts:\n  idle: 2147483648\n', `timeouts.idle: 2147483648 ${range('0')}`],
      ['timeouts:\n  connect: 0\n', `timeouts.connect: 0 ${range('1 ms (0 would end every session at once)')}`],
      ['timeouts:\n  udpIdle: 0\n', `timeouts.udpIdle: 0 ${range('1 ms (0 would end every session at once)')}`],
      ['timeouts:\n  bind: 1.5\n', 'timeouts.bind: 1.5 is not a whole number of milliseconds'],
      ['timeouts:\n  shutdownGrace: [1]\n', 'timeouts.shutdownGrace: must be a duration: milliseconds, or a string such as 500ms, 10s, 5m, 1h'],
    ] as const;
    for (const [i, [text, problem]] of cases.entries()) {
      const r = await runCli(['--check', '-c', write(`range${i}.yaml`, text)]);
      assert.notEqual(r.code, 0, text);
      assert.deepEqual(lines(r.stderr), [`socksgate: config: ${problem}`]);
    }
    const longest = await runCli(['--check', '-c', write('longest.yaml', 'timeouts:\n  idle: 0\n  handshake: 596h\n  udpIdle: 2147483647\n  shutdownGrace: 0\n')]);
    assert.equal(longest.code, 0, longest.stderr);
  });

  it('refuses a section that is not a mapping (auth: userpass, timeouts: 5s) as the schema does, with or without a flag for that section: it was replaced by {}, and the proxy ran without authentication', async () => {
    const notMapping = (path: string, found: string) => `socksgate: config: ${path}: Invalid input: expected ${found}`;
    const cases: Array<[string, string[], string[]]> = [
      ['auth: userpass\n', [], [notMapping('auth', 'object, received string')]],
      ['auth: userpass\n', ['-u', 'alice:wonderland'], [notMapping('auth', 'object, received string')]],
      ['auth: userpass\n', ['--auth', 'userpass', '--users-file', '/nonexistent'], [notMapping('auth', 'object, received string')]],
      ['timeouts: 5s\n', [], [notMapping('timeouts', 'object, received string')]],
      ['timeouts: 5s\n', ['--idle-timeout', '1s'], [notMapping('timeouts', 'object, received string')]],
      ['log: verbose\n', ['--log-level', 'warn'], [notMapping('log', 'object, received string')]],
      ['relay: splice\n', ['--busy-poll', '10'], [notMapping('relay', 'object, received string')]],
      ['listen: 1080\n', ['--socks4'], [notMapping('listen', 'array, received number')]],
      ['listen: [1080]\n', ['--socks4'], [notMapping('listen[0]', 'object, received number')]],
    ];
    for (const [i, [text, flags, problems]] of cases.entries()) {
      const file = write(`not-mapping${i}.yaml`, text);
      const checked = await runCli(['--check', '-c', file, ...flags]);
      assert.equal(checked.code, 2, `${text} ${flags.join(' ')}: ${checked.stdout}`);
      assert.deepEqual(lines(checked.stderr), problems, `${text} ${flags.join(' ')}`);
    }
    // A section left empty (every line under it commented out) means its defaults.
    const empty = await runCli(['--check', '-c', write('empty-sections.yaml', 'auth:\n#  methods: [userpass]\ntimeouts:\n'), '-u', 'alice:wonderland']);
    assert.equal(empty.code, 0, empty.stderr);
    const file = write('auth-userpass.yaml', 'auth: userpass\n');
    const started = await runCli(['-c', file, '--listen', '127.0.0.1:0', '--log-format', 'json'], { timeoutMs: 10_000 }); // a daemon that started is killed then
    assert.equal(started.code, 2, started.stdout.toString());
    assert.deepEqual(lines(started.stderr), [notMapping('auth', 'object, received string')]);
    assert.doesNotMatch(started.stdout.toString(), /listening/);
  });

  it('a --workers, --busy-poll, --max-sessions or --max-client-sessions value it cannot take, from a flag or the file, says what it accepts (it said "Invalid input", or "expected number, received string")', async () => {
    const workers = 'socksgate: config: workers: must be auto or a whole number from 1 to 256';
    const busyPoll = 'socksgate: config: relay.busyPollMicroseconds: must be a whole number of microseconds from 0 to 1000 (0: off)';
    const sessions = 'socksgate: config: limits.sessions: must be auto or a whole number from 1 to 10000000';
    const perClient = 'socksgate: config: limits.sessionsPerClient: must be null (no limit per client) or a whole number from 1 to 10000000';
    const cases: Array<[string[], string]> = [
      [['--workers', 'two'], workers],
      [['--workers', '1.5'], workers],
      [['--workers', '0'], workers],
      [['--workers', '257'], workers],
      [['-c', write('workers-two.yaml', 'workers: two\n')], workers],
      [['--busy-poll', '1.5'], busyPoll],
      [['--busy-poll', '50us'], busyPoll],
      [['--busy-poll', '1001'], busyPoll],
      [['--busy-poll=-1'], busyPoll],
      [['-c', write('busy-poll.yaml', 'relay:\n  busyPollMicroseconds: 2.5\n')], busyPoll],
      [['--max-sessions', 'many'], sessions],
      [['--max-sessions', '0'], sessions],
      [['--max-sessions', '2.5'], sessions],
      [['--max-sessions', '10000001'], sessions],
      [['-c', write('sessions.yaml', 'limits:\n  sessions: null\n')], sessions],
      [['--max-client-sessions', '0'], perClient],
      [['--max-client-sessions', 'auto'], perClient],
      [['-c', write('per-client.yaml', 'limits:\n  sessionsPerClient: 1.5\n')], perClient],
    ];
    for (const [args, problem] of cases) {
      const r = await runCli(['--check', ...args]);
      assert.equal(r.code, 2, args.join(' '));
      assert.deepEqual(lines(r.stderr), [problem], args.join(' '));
    }
  });

  it('--max-client-sessions none lifts the limit per client the config file sets (null has no other flag spelling)', async () => {
    const file = write('per-client-none.yaml', 'limits:\n  sessionsPerClient: 1.5\n');
    const r = await runCli(['--check', '-c', file, '--max-client-sessions', 'none']);
    assert.equal(r.code, 0, r.stderr); // the file's invalid 1.5 is replaced by null
    assert.equal((await runCli(['--check', '--max-client-sessions', 'none'])).code, 0);
  });

  it('refuses two listeners the kernel would not both bind (it said valid; start-up then failed with "address already in use", or with workers bound both)', async () => {
    const clash = (flags: string[]) => runCli(['--check', ...flags.flatMap((f) => ['--listen', f]), '--allow', '10.0.0.0/8']);
    const cases: Array<[string[], string]> = [
      [['127.0.0.1:1080', '127.0.0.1:1080'], 'listen[1]: 127.0.0.1:1080 is listed twice (listen[0])'],
      [['127.0.0.1:1080', '[::ffff:127.0.0.1]:1080'], 'listen[1]: 127.0.0.1:1080 is listed twice (listen[0])'],
      [['0.0.0.0:1080', '[::]:1080'], 'listen[1]: [::]:1080 takes every address, IPv4 too (dual-stack), 0.0.0.0:1080 too (listen[0])'],
      [['[::]:1080', '10.0.0.1:1080'], 'listen[1]: 10.0.0.1:1080 is within [::]:1080, which takes every address, IPv4 too (dual-stack) (listen[0])'],
      [['0.0.0.0:1080', '127.0.0.1:1080'], 'listen[1]: 127.0.0.1:1080 is within 0.0.0.0:1080, which takes every IPv4 address (listen[0])'],
      [['[::1]:1080', '[::]:1080'], 'listen[1]: [::]:1080 takes every address, IPv4 too (dual-stack), [::1]:1080 too (listen[0])'],
    ];
    for (const [listeners, problem] of cases) {
      const r = await clash(listeners);
      assert.equal(r.code, 2, listeners.join(' '));
      assert.deepEqual(lines(r.stderr), [`socksgate: config: ${problem}: the two cannot both be bound; list one`], listeners.join(' '));
    }
    // Different families, ports or addresses, and port 0 (each its own port), are fine.
    for (const listeners of [['0.0.0.0:1080', '[::1]:1080'], ['0.0.0.0:1080', '[::]:1081'], ['127.0.0.1:1080', '127.0.0.2:1080'], ['127.0.0.1:0', '127.0.0.1:0']]) {
      const r = await clash(listeners);
      assert.equal(r.code, 0, `${listeners.join(' ')}: ${r.stderr}`);
    }
  });

  it('reports a malformed duration with its key path', async () => {
    const file = write('duration.yaml', 'timeouts:\n  handshake: ten\n');
    const r = await runCli(['--check', '-c', file]);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.match(problems[0]!, /timeouts\.handshake: .*"ten".*not a duration/);
  });

  it('reports an unknown key, naming it', async () => {
    const top = await runCli(['--check', '-c', write('unknown.yaml', 'listen:\n  - port: 1081\nbogus: 1\n')]);
    assert.notEqual(top.code, 0);
    assert.equal(lines(top.stderr).length, 1, top.stderr);
    assert.match(top.stderr, /config: bogus: unknown key/);
    const nested = await runCli(['--check', '-c', write('unknown2.yaml', 'timeouts:\n  handshak: 5s\n')]);
    assert.notEqual(nested.code, 0);
    assert.equal(lines(nested.stderr).length, 1, nested.stderr);
    assert.match(nested.stderr, /config: timeouts\.handshak: unknown key/);
  });

  it('reports userpass without any users at auth.methods', async () => {
    const r = await runCli(['--check', '-c', write('nousers.yaml', 'auth:\n  methods: [userpass]\n')]);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.match(problems[0]!, /auth\.methods: userpass needs auth\.users or auth\.usersFile/);
  });

  it('reports every problem of a file with several, each on its own line with its key path', async () => {
    const file = write(
      'bad.yaml',
      [
        'listen:',
        '  - address: 127.0.0.1',
        '    port: 70000',
        'timeouts:',
        '  handshake: ten',
        'bogus: 1',
        'auth:',
        '  methods: [userpass]',
        '',
      ].join('\n'),
    );
    const r = await runCli(['--check', '--config', file]);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    for (const line of problems) assert.match(line, CONFIG_PROBLEM);
    assert.ok(problems.some((l) => /listen\[0\]\.port: /.test(l)), r.stderr);
    assert.ok(problems.some((l) => /timeouts\.handshake: /.test(l)), r.stderr);
    assert.ok(problems.some((l) => /bogus: unknown key/.test(l)), r.stderr);
    assert.ok(problems.some((l) => /auth\.methods: /.test(l)), r.stderr);
    assert.equal(problems.length, 4, r.stderr);
  });

  it('reports the field errors of a file with several, each on its own line', async () => {
    const file = write(
      'bad3.yaml',
      ['listen:', '  - address: 127.0.0.1', '    port: 70000', 'timeouts:', '  handshake: ten', 'bogus: 1', ''].join('\n'),
    );
    const r = await runCli(['--check', '--config', file]);
    assert.equal(r.code, 2);
    const problems = lines(r.stderr);
    assert.ok(problems.length >= 3, r.stderr);
    for (const line of problems) assert.match(line, CONFIG_PROBLEM);
    assert.ok(problems.some((l) => /listen\[0\]\.port: /.test(l)), r.stderr);
    assert.ok(problems.some((l) => /timeouts\.handshake: /.test(l)), r.stderr);
    assert.ok(problems.some((l) => /bogus: unknown key/.test(l)), r.stderr);
  });

  it('reports a YAML syntax error in one line naming the file and the position', async () => {
    const file = write('syntax.yaml', 'listen: [\n  - address: 127.0.0.1\n');
    const r = await runCli(['--check', '-c', file]);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.match(problems[0]!, CONFIG_PROBLEM);
    assert.ok(problems[0]!.includes(file), problems[0]);
    assert.match(problems[0]!, /line \d+/);
  });

  it('reports a missing config file in one line', async () => {
    const missing = dir.file('does-not-exist.yaml');
    const r = await runCli(['--check', '--config', missing]);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.ok(problems[0]!.includes(missing), problems[0]);
    assert.match(problems[0]!, /ENOENT/);
  });

  it('refuses an open proxy: a public listener without auth and without --allow', async () => {
    const r = await runCli(['--check', '--listen', '0.0.0.0:1080']);
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stdout.toString(), /valid/);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.match(problems[0]!, /listen\[0\]\.address: /);
    assert.match(problems[0]!, /open proxy/);
  });

  it('refuses an open proxy from a config file too', async () => {
    const r = await runCli(['--check', '-c', write('open.yaml', 'listen:\n  - address: "::"\n    port: 1080\n')]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /listen\[0\]\.address: .*open proxy/);
  });

  it('allows a public listener with --allow', async () => {
    const r = await runCli(['--check', '--listen', '0.0.0.0:1080', '--allow', '10.0.0.0/8']);
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
  });

  it('allows a public listener with --user (auth becomes required)', async () => {
    const r = await runCli(['--check', '--listen', '0.0.0.0:1080', '--user', 'a:b']);
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
  });

  it('still refuses a public listener when --user is combined with --auth userpass,none', async () => {
    const r = await runCli(['--check', '--listen', '0.0.0.0:1080', '--user', 'a:b', '--auth', 'userpass,none']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /open proxy/);
  });

  it('rejects a malformed --allow network', async () => {
    const r = await runCli(['--check', '--listen', '0.0.0.0:1080', '--allow', '10.0.0.0/33']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /clients\.allow\[0\]: /);
  });

  it('lets flags override file values (bad file values fixed by flags)', async () => {
    const file = write('override.yaml', 'listen:\n  - address: 127.0.0.1\n    port: 70000\ntimeouts:\n  handshake: ten\n');
    const without = await runCli(['--check', '-c', file]);
    assert.notEqual(without.code, 0);
    const r = await runCli(['--check', '-c', file, '--listen', '127.0.0.1:1081', '--handshake-timeout', '5s']);
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
  });

  it('takes bare digits in a duration flag as milliseconds, as in the file: --idle-timeout 0 means never', async () => {
    const r = await runCli(['--check', '--idle-timeout', '0', '--connect-timeout', '5000']);
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
    const zero = await runCli(['--check', '--handshake-timeout', '0']);
    assert.deepEqual(lines(zero.stderr), [
      'socksgate: config: timeouts.handshake: 0 is out of range: at least 1 ms (0 would end every session at once), at most 2147483647 ms (about 24.8 days, the longest timer Node has)',
    ]);
  });

  it('lets flags override file values (bad flag values over a good file are reported)', async () => {
    const file = write('override2.yaml', 'timeouts:\n  handshake: 5s\n  idle: 1h\nlog:\n  level: info\n');
    const r = await runCli(['--check', '-c', file, '--handshake-timeout', 'soon', '--log-level', 'loud']);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 2, r.stderr);
    assert.ok(problems.some((l) => /timeouts\.handshake: .*"soon"/.test(l)), r.stderr);
    assert.ok(problems.some((l) => /log\.level: /.test(l)), r.stderr);
  });

  it('lets --listen override the file: the daemon listens where the flag says', async () => {
    // The file names a port that is taken; the flag's port 0 must win.
    const blocker = createNetServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const taken = (blocker.address() as AddressInfo).port;
    const file = write('listen.yaml', `listen:\n  - address: 127.0.0.1\n    port: ${taken}\nlog:\n  format: json\n`);
    const daemon = new Daemon(['-c', file, '--listen', '127.0.0.1:0', '--log-format', 'json']);
    try {
      const port = await daemon.port();
      assert.notEqual(port, taken);
      assert.equal(daemon.logs.filter((l) => l.event === 'listening').length, 1);
      daemon.signal('SIGTERM');
      const exit = await daemon.waitExit();
      assert.equal(exit.code, 0, daemon.describe());
    } finally {
      await daemon.kill();
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });

  it('reports an unreadable users file in one clear line', async () => {
    const r = await runCli(['--check', '--users-file', '/nonexistent']);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.match(problems[0]!, /^socksgate: /);
    assert.match(problems[0]!, /\/nonexistent/);
    assert.match(problems[0]!, /ENOENT/);
    assert.doesNotMatch(r.stderr, /\n\s+at /); // no stack trace
  });

  it('reports an unreadable users file when starting the daemon too, without listening', async () => {
    const r = await runCli(['--users-file', '/nonexistent', '--listen', '127.0.0.1:0', '--log-format', 'json']);
    assert.notEqual(r.code, 0);
    assert.equal(lines(r.stderr).length, 1, r.stderr);
    assert.match(r.stderr, /\/nonexistent/);
    assert.doesNotMatch(r.stdout.toString(), /listening/);
  });

  it('reports a users file with a bad line in one line naming file and line number', async () => {
    const hash = '$2b$04$GJmEbw8VmuI2oxB.6M0Ruuhg/gPfOe2Nfp.0.h8.fGyvIgiK8hcyy';
    const file = write('users.txt', `# users\nalice:${hash}\n\nbob:not-a-hash\n`);
    const r = await runCli(['--check', '--users-file', file]);
    assert.notEqual(r.code, 0);
    const problems = lines(r.stderr);
    assert.equal(problems.length, 1, r.stderr);
    assert.ok(problems[0]!.includes(`${file}:4`), problems[0]);
    assert.match(problems[0]!, /name:bcrypt-hash/);
    assert.doesNotMatch(r.stderr, /not-a-hash/); // the secret column is not echoed
  });

  it('refuses a users file with a cost bcrypt has not or one too slow to check, exit 2 without listening (a cost-31 hash held the daemon\'s stop for more than a day)', async () => {
    const tail = 'GJmEbw8VmuI2oxB.6M0Ruuhg/gPfOe2Nfp.0.h8.fGyvIgiK8hcyy';
    for (const [cost, problem] of [['31', /bcrypt cost 31 is too slow to check \(at most 15\)/], ['99', /not a valid bcrypt hash: cost 99 is not one bcrypt has/]] as const) {
      const file = write(`users-${cost}.txt`, `alice:$2b$${cost}$${tail}\n`);
      for (const args of [['--check'], ['--listen', '127.0.0.1:0', '--log-format', 'json']]) {
        const r = await runCli([...args, '--users-file', file], { timeoutMs: 10_000 }); // a daemon that started is killed then
        assert.equal(r.code, 2, r.stderr);
        assert.doesNotMatch(r.stdout.toString(), /listening/);
        const problems = lines(r.stderr);
        assert.equal(problems.length, 1, r.stderr);
        assert.match(problems[0]!, new RegExp(`users-${cost}\\.txt:1: `));
        assert.match(problems[0]!, problem);
        assert.doesNotMatch(r.stderr, new RegExp(tail.slice(0, 20)));
      }
    }
  });

  it('refuses a -u or config password that begins like a bcrypt hash but is not one (cut short, a trailing space, the original $2$), exit 2, naming the problem', async () => {
    const hash = '$2b$04$GJmEbw8VmuI2oxB.6M0Ruuhg/gPfOe2Nfp.0.h8.fGyvIgiK8hcyy';
    const config = write('spaced.yaml', `auth:\n  methods: [userpass]\n  users:\n    - { name: bob, password: "${hash} " }\n`);
    for (const [args, problem] of [
      [['-u', `alice:${hash.slice(0, 59)}`], /auth\.users\[0\]\.password: not a valid bcrypt hash: it has 59 characters, not 60/],
      [['-c', config], /auth\.users\[0\]\.password: not a valid bcrypt hash: character 61 \(whitespace\) is not one of/],
      [['-u', `alice:$2$${hash.slice(4)}`], /auth\.users\[0\]\.password: \$2\$ hashes \(the original bcrypt, before \$2a\$\) are not supported; hash the password again/],
    ] as const) {
      const r = await runCli(['--check', ...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.equal(r.stdout.toString(), '');
      const problems = lines(r.stderr);
      assert.equal(problems.length, 1, r.stderr);
      assert.match(problems[0]!, CONFIG_PROBLEM);
      assert.match(problems[0]!, problem);
    }
  });

  it('accepts a well-formed users file', async () => {
    const hash = '$2b$04$GJmEbw8VmuI2oxB.6M0Ruuhg/gPfOe2Nfp.0.h8.fGyvIgiK8hcyy';
    const file = write('users-ok.txt', `# users\nalice:${hash}\n`);
    const r = await runCli(['--check', '--users-file', file]);
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
  });

  it('a relative auth.usersFile in a config file is beside that file, wherever the daemon starts; a relative --users-file is from the working directory', async () => {
    const hash = '$2b$04$GJmEbw8VmuI2oxB.6M0Ruuhg/gPfOe2Nfp.0.h8.fGyvIgiK8hcyy';
    write('beside-users', `alice:${hash}\n`);
    const config = write('beside.yaml', 'auth:\n  methods: [userpass]\n  usersFile: ./beside-users\n');
    const fromRoot = await runCli(['--check', '--config', config], { cwd: '/' });
    assert.equal(fromRoot.stderr, '');
    assert.equal(fromRoot.code, 0);
    const flagFromRoot = await runCli(['--check', '--config', config, '--users-file', 'beside-users'], { cwd: '/' });
    assert.match(flagFromRoot.stderr, /cannot read users file beside-users: ENOENT/);
    const flagHere = await runCli(['--check', '--config', config, '--users-file', 'beside-users'], { cwd: dir.file('') });
    assert.equal(flagHere.code, 0, flagHere.stderr);
  });

  it('--listen in a shape it cannot read says how to write it (an IPv6 address without its port: that the port is missing, and [::1]:1080); an empty flag value is refused, not ignored', async () => {
    const cases: Array<[string[], string]> = [
      [['--listen', '::1:80'], 'socksgate: config: --listen ::1:80: an IPv6 address goes in brackets: [::1]:80'],
      [['--listen', '127.0.0.1:-1'], 'socksgate: config: --listen 127.0.0.1:-1: the port must be a number from 0 to 65535'],
      [['--listen', 'localhost'], 'socksgate: config: --listen localhost: no port: write address:port, [IPv6]:port, or a port alone (loopback)'],
      [['--listen=[::1]'], 'socksgate: config: --listen [::1]: no port: write it after the address, e.g. [::1]:1080'],
      [['--listen', '[::1]:'], 'socksgate: config: --listen [::1]:: no port: write it after the address, e.g. [::1]:1080'],
      [['--listen', '::1'], 'socksgate: config: --listen ::1: no port, and an IPv6 address goes in brackets: write e.g. [::1]:1080'],
      [['--listen', '2001:db8::1'], 'socksgate: config: --listen 2001:db8::1: no port, and an IPv6 address goes in brackets: write e.g. [2001:db8::1]:1080'],
      [['--listen', '127.0.0.1:'], 'socksgate: config: --listen 127.0.0.1:: no port: write it after the address, e.g. 127.0.0.1:1080'],
      [['--listen', '[::1'], 'socksgate: config: --listen [::1: an IPv6 address goes in brackets, the port after it: e.g. [::1]:1080'],
      [['--handshake-timeout='], 'socksgate: config: timeouts.handshake: "" is not a duration (e.g. 500ms, 10s, 5m, 1h)'],
      [['--log-level='], 'socksgate: config: log.level: Invalid option: expected one of "fatal"|"error"|"warn"|"info"|"debug"|"trace"|"silent"'],
    ];
    for (const [flags, message] of cases) {
      const r = await runCli(['--check', ...flags]);
      assert.equal(r.code, 2, flags.join(' '));
      assert.deepEqual(lines(r.stderr), [message]);
    }
  });

  it('a user named twice, in the users file or in auth.users, is refused naming both places (which password counted was a guess)', async () => {
    const hash = '$2b$04$GJmEbw8VmuI2oxB.6M0Ruuhg/gPfOe2Nfp.0.h8.fGyvIgiK8hcyy';
    const file = write('users-twice', `alice:${hash}\n# bob\nbob:${hash}\n  alice:${hash}\n`);
    const inFile = await runCli(['--check', '--users-file', file]);
    assert.equal(inFile.code, 2);
    assert.deepEqual(lines(inFile.stderr), [`socksgate: ${file}:4: user "alice" again (first on line 1): each name may appear once`]);
    const inConfig = await runCli(['--check', '-c', write('alice-twice.yaml', 'auth:\n  users:\n    - { name: alice, password: one }\n    - { name: alice, password: two }\n')]);
    assert.equal(inConfig.code, 2);
    assert.deepEqual(lines(inConfig.stderr), ['socksgate: config: auth.users[1].name: "alice" again (first at auth.users[0]): each name may appear once']);
  });

  it('two --user flags naming one user are refused naming the flags (not an auth.users path the file does not have)', async () => {
    const file = write('users-for-flags.yaml', 'auth:\n  methods: [userpass]\n  users:\n    - { name: carol, password: sea }\n');
    for (const config of [[], ['-c', file]]) {
      const r = await runCli(['--check', ...config, '-u', 'alice:one', '-u', 'bob:two', '-u', 'alice:three']);
      assert.equal(r.code, 2, config.join(' '));
      assert.deepEqual(lines(r.stderr), ['socksgate: config: two --user flags name "alice": each name may appear once']);
    }
  });

  it('a --user replaces the config file\'s user of the same name (flags override the file); the file\'s other users stay', async () => {
    const file = write('users-overridden.yaml', 'auth:\n  methods: [userpass]\n  users:\n    - { name: alice, password: from-file }\n    - { name: bob, password: builder }\n');
    const checked = await runCli(['--check', '-c', file, '-u', 'alice:from-flag']);
    assert.equal(checked.stderr, '');
    assert.equal(checked.code, 0);
    const echoServer = await startEchoServer();
    const { daemon, port } = await startDaemon(['-c', file, '-u', 'alice:from-flag', '--listen', '127.0.0.1:0', '--log-format', 'json']);
    try {
      for (const [user, password] of [['alice', 'from-flag'], ['bob', 'builder']] as const) {
        const socket = await socksConnect(port, echoServer.port, { user, password });
        assert.equal(await echo(socket, 'hi'), 'hi', user);
        socket.destroy();
      }
      await assert.rejects(socksConnect(port, echoServer.port, { user: 'alice', password: 'from-file' }));
    } finally {
      await daemon.kill();
      await echoServer.close();
    }
  });

  it('rejects an unknown flag in one line with a hint, not the whole usage, exit 2', async () => {
    const r = await runCli(['--check', '--no-such-flag']);
    assert.equal(r.code, 2);
    assert.deepEqual(lines(r.stderr), ["socksgate: Unknown option '--no-such-flag' (see socksgate --help)"]);
  });

  it('a flag value beginning with \'-\' is refused in one line: negative numbers are not accepted, a flag\'s value missing, other values written --flag=-value (a password not written back)', async () => {
    const cases: Array<[string[], string]> = [
      [['--busy-poll', '-1'], '--busy-poll -1: negative values are not accepted'],
      [['--shutdown-grace', '-5'], '--shutdown-grace -5: negative values are not accepted'],
      [['--workers', '-2'], '--workers -2: negative values are not accepted'],
      [['--idle-timeout', '-1s'], '--idle-timeout -1s: negative values are not accepted'],
      [['--config', '--log-level', 'debug'], '--config needs a value: --log-level is an option'],
      [['-c', '-V'], '--config needs a value: -V is an option'],
      [['-c', '-odd.yaml'], "--config -odd.yaml: a value beginning with '-' is written --config=-odd.yaml"],
      [['-u', '-bob:secret'], "--user -…: a value beginning with '-' is written --user=-…"],
    ];
    for (const [args, problem] of cases) {
      const r = await runCli(['--check', ...args]);
      assert.equal(r.code, 2, args.join(' '));
      assert.deepEqual(lines(r.stderr), [`socksgate: ${problem} (see socksgate --help)`], args.join(' '));
    }
  });
});

describe('socksgate schema', () => {
  it('refuses an argument (it takes none) in one line, exit 2, printing no schema', async () => {
    const r = await runCli(['schema', '--foo']);
    assert.equal(r.code, 2);
    assert.equal(r.stdout.toString(), '');
    assert.deepEqual(lines(r.stderr), ['socksgate: schema takes no arguments: --foo (see socksgate --help)']);
  });

  it('prints a JSON Schema that parses and describes "listen"', async () => {
    const r = await runCli(['schema']);
    assert.equal(r.code, 0);
    assert.equal(r.stderr, '');
    const text = r.stdout.toString();
    assert.match(text, /"listen"/);
    const schema = JSON.parse(text) as { type?: string; properties?: Record<string, unknown> };
    assert.equal(schema.type, 'object');
    assert.ok(schema.properties && 'listen' in schema.properties, 'properties.listen');
    for (const key of ['auth', 'clients', 'timeouts', 'log']) assert.ok(key in schema.properties, key);
  });
});
