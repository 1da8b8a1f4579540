/**
 * JSON values written straight into a byte buffer as UTF-8, exactly as
 * `Buffer.from(JSON.stringify(value))` would give them, without making a
 * string on the way. The access log's session line goes into its file batch
 * this way (log.ts): building it as a string and then encoding it made about
 * 4.7 KB of garbage per line (a concatenation per field, a quoted copy per
 * string, a flattened copy for the encoder), which at thousands of sessions a
 * second made the young generation fill, and be scavenged, over twice as often.
 *
 * Each writer takes the buffer and the offset to write at, and returns the
 * offset after what it wrote. The caller makes room first: the *_BOUND
 * figures are the most a value can take.
 */

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const HEX = '0123456789abcdef';
/** JSON.stringify's short escapes, by character code; the other controls are \u00XX. */
const SHORT_ESCAPES: ReadonlyMap<number, number> = new Map([[0x08, 0x62], [0x09, 0x74], [0x0a, 0x6e], [0x0c, 0x66], [0x0d, 0x72]]);

/** The most bytes a string of `length` UTF-16 code units takes inside quotes: 6 for a control character or a lone surrogate (\uXXXX). */
export function jsonTextBound(length: number): number {
  return 6 * length;
}

/** The most bytes a number takes (`-1.7976931348623157e+308`), and `null`. */
export const JSON_NUMBER_BOUND = 24;

/** `text` as JSON.stringify writes it: in quotes, escaped. */
export function writeJsonString(buf: Buffer, at: number, text: string): number {
  buf[at++] = QUOTE;
  at = writeJsonText(buf, at, text);
  buf[at++] = QUOTE;
  return at;
}

/** `text` as JSON.stringify writes it between the quotes. */
export function writeJsonText(buf: Buffer, at: number, text: string): number {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x20 && c < 0x80) {
      if (c === QUOTE || c === BACKSLASH) buf[at++] = BACKSLASH;
      buf[at++] = c;
    } else if (c < 0x20) {
      at = writeControl(buf, at, c);
    } else if (c < 0x800) {
      buf[at++] = 0xc0 | (c >> 6);
      buf[at++] = 0x80 | (c & 0x3f);
    } else if (c < 0xd800 || c > 0xdfff) {
      at = writeThreeBytes(buf, at, c);
    } else {
      const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        at = writeFourBytes(buf, at, 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00));
        i++;
      } else {
        at = writeUnicodeEscape(buf, at, c); // a lone surrogate: escaped since ES2019 (well-formed JSON.stringify)
      }
    }
  }
  return at;
}

/** A number as JSON.stringify writes it: null for NaN and the infinities. */
export function writeJsonNumber(buf: Buffer, at: number, value: number): number {
  return Number.isFinite(value) ? writeNumberText(buf, at, value) : writeRaw(buf, at, 'null');
}

/** A number as String() writes it (what a template literal puts in a message). */
export function writeNumberText(buf: Buffer, at: number, value: number): number {
  if (!Number.isSafeInteger(value)) return writeRaw(buf, at, String(value)); // fractions, exponents, NaN: rare here
  if (value < 0) {
    buf[at++] = 0x2d;
    value = -value;
  }
  const end = at + digitCount(value);
  let digit = end;
  do {
    buf[--digit] = 0x30 + (value % 10);
    value = Math.floor(value / 10);
  } while (value > 0);
  return end;
}

/**
 * Text that is JSON already, or ASCII that needs no escaping (keys, the time
 * field, a logger's serialised bindings): copied, UTF-8 encoded, so at most
 * 3 bytes per code unit.
 */
export function writeRaw(buf: Buffer, at: number, text: string): number {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) return at + buf.write(text.slice(i), at);
    buf[at++] = c;
  }
  return at;
}

function digitCount(value: number): number {
  let count = 1;
  while (value >= 10) {
    value = Math.floor(value / 10);
    count++;
  }
  return count;
}

function writeControl(buf: Buffer, at: number, c: number): number {
  const short = SHORT_ESCAPES.get(c);
  if (short === undefined) return writeUnicodeEscape(buf, at, c);
  buf[at++] = BACKSLASH;
  buf[at++] = short;
  return at;
}

/** \uXXXX, lower-case hex as JSON.stringify writes it. */
function writeUnicodeEscape(buf: Buffer, at: number, c: number): number {
  buf[at++] = BACKSLASH;
  buf[at++] = 0x75;
  for (let shift = 12; shift >= 0; shift -= 4) buf[at++] = HEX.charCodeAt((c >> shift) & 0xf);
  return at;
}

function writeThreeBytes(buf: Buffer, at: number, c: number): number {
  buf[at++] = 0xe0 | (c >> 12);
  buf[at++] = 0x80 | ((c >> 6) & 0x3f);
  buf[at++] = 0x80 | (c & 0x3f);
  return at;
}

function writeFourBytes(buf: Buffer, at: number, codePoint: number): number {
  buf[at++] = 0xf0 | (codePoint >> 18);
  buf[at++] = 0x80 | ((codePoint >> 12) & 0x3f);
  buf[at++] = 0x80 | ((codePoint >> 6) & 0x3f);
  buf[at++] = 0x80 | (codePoint & 0x3f);
  return at;
}
