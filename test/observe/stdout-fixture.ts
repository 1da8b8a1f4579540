/**
 * Run by test/observe/stdout.test.ts in a child process whose stdout is a
 * pipe the test does not read at first. The runner also loads this file as a
 * test module: without the variable it does nothing.
 *
 * Logs numbered lines through a StdoutSink with a 64 KiB backlog, a batch per
 * turn of the event loop, until the sink has dropped some; then tells the
 * test how many lines it wrote and how many were dropped, and waits to be
 * ended. Once the test reads, the sink catches up and writes its
 * `log-resumed` line.
 */
import pino from 'pino';
import { StdoutSink } from '../../src/observe/stdout.js';

export const FIXTURE_BACKLOG_BYTES = 64 * 1024;

/** What the fixture tells the test (over IPC) once lines were dropped. */
export interface StallReport {
  readonly written: number;
  readonly dropped: number;
}

if (process.env.SOCKSGATE_STDOUT_FIXTURE === 'stall') main();

function main(): void {
  const sink = new StdoutSink({ backlogBytes: FIXTURE_BACKLOG_BYTES });
  const log = pino({ base: undefined }, sink.stream);
  sink.reportTo(log);
  let dropped = 0;
  sink.stream.on('drop', () => { dropped++; });
  let written = 0;
  const batch = () => {
    for (let i = 0; i < 100; i++) log.info({ event: 'line', n: written++ }, 'a numbered line');
    // Bounded: a sink that never drops (no backlog bound) stops here too.
    if (dropped < 200 && written < 200_000) {
      setImmediate(batch);
      return;
    }
    const report: StallReport = { written, dropped };
    process.send!(report);
  };
  batch();
  process.on('disconnect', () => process.exit(0));
}
