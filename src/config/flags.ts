/**
 * Command-line flags and how they lay over a config file's object. Values
 * stay raw (strings for durations and ports) so the schema reports flag
 * errors exactly as it reports file errors.
 */
import { isIP } from 'node:net';
import type { parseArgs } from 'node:util';
import type { OptionValues } from '../cli-args.js';
import { ConfigError } from './config-error.js';

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
  'log-file': { type: 'string' },
  workers: { type: 'string' },
  'max-sessions': { type: 'string' },
  'max-client-sessions': { type: 'string' },
  'relay-engine': { type: 'string' },
  'busy-poll': { type: 'string' },
  'handshake-engine': { type: 'string' },
  check: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const;

/** For parseArgs' error about a value beginning with '-' (cli-args.ts). */
export const CLI_OPTION_VALUES: OptionValues = {
  numeric: new Set(['handshake-timeout', 'connect-timeout', 'idle-timeout', 'shutdown-grace', 'workers', 'max-sessions', 'max-client-sessions', 'busy-poll']),
  secret: new Set(['user']),
};

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
  const section = (key: string): Record<string, unknown> => sectionForFlags(config, key);
  if (flags.listen) config.listen = flags.listen.map(parseListen);
  if (flags.socks4) config.listen = withSocks4(config.listen);
  const auth = section('auth');
  if (flags.user) {
    // A users list that is not a list stays for the schema to refuse.
    if (auth.users === undefined) auth.users = [];
    if (Array.isArray(auth.users)) auth.users = withFlagUsers(auth.users, flags.user.map(parseUser));
  }
  if (flags['users-file'] !== undefined) auth.usersFile = flags['users-file'];
  if (flags.auth !== undefined) auth.methods = flags.auth.split(',').map((m) => m.trim());
  else if ((flags.user || flags['users-file']) && auth.methods === undefined) auth.methods = ['userpass'];
  if (flags.allow) section('clients').allow = flags.allow;
  const timeouts = section('timeouts');
  if (flags['handshake-timeout'] !== undefined) timeouts.handshake = numberOrText(flags['handshake-timeout']);
  if (flags['connect-timeout'] !== undefined) timeouts.connect = numberOrText(flags['connect-timeout']);
  if (flags['idle-timeout'] !== undefined) timeouts.idle = numberOrText(flags['idle-timeout']);
  if (flags['shutdown-grace'] !== undefined) timeouts.shutdownGrace = numberOrText(flags['shutdown-grace']);
  if (flags.workers !== undefined) config.workers = numberOrText(flags.workers);
  if (flags['max-sessions'] !== undefined) section('limits').sessions = numberOrText(flags['max-sessions']);
  // `none` lifts a limit the config file sets (YAML's null has no flag spelling).
  const perClient = flags['max-client-sessions'];
  if (perClient !== undefined) section('limits').sessionsPerClient = perClient === 'none' ? null : numberOrText(perClient);
  if (flags['relay-engine'] !== undefined) section('relay').engine = flags['relay-engine'];
  if (flags['busy-poll'] !== undefined) section('relay').busyPollMicroseconds = numberOrText(flags['busy-poll']);
  if (flags['handshake-engine'] !== undefined) section('handshake').engine = flags['handshake-engine'];
  if (flags['log-level'] !== undefined) section('log').level = flags['log-level'];
  if (flags['log-format'] !== undefined) section('log').format = flags['log-format'];
  if (flags['log-file'] !== undefined) section('log').file = flags['log-file'];
  return config;
}

/**
 * The section `key` of the file's object, for flags to set keys in; created
 * when the file has none. One the file gives as something other than a
 * mapping (`auth: userpass`, `timeouts: 5s`) stays as written, for the schema
 * to refuse with its key path: put in its place, an empty mapping would
 * silently drop what the file meant (a proxy without authentication). The
 * flags then go into a mapping nobody reads; the configuration is refused anyway.
 */
function sectionForFlags(config: Record<string, unknown>, key: string): Record<string, unknown> {
  if (config[key] === undefined) config[key] = {};
  const section = config[key];
  return isObject(section) ? section : {};
}

/**
 * `--socks4` on every listener: the file's, or the default one. A `listen`
 * that is not a list, or an entry that is not a mapping, stays as written,
 * for the schema to refuse.
 */
function withSocks4(listen: unknown): unknown {
  if (listen === undefined) return [{ socks4: true }];
  if (!Array.isArray(listen)) return listen;
  return listen.map((listener: unknown) => (isObject(listener) ? { ...listener, socks4: true } : listener));
}

/**
 * `127.0.0.1:1080`, `[::1]:1080`, `0.0.0.0:1080` or `1080` (loopback). The
 * address is the schema's to judge; the shape is judged here, where the
 * message can say how to write it.
 */
function parseListen(text: string): { address: string; port: number } {
  if (/^\d+$/.test(text)) return { address: '127.0.0.1', port: Number(text) };
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
  if (bracketed) return listenerAt(text, bracketed[1]!, bracketed[2] ?? '', `[${bracketed[1]}]`);
  const colon = text.lastIndexOf(':');
  if (text.startsWith('[') || text.indexOf(':') !== colon) throw listenError(text, unbracketedIPv6Problem(text));
  if (colon < 0) throw listenError(text, 'no port: write address:port, [IPv6]:port, or a port alone (loopback)');
  const address = text.slice(0, colon);
  return listenerAt(text, address, text.slice(colon + 1), address);
}

/** The port a --listen example shows: the default one. */
const EXAMPLE_PORT = 1080;

/** `address` on `port` as written; `spelled` is the address as an example writes it (IPv6 in brackets). */
function listenerAt(text: string, address: string, port: string, spelled: string): { address: string; port: number } {
  if (port === '') throw listenError(text, `no port: write it after the address, e.g. ${spelled}:${EXAMPLE_PORT}`);
  if (!/^\d+$/.test(port)) throw listenError(text, 'the port must be a number from 0 to 65535');
  return { address, port: Number(port) };
}

/**
 * What to write instead of an IPv6 address without brackets (`::1:80`,
 * `::1`) or with brackets left open. The last group is taken for a port only
 * when digits follow an address; an address that is whole without it (`::1`
 * would be `:` and port 1) lacks the port.
 */
function unbracketedIPv6Problem(text: string): string {
  const colon = text.lastIndexOf(':');
  const [address, port] = [text.slice(0, colon), text.slice(colon + 1)];
  if (isIP(address) === 6 && /^\d+$/.test(port)) return `an IPv6 address goes in brackets: [${address}]:${port}`;
  const whole = isIP(text) === 6 ? text : isIP(address) === 6 && port === '' ? address : undefined;
  if (whole !== undefined) return `no port, and an IPv6 address goes in brackets: write e.g. [${whole}]:${EXAMPLE_PORT}`;
  return `an IPv6 address goes in brackets, the port after it: e.g. [::1]:${EXAMPLE_PORT}`;
}

function listenError(text: string, problem: string): ConfigError {
  return new ConfigError([`--listen ${text}: ${problem}`]);
}

/**
 * The file's users with the flags' over them: a flag's user replaces the
 * file's of the same name (flags override the file), the others stay. Two
 * flags naming one user are refused, as a name twice in the file is: which
 * password counts would be a guess.
 */
function withFlagUsers(fileUsers: readonly unknown[], flagUsers: readonly FlagUser[]): unknown[] {
  const names = new Set<string>();
  for (const { name } of flagUsers) {
    if (names.has(name)) throw new ConfigError([`two --user flags name ${JSON.stringify(name)}: each name may appear once`]);
    names.add(name);
  }
  const kept = fileUsers.filter((user) => !(isObject(user) && typeof user.name === 'string' && names.has(user.name)));
  return [...kept, ...flagUsers];
}

interface FlagUser {
  readonly name: string;
  readonly password: string;
}

function parseUser(text: string): FlagUser {
  const colon = text.indexOf(':');
  return colon < 0 ? { name: text, password: '' } : { name: text.slice(0, colon), password: text.slice(colon + 1) };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

