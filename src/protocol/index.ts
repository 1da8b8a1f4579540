/** Pure SOCKS codecs: bytes to typed messages and back, with no I/O. */
export * from './address.js';
export * from './socks4.js';
export * from './socks5.js';
export * from './udp.js';
export * from './userpass.js';
