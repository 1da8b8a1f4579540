/**
 * The error of a configuration that does not validate. A module of its own,
 * so the CLI's flag parsing can throw it without loading the schema (see
 * test/cli/startup-imports.test.ts).
 */

/** A configuration that does not validate; `problems` name each key path. */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems.join('; '));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}
