/**
 * The servers under test, each started fresh as a child process on a free
 * loopback port: socksgate (minimal and production configurations), Dante,
 * microsocks, and "none" (the generator talks to the target directly).
 */
import { type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { descendants, freePort, rememberDescendants, spawnTracked, stopChild, waitForSocks } from './proc.js';

export type ServerId = 'socksgate' | 'socksgate-prod' | 'dante' | 'microsocks' | 'none';

export interface ServerInfo {
  readonly id: ServerId;
  readonly label: string;
  /** false for "none": no process, no memory workloads. */
  readonly proxy: boolean;
  readonly describe: string;
}

export const SERVERS: readonly ServerInfo[] = [
  {
    id: 'socksgate',
    label: 'socksgate',
    proxy: true,
    describe: '`node dist/src/cli.js --listen 127.0.0.1:P --log-level warn --log-format json` (no auth; the access log is at info, so nothing is logged for normal sessions)',
  },
  {
    id: 'socksgate-prod',
    label: 'socksgate (production)',
    proxy: true,
    describe: '`node dist/src/cli.js --listen 127.0.0.1:P --users-file USERS --log-level info --log-format json`, stdout redirected to a file: username/password auth against a bcrypt (cost 10) users file, one JSON access-log line per session',
  },
  {
    id: 'dante',
    label: 'Dante',
    proxy: true,
    describe: '`danted -f CONF -p PIDFILE` in the foreground (one main process; Dante forks its negotiate/request/io children itself): internal 127.0.0.1 port P, external 127.0.0.1, socksmethod none, clientmethod none, `client pass` and `socks pass` from 127.0.0.0/8 to 0.0.0.0/0, user.privileged root, user.unprivileged nobody, log to a file',
  },
  {
    id: 'microsocks',
    label: 'microsocks',
    proxy: true,
    describe: '`microsocks -i 127.0.0.1 -p P` (a thread per client; its per-connection log line goes to /dev/null)',
  },
  {
    id: 'none',
    label: 'no proxy',
    proxy: false,
    describe: 'the generator connects to the target directly; for handshakes it talks to a null SOCKS5 server in the target that answers without dialing',
  },
];

export interface Binaries {
  readonly node: string;
  readonly cli: string;
  readonly danted: string;
  readonly microsocks: string;
}

export interface ServerEnv {
  readonly bin: Binaries;
  readonly tmp: string;
  readonly affinity: string | null;
  readonly usersFile: string;
  readonly credentials: { readonly user: string; readonly pass: string };
}

/** What a server's own log said, summarised after it stopped. */
export interface LogSummary {
  readonly lines: number;
  /** Access-log lines (socksgate). */
  readonly sessions: number;
  /** Sessions by close reason (socksgate). */
  readonly reasons: Record<string, number>;
  /** Lines at warn or above, by message kind (first 60 characters). */
  readonly warnings: Record<string, number>;
}

export interface RunningServer {
  readonly info: ServerInfo;
  /** 0 for "none". */
  readonly port: number;
  readonly auth: { readonly user: string; readonly pass: string } | null;
  /** The server's processes now: the main one and its descendants (Dante's children). */
  pids(): number[];
  stop(): Promise<LogSummary | null>;
}

let sequence = 0;

export async function startServer(info: ServerInfo, env: ServerEnv): Promise<RunningServer> {
  if (!info.proxy) {
    return { info, port: 0, auth: null, pids: () => [], stop: async () => null };
  }
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) { // a freshly freed port can be taken meanwhile
    try {
      return await startOnce(info, env, await freePort());
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function startOnce(info: ServerInfo, env: ServerEnv, port: number): Promise<RunningServer> {
  const n = ++sequence;
  switch (info.id) {
    case 'socksgate':
    case 'socksgate-prod': {
      const prod = info.id === 'socksgate-prod';
      const logPath = join(env.tmp, `${info.id}-${n}.log`);
      const args = [env.bin.cli, '--listen', `127.0.0.1:${port}`, '--log-format', 'json'];
      if (prod) args.push('--users-file', env.usersFile, '--log-level', 'info');
      else args.push('--log-level', 'warn');
      const fd = openSync(logPath, 'w');
      const child = spawnTracked(env.bin.node, args, { stdio: ['ignore', fd, 'pipe'], affinity: env.affinity });
      closeSync(fd);
      const stderr = collect(child);
      await ready(child, port, prod ? 2 : 0, stderr, info);
      return {
        info,
        port,
        auth: prod ? env.credentials : null,
        pids: () => (child.pid === undefined ? [] : [child.pid]),
        stop: async () => {
          await stopChild(child);
          return summariseSocksgateLog(logPath, stderr());
        },
      };
    }
    case 'dante': {
      const dir = join(env.tmp, `dante-${n}`);
      mkdirSync(dir);
      chmodSync(dir, 0o777); // Dante drops to "nobody" after start
      const conf = join(dir, 'danted.conf');
      const log = join(dir, 'danted.log');
      const asRoot = process.getuid?.() === 0;
      writeFileSync(conf, [
        `logoutput: ${log}`,
        `internal: 127.0.0.1 port = ${port}`,
        'external: 127.0.0.1',
        'socksmethod: none',
        'clientmethod: none',
        ...(asRoot ? ['user.privileged: root', 'user.unprivileged: nobody'] : []),
        'client pass {',
        '  from: 127.0.0.0/8 to: 0.0.0.0/0',
        '}',
        'socks pass {',
        '  from: 127.0.0.0/8 to: 0.0.0.0/0',
        '}',
        '',
      ].join('\n'));
      chmodSync(conf, 0o644);
      const child = spawnTracked(env.bin.danted, ['-f', conf, '-p', join(dir, 'danted.pid')], {
        stdio: ['ignore', 'ignore', 'pipe'],
        affinity: env.affinity,
      });
      const stderr = collect(child);
      await ready(child, port, 0, () => `${stderr()}${existsSync(log) ? readFileSync(log, 'utf8') : ''}`, info);
      const pids = () => {
        if (child.pid === undefined) return [];
        const kids = descendants(child.pid);
        rememberDescendants(kids);
        return [child.pid, ...kids];
      };
      return {
        info,
        port,
        auth: null,
        pids,
        stop: async () => {
          const all = pids();
          await stopChild(child, all.slice(1));
          return summariseDanteLog(log, stderr());
        },
      };
    }
    case 'microsocks': {
      const child = spawnTracked(env.bin.microsocks, ['-i', '127.0.0.1', '-p', String(port)], {
        stdio: ['ignore', 'ignore', 'ignore'],
        affinity: env.affinity,
      });
      await ready(child, port, 0, () => '', info);
      return {
        info,
        port,
        auth: null,
        pids: () => (child.pid === undefined ? [] : [child.pid]),
        stop: async () => {
          await stopChild(child);
          return null;
        },
      };
    }
    default:
      throw new Error(`unknown server ${info.id}`);
  }
}

async function ready(child: ChildProcess, port: number, method: number, output: () => string, info: ServerInfo): Promise<void> {
  try {
    await waitForSocks(port, method, child);
  } catch (err) {
    await stopChild(child);
    throw new Error(`${info.label} did not start: ${(err as Error).message}${output() ? `\n${output().trim()}` : ''}`);
  }
}

function collect(child: ChildProcess): () => string {
  let text = '';
  child.stderr?.on('data', (c: Buffer) => {
    if (text.length < 100_000) text += c.toString();
  });
  return () => text;
}

function kind(message: string): string {
  return message.replace(/\d+/g, 'N').slice(0, 60);
}

function summariseSocksgateLog(path: string, stderr: string): LogSummary {
  const reasons: Record<string, number> = {};
  const warnings: Record<string, number> = {};
  let lines = 0;
  let sessions = 0;
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    lines++;
    let entry: { level?: number; event?: string; reason?: string; msg?: string; error?: string | null };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      warnings[`unparsable: ${kind(line)}`] = (warnings[`unparsable: ${kind(line)}`] ?? 0) + 1;
      continue;
    }
    if (entry.event === 'session') {
      sessions++;
      const reason = entry.reason ?? '?';
      reasons[reason] = (reasons[reason] ?? 0) + 1;
    }
    if ((entry.level ?? 0) >= 40) {
      const key = entry.event === 'session' ? `${entry.reason}: ${kind(entry.error ?? '')}` : kind(entry.msg ?? line);
      warnings[key] = (warnings[key] ?? 0) + 1;
    }
  }
  for (const line of stderr.split('\n')) {
    if (line.trim() !== '') warnings[`stderr: ${kind(line)}`] = (warnings[`stderr: ${kind(line)}`] ?? 0) + 1;
  }
  return { lines, sessions, reasons, warnings };
}

function summariseDanteLog(path: string, stderr: string): LogSummary {
  const warnings: Record<string, number> = {};
  let lines = 0;
  const text = `${existsSync(path) ? readFileSync(path, 'utf8') : ''}\n${stderr}`;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    lines++;
    const m = /\]: (\w+): (.*)$/.exec(line);
    const level = m?.[1] ?? 'line';
    if (/running|exiting|terminating|shutting down/.test(m?.[2] ?? '')) continue; // start and our SIGTERM
    const key = `${level}: ${kind(m?.[2] ?? line)}`;
    warnings[key] = (warnings[key] ?? 0) + 1;
  }
  return { lines, sessions: 0, reasons: {}, warnings };
}
