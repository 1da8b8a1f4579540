/**
 * socksgate as a library.
 *
 * ```ts
 * import { createServer } from 'socksgate';
 * const server = createServer({ listen: [{ address: '127.0.0.1', port: 1080 }] });
 * server.on('session-close', (record) => console.log(record));
 * await server.listen();
 * ```
 */
export { createServer, SocksServer, ListenError, RelayEngineError, reservePorts } from './server/server.js';
export type { ServerOptions, ServerDependencies, ReloadResult, SocksServerEvents, HandshakeEngine, ListenOptions } from './server/server.js';
export type { RelayEngine } from './relay/tcp.js';
export { compileRules, DEFAULT_DENY, RuleSet } from './policy/rules.js';
export type { RuleRequest, RuleDecision, RuleCommand } from './policy/rules.js';
export type { CloseReason, SessionRecord, SessionOpen, ListenerInfo, ServerEvents } from './observe/events.js';
export { createLogger, attachLogger, reopenLog } from './observe/log.js';
export { SocksError, Socks5Reply, Socks4Reply, toSocksError, socks5ReplyFor } from './errors.js';
export type { SocksErrorCode } from './errors.js';
export { ConfigError, validateConfig, readConfigFile } from './config/load.js';
export { configJsonSchema, parseDuration } from './config/schema.js';
export type { Config, ConfigInput, ListenerConfig } from './config/schema.js';
export { UserStore, UsersFileError, hashPassword, parseUsersFile, readUsersFile } from './auth/users.js';
export type { Authenticator, VerifyContext } from './auth/users.js';
export { createDirectDialer } from './upstream/dialer.js';
export type { Dialer, DialOptions } from './upstream/dialer.js';
export { systemResolver } from './upstream/resolver.js';
export type { Resolver, ResolveOptions, ResolvedAddress } from './upstream/resolver.js';
