/** Validation against the schema, and loading of YAML files. */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from './config-error.js';
import { type Config, configSchema, configSchemaOwnAuthenticator } from './schema.js';

export { ConfigError };


/** Validates and fills in defaults; throws ConfigError. The result is frozen. */
export function validateConfig(input: unknown, options: { readonly ownAuthenticator?: boolean } = {}): Config {
  const schema = options.ownAuthenticator ? configSchemaOwnAuthenticator : configSchema;
  const result = schema.safeParse(input ?? {});
  if (!result.success) throw new ConfigError(result.error.issues.flatMap((i) => describeIssue(i).split('\n')));
  return deepFreeze(result.data);
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    // One line per unknown key, with the key in the path like any other problem.
    return issue.keys.map((key) => `${formatPath([...issue.path, key])}: unknown key`).join('\n');
  }
  const path = formatPath(issue.path);
  return path ? `${path}: ${issue.message}` : issue.message;
}

/** `['listen', 0, 'address']` → `listen[0].address`. */
export function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((out, key) => {
    if (typeof key === 'number') return `${out}[${key}]`;
    return out ? `${out}.${String(key)}` : String(key);
  }, '');
}

/** Reads a YAML (or JSON) config file into a plain object, not yet validated; a relative `auth.usersFile` or `log.file` becomes a path beside the file. */
export function readConfigFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError([`cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`]);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text) ?? {};
  } catch (err) {
    // yaml's first line ends with ':' before a source excerpt; the position is enough.
    throw new ConfigError([`${path}: ${(err as Error).message.split('\n')[0]!.replace(/:$/, '')}`]);
  }
  // A file that parses as a list or a lone value (a key without its colon is
  // a string) would otherwise mean "no settings": a default proxy, silently.
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    const found = Array.isArray(parsed) ? 'a list' : `a ${typeof parsed} (${JSON.stringify(parsed).slice(0, 40)})`;
    throw new ConfigError([`${path}: the top level must be a mapping of settings (key: value), not ${found}`]);
  }
  const directory = dirname(path);
  const settings = withoutEmptySections(parsed as Record<string, unknown>);
  return withPathFrom(withPathFrom(settings, 'auth', 'usersFile', directory), 'log', 'file', directory);
}

/**
 * A section left empty (`auth:` with every line under it commented out)
 * reads as null: it means the section's defaults, as if the key were not
 * there, not a mistake to refuse. Anything else that is not a mapping is
 * still the schema's to refuse.
 */
function withoutEmptySections(settings: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(settings).filter(([, value]) => value !== null));
}

/**
 * A relative path at `section.key` (`auth.usersFile`, `log.file`) names a
 * file beside the config file (the way `/etc/socksgate/socksgate.yaml` says
 * `./users`), not one in whatever directory the daemon was started from (`/`
 * under systemd).
 */
function withPathFrom(settings: Record<string, unknown>, section: string, key: string, directory: string): Record<string, unknown> {
  const values = settings[section];
  if (typeof values !== 'object' || values === null) return settings;
  const file: unknown = (values as Record<string, unknown>)[key];
  if (typeof file !== 'string' || file === '' || isAbsolute(file)) return settings;
  return { ...settings, [section]: { ...values, [key]: resolve(directory, file) } };
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
