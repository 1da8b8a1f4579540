// Two socksgate servers accepting on one port, as `--workers` runs them (in
// one process here, to keep the example short: each worker would be a
// process of its own). Needs the splice addon (built by `npm install`).
// Run from the project root: node examples/reuse-port.mjs
import { execFile } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { promisify } from 'node:util';
import { createServer, reservePorts } from 'socksgate';

const web = createHttpServer((req, res) => res.end('ok\n')).listen(0, '127.0.0.1');
await new Promise((resolve) => web.once('listening', resolve));

const listen = [{ address: '127.0.0.1', port: 0 }];
const ports = reservePorts(listen); // the supervisor: port 0 becomes one real port, held from now on
const servers = ['first', 'second'].map((name) => {
  const server = createServer({ listen });
  server.on('session-close', (record) => console.log(`${name} served ${record.requested}`));
  return server;
});
// sharedBy: each server applies its share of a numeric limits.sessions.
for (const server of servers) await server.listen({ reusePort: { ports }, sharedBy: servers.length });

// The kernel hands each connection to one of the two, by a hash of its addresses.
const curl = promisify(execFile);
for (let i = 0; i < 4; i++) {
  await curl('curl', ['--max-time', '10', '-sS', '--noproxy', '', '-x', `socks5://127.0.0.1:${ports[0]}`, `http://127.0.0.1:${web.address().port}/`]);
}

for (const server of servers) await server.close();
web.close();
