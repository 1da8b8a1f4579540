// socksgate with a resolver of your own: `app.internal` is answered from a
// table, any other name by the system resolver. `reuseMs` lets the native
// engine dial a repeated request (same client, name, port and user) from
// the last answer for 30 s, so two requests through curl make one lookup.
// Run from the project root after `npm install`: node examples/resolver.mjs
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createServer as createHttpServer } from 'node:http';
import { createServer, systemResolver } from 'socksgate';

const web = createHttpServer((req, res) => res.end('hello from app.internal\n')).listen(0, '127.0.0.1');
await new Promise((resolve) => web.once('listening', resolve));

let lookups = 0;
const resolver = {
  reuseMs: 30_000,
  resolve(host, options) {
    if (host !== 'app.internal') return systemResolver.resolve(host, options);
    lookups++;
    return Promise.resolve([{ address: '127.0.0.1', family: 4 }]);
  },
};

const proxy = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], resolver });
const [bound] = await proxy.listen();
const curl = ['--max-time', '10', '-sS', '--noproxy', '', '-x', `socks5h://127.0.0.1:${bound.port}`, `http://app.internal:${web.address().port}/`];
for (let i = 0; i < 2; i++) process.stdout.write((await promisify(execFile)('curl', curl)).stdout);
console.log(`${proxy.handshakeEngine} handshakes: 2 requests, ${lookups} lookup${lookups === 1 ? '' : 's'}`);

await proxy.close();
web.close();
