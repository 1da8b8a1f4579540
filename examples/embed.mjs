// socksgate as a library: start a SOCKS5 server with one user, send one
// request through it with curl, print the access record, and stop.
// Run from the project root after `npm install`: node examples/embed.mjs
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'socksgate';

const web = createHttpServer((req, res) => res.end('hello through socksgate\n')).listen(0, '127.0.0.1');
await new Promise((resolve) => web.once('listening', resolve));

const proxy = createServer({
  listen: [{ address: '127.0.0.1', port: 0 }],
  auth: { methods: ['userpass'], users: [{ name: 'alice', password: 's3cret' }] },
  timeouts: { connect: '10s' },
});
proxy.on('session-close', (record) => console.log(`${record.user} ${record.requested} ${record.reason} ${record.bytesDown} bytes down`));
const [bound] = await proxy.listen();

const { stdout: body } = await promisify(execFile)('curl', ['--max-time', '10', '-sS', '--noproxy', '', '-x', `socks5h://alice:s3cret@127.0.0.1:${bound.port}`, `http://localhost:${web.address().port}/`]);
process.stdout.write(body);

await proxy.close(); // graceful: drains open sessions, then closes
web.close();
