/**
 * proxychains4 (LD_PRELOAD SOCKSification) running curl through socksgate:
 * a client that knows nothing of SOCKS, with SOCKS5 + userpass and SOCKS4.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../helpers/run.js';
import { type Fixture, type RunningProxy, startHttpServer, startProxy } from '../helpers/server.js';

const BODY = 'through proxychains';

describe('proxychains4 + curl through socksgate', () => {
  let http: Fixture;
  let proxy: RunningProxy;
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-proxychains-'));

  before(async () => {
    http = await startHttpServer(BODY);
    proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: 0, socks4: true }],
      auth: { methods: ['userpass', 'none'], users: [{ name: 'alice', password: 's3cret' }] },
    });
  });
  after(async () => {
    await proxy.close();
    await http.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function curlVia(proxyLine: string): Promise<string> {
    const conf = join(dir, `${proxyLine.split(' ')[0]}.conf`);
    writeFileSync(conf, ['strict_chain', 'quiet_mode', 'tcp_read_time_out 10000', 'tcp_connect_time_out 5000', '[ProxyList]', proxyLine, ''].join('\n'));
    const env = { ...process.env };
    for (const key of Object.keys(env)) if (/_proxy$/i.test(key)) delete env[key];
    const result = await run('proxychains4', ['-q', '-f', conf, 'curl', '-q', '-sS', '--max-time', '10', `http://127.0.0.1:${http.port}/`], { env });
    assert.equal(result.code, 0, result.stderr);
    return result.stdout.toString();
  }

  it('SOCKS5 with username/password', async () => {
    assert.equal(await curlVia(`socks5 127.0.0.1 ${proxy.port} alice s3cret`), BODY);
    const record = await proxy.record((r) => r.version === 5);
    assert.equal(record.user, 'alice');
    assert.equal(record.requested, `127.0.0.1:${http.port}`);
    assert.equal(record.reply, 0);
  });

  it('SOCKS4', async () => {
    assert.equal(await curlVia(`socks4 127.0.0.1 ${proxy.port}`), BODY);
    const record = await proxy.record((r) => r.version === 4);
    assert.equal(record.reply, 0x5a);
    assert.equal(record.connected, `127.0.0.1:${http.port}`);
  });
});
