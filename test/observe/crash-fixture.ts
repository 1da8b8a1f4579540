/**
 * Run by test/observe/log.test.ts in a child process whose stdout is a
 * regular file or a pipe. The runner also loads this file as a test module:
 * without the variable it does nothing.
 *
 * The daemon's logging (createLogger, attachLogger, logCrashes) on a real
 * server: five sessions end, their access lines wait in the logger's batch,
 * and then (SOCKSGATE_CRASH_FIXTURE=crash) a sixth session's close reaches an
 * observer that throws, which ends the process as an uncaught exception, or
 * (=exit) the process calls process.exit(0). The test reads what reached
 * stdout.
 */
import { once } from 'node:events';
import { createServer } from '../../src/index.js';
import { attachLogger, createLogger, logCrashes } from '../../src/observe/log.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { startTcpServer } from '../helpers/server.js';

export const CRASH_SESSIONS = 5;

const mode = process.env.SOCKSGATE_CRASH_FIXTURE;
if (mode === 'crash' || mode === 'exit') await main(mode);

async function main(mode: 'crash' | 'exit'): Promise<void> {
  const target = await startTcpServer((socket) => socket.end());
  const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }] });
  const log = createLogger({ level: 'info', format: 'json' });
  attachLogger(server, log);
  logCrashes(log);
  const [bound] = await server.listen();
  for (let i = 0; i < CRASH_SESSIONS; i++) {
    const client = await RawClient.connect(bound!.port);
    client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
    await once(server, 'session-close');
    client.socket.destroy();
  }
  if (mode === 'exit') process.exit(0);
  server.on('session-close', () => { throw new Error('planned crash in an observer'); });
  const client = await RawClient.connect(bound!.port);
  client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
}
