/**
 * parseArgs' errors as one line. Most of its messages are one already; the
 * one for a value beginning with '-' is three lines, and offers `--flag=-XYZ`
 * also where no negative value is accepted. Light: cli.ts loads it before
 * its heavy modules (see test/cli/startup-imports.test.ts).
 */
import type { ParseArgsConfig } from 'node:util';

/** Said after a command-line mistake, in place of the whole usage text. */
export const HELP_HINT = '(see socksgate --help)';

type Options = NonNullable<ParseArgsConfig['options']>;

/** What the values of some options are, for what to say about one beginning with '-'. */
export interface OptionValues {
  /** Long names whose values are numbers (durations, counts), none negative. */
  readonly numeric: ReadonlySet<string>;
  /** Long names whose values hold a password, not to be written back. */
  readonly secret: ReadonlySet<string>;
}

/** The error parseArgs threw for `argv` and `options`, as one line. */
export function argsProblem(err: unknown, argv: readonly string[], options: Options, values: OptionValues): string {
  const message = err instanceof Error ? err.message : String(err);
  const ambiguous = /^Option '(-[^-]|--[^']+)' argument is ambiguous/.exec(message);
  const value = ambiguous ? valueAfter(ambiguous[1]!, argv) : undefined;
  if (!ambiguous || value === undefined) return message.split('\n')[0]!;
  return dashValueProblem(longName(ambiguous[1]!, options), value, options, values);
}

function dashValueProblem(name: string, value: string, options: Options, values: OptionValues): string {
  if (isOption(value, options)) return `--${name} needs a value: ${value} is an option`;
  if (values.numeric.has(name) && /^-\d/.test(value)) return `--${name} ${value}: negative values are not accepted`;
  const shown = values.secret.has(name) ? '-…' : value;
  return `--${name} ${shown}: a value beginning with '-' is written --${name}=${shown}`;
}

/**
 * The argument parseArgs found ambiguous: the first after `option` that
 * begins with '-' (parseArgs stops at the first; undefined when `option` was
 * in a group such as -Vc).
 */
function valueAfter(option: string, argv: readonly string[]): string | undefined {
  const at = argv.findIndex((arg, i) => arg === option && argv[i + 1]?.startsWith('-'));
  return at < 0 ? undefined : argv[at + 1];
}

/** `-c` → `config`, `--config` → `config`. */
function longName(option: string, options: Options): string {
  if (option.startsWith('--')) return option.slice(2);
  const short = option.slice(1);
  return Object.keys(options).find((name) => options[name]!.short === short) ?? short;
}

/** `--check`, `--config=x`, `-c` or `--` (the end of the options): an option of this command, not a value. */
function isOption(arg: string, options: Options): boolean {
  if (arg === '--') return true;
  if (arg.startsWith('--')) return Object.hasOwn(options, arg.slice(2).split('=')[0]!);
  return arg.length === 2 && Object.values(options).some((option) => option.short === arg[1]);
}
