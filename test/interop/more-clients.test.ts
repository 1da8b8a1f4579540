/**
 * Three more independent clients through a real socksgate to a TCP echo
 * server: socat (SOCKS4, SOCKS4a), OpenBSD netcat (`nc -X 4`, `-X 5`) and
 * connect-proxy (SOCKS5, with and without a password; SOCKS4). Each sends
 * 256 KiB of random bytes, shuts its side at the end of stdin, and must get
 * every byte back; the record says what the client asked for.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../helpers/run.js';
import { type Fixture, type RunningProxy, startEchoServer, startProxy } from '../helpers/server.js';
import { ALICE, CLIENT_TIMEOUT_MS, TEST_TIMEOUT_MS, USERPASS_ONLY, cleanEnv, forPort, payload, recordsFrom } from './helpers.js';

const opts = { timeout: TEST_TIMEOUT_MS };

interface Client {
  readonly name: string;
  /** The command line, given the proxy's port and the echo's. */
  readonly command: (proxyPort: number, echoPort: number) => readonly string[];
  readonly env?: NodeJS.ProcessEnv;
  /** The proxy with a password (alice) rather than without. */
  readonly userpass?: boolean;
  readonly version: 4 | 5;
  /** The host the request named: a name the proxy resolved, or the client's address. */
  readonly requestedHost: string;
  readonly user?: string;
}

const CLIENTS: readonly Client[] = [
  // The USERID each sends is named, so the record's user is known whoever runs the tests.
  { name: 'socat SOCKS4 (the client resolves)', command: (p, e) => ['socat', '-t5', '-', `SOCKS4:127.0.0.1:127.0.0.1:${e},socksport=${p},socksuser=tester`], version: 4, requestedHost: '127.0.0.1', user: 'tester' },
  { name: 'socat SOCKS4A (the proxy resolves)', command: (p, e) => ['socat', '-t5', '-', `SOCKS4A:127.0.0.1:localhost:${e},socksport=${p},socksuser=tester`], version: 4, requestedHost: 'localhost', user: 'tester' },
  { name: 'OpenBSD nc -X 4', command: (p, e) => ['nc.openbsd', '-N', '-X', '4', '-x', `127.0.0.1:${p}`, '127.0.0.1', String(e)], version: 4, requestedHost: '127.0.0.1' },
  { name: 'OpenBSD nc -X 5 by name', command: (p, e) => ['nc.openbsd', '-N', '-X', '5', '-x', `127.0.0.1:${p}`, 'localhost', String(e)], version: 5, requestedHost: 'localhost' },
  { name: 'connect-proxy -4 -S (SOCKS4)', command: (p, e) => ['connect-proxy', '-4', '-S', `tester@127.0.0.1:${p}`, '127.0.0.1', String(e)], version: 4, requestedHost: '127.0.0.1', user: 'tester' },
  { name: 'connect-proxy -S (SOCKS5) by name', command: (p, e) => ['connect-proxy', '-S', `127.0.0.1:${p}`, 'localhost', String(e)], version: 5, requestedHost: 'localhost' },
  {
    name: 'connect-proxy -S alice@ (SOCKS5 with a password)',
    command: (p, e) => ['connect-proxy', '-S', `${ALICE.name}@127.0.0.1:${p}`, 'localhost', String(e)],
    env: { SOCKS5_PASSWORD: ALICE.password },
    userpass: true,
    version: 5,
    requestedHost: 'localhost',
    user: ALICE.name,
  },
];

describe('more SOCKS clients through socksgate: socat, OpenBSD netcat, connect-proxy', opts, () => {
  let open: RunningProxy;
  let withPassword: RunningProxy;
  let echo: Fixture;

  before(async () => {
    open = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
    withPassword = await startProxy({ auth: USERPASS_ONLY });
    echo = await startEchoServer('127.0.0.1');
  });

  after(async () => {
    await open?.close();
    await withPassword?.close();
    await echo?.close();
  });

  for (const client of CLIENTS) {
    it(`${client.name}: 256 KiB there and back unchanged, and its record`, opts, async () => {
      const proxy = client.userpass ? withPassword : open;
      const next = recordsFrom(proxy);
      const data = payload(256 * 1024);
      const [command, ...args] = client.command(proxy.port, echo.port);
      const result = await run(command!, args, { input: data, env: { ...cleanEnv(), ...client.env }, timeoutMs: CLIENT_TIMEOUT_MS });
      assert.equal(result.code, 0, result.stderr.toString());
      assert.equal(result.stdout.length, data.length, 'every byte came back');
      assert.ok(result.stdout.equals(data), 'the echoed bytes are the bytes sent');
      const record = await next(forPort(echo.port));
      assert.equal(record.version, client.version);
      assert.equal(record.requested, `${client.requestedHost}:${echo.port}`);
      assert.equal(record.connected, `127.0.0.1:${echo.port}`);
      assert.equal(record.user, client.user ?? null);
      assert.equal(record.bytesUp, data.length);
      assert.equal(record.bytesDown, data.length);
      assert.equal(record.error, null);
    });
  }
});
