/**
 * Command-line flags and how they lay over a config file's object. Values
 * stay raw (strings for durations and ports) so the schema reports flag
 * errors exactly as it reports file errors.
 */
import type { parseArgs } from 'node:util';

export const CLI_OPTIONS = {
  config: { type: 'string', short: 'c' },
  listen: { type: 'string', short: 'l', multiple: true },
  socks4: { type: 'boolean' },
  user: { type: 'string', short: 'u', multiple: true },
  'users-file': { type: 'string' },
  auth: { type: 'string' },
  allow: { type: 'string', multiple: true },
  'handshake-timeout': { type: 'string' },
  'connect-timeout': { type: 'string' },
  'idle-timeout': { type: 'string' },
  'shutdown-grace': { type: 'string' },
  'log-level': { type: 'string' },
  'log-format': { type: 'string' },
  workers: { type: 'string' },
  'relay-engine': { type: 'string' },
  'busy-poll': { type: 'string' },
  'handshake-engine': { type: 'string' },
  check: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const;

export type Flags = ReturnType<typeof parseArgs<{ options: typeof CLI_OPTIONS }>>['values'];

/**
 * A flag's value as the config file would hold it: bare digits are a number
 * (for a duration, milliseconds: `--idle-timeout 0` is never), anything else
 * stays text for the schema to read or refuse.
 */
function numberOrText(text: string): string | number {
  return /^\d+$/.test(text) ? Number(text) : text;
}

/** Lays the flags over the file's object (flags win). */
export function mergeFlags(file: unknown, flags: Flags): Record<string, unknown> {
  const config: Record<string, any> = structuredClone(isObject(file) ? file : {});
  const section = (key: string): Record<string, unknown> => {
    if (!isObject(config[key])) config[key] = {};
    return config[key] as Record<string, unknown>;
  };
  if (flags.listen) config.listen = flags.listen.map(parseListen);
  if (flags.socks4) {
    const listeners = Array.isArray(config.listen) ? config.listen : [{}];
    config.listen = listeners.map((l: unknown) => ({ ...(isObject(l) ? l : {}), socks4: true }));
  }
  const auth = section('auth');
  if (flags.user) {
    const users = Array.isArray(auth.users) ? auth.users : [];
    auth.users = [...users, ...flags.user.map(parseUser)];
  }
  if (flags['users-file']) auth.usersFile = flags['users-file'];
  if (flags.auth) auth.methods = flags.auth.split(',').map((m) => m.trim());
  else if ((flags.user || flags['users-file']) && auth.methods === undefined) auth.methods = ['userpass'];
  if (flags.allow) section('clients').allow = flags.allow;
  const timeouts = section('timeouts');
  if (flags['handshake-timeout']) timeouts.handshake = numberOrText(flags['handshake-timeout']);
  if (flags['connect-timeout']) timeouts.connect = numberOrText(flags['connect-timeout']);
  if (flags['idle-timeout']) timeouts.idle = numberOrText(flags['idle-timeout']);
  if (flags['shutdown-grace']) timeouts.shutdownGrace = numberOrText(flags['shutdown-grace']);
  if (flags.workers) config.workers = numberOrText(flags.workers);
  if (flags['relay-engine']) section('relay').engine = flags['relay-engine'];
  if (flags['busy-poll']) section('relay').busyPollMicroseconds = numberOrText(flags['busy-poll']);
  if (flags['handshake-engine']) section('handshake').engine = flags['handshake-engine'];
  if (flags['log-level']) section('log').level = flags['log-level'];
  if (flags['log-format']) section('log').format = flags['log-format'];
  return config;
}

/** `127.0.0.1:1080`, `[::1]:1080`, `0.0.0.0:1080` or `1080` (loopback). */
function parseListen(text: string): { address: string; port: number | string } {
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracketed) return { address: bracketed[1]!, port: Number(bracketed[2]) };
  if (/^\d+$/.test(text)) return { address: '127.0.0.1', port: Number(text) };
  const colon = text.lastIndexOf(':');
  if (colon < 0 || text.indexOf(':') !== colon) return { address: text, port: 'missing port' };
  const port = text.slice(colon + 1);
  return { address: text.slice(0, colon), port: numberOrText(port) };
}

function parseUser(text: string): { name: string; password: string } {
  const colon = text.indexOf(':');
  return colon < 0 ? { name: text, password: '' } : { name: text.slice(0, colon), password: text.slice(colon + 1) };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

