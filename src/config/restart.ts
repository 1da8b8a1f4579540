/**
 * The restart keys: settings bound to sockets, processes or the relay engine
 * already chosen. A reload reports a change to them in `needsRestart` and
 * keeps the old value; a worker keeps the primary's (workers.ts). Types only
 * from the schema: workers.ts loads this before the heavy modules (cli.ts).
 */
import type { Config } from './schema.js';

export const RESTART_KEYS = ['listen', 'workers', 'relay.engine', 'handshake.engine', 'log.format', 'log.file'] as const;

/** The restart keys' values, as a running process keeps them (only those: the rest of each section may change). */
export interface RestartSettings {
  readonly listen: Config['listen'];
  readonly workers: Config['workers'];
  readonly relay: Pick<Config['relay'], 'engine'>;
  readonly handshake: Pick<Config['handshake'], 'engine'>;
  readonly log: Pick<Config['log'], 'format' | 'file'>;
}

/** What `config` holds at the restart keys (plain data: it travels to workers as JSON). */
export function restartSettings(config: Config): RestartSettings {
  return {
    listen: config.listen,
    workers: config.workers,
    relay: { engine: config.relay.engine },
    handshake: { engine: config.handshake.engine },
    log: { format: config.log.format, file: config.log.file },
  };
}

/**
 * The restart keys that `value` (restart settings come back from JSON) has
 * no value at: a worker must not fill them with defaults (another port, say)
 * while its siblings serve with the primary's.
 */
export function missingRestartKeys(value: unknown): string[] {
  return RESTART_KEYS.filter((key) => valueAt(value, key) === undefined);
}

/** `settings` at a dotted key path (`relay.engine`). */
export function valueAt(settings: unknown, path: string): unknown {
  let value: unknown = settings;
  for (const key of path.split('.')) value = (value as Record<string, unknown> | undefined)?.[key];
  return value;
}
