/** json-bytes: JSON strings and numbers written into a buffer as UTF-8, byte for byte what JSON.stringify gives. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { anyText } from '../helpers/arbitraries.js';
import { JSON_NUMBER_BOUND, jsonTextBound, writeJsonNumber, writeJsonString, writeNumberText, writeRaw } from '../../src/observe/json-bytes.js';

/** What a writer put in a fresh buffer, starting at an offset so that "at" is honoured. */
function written(write: (buf: Buffer, at: number) => number): Buffer {
  const buf = Buffer.alloc(4096, 0xee);
  const end = write(buf, 3);
  assert.ok(buf.subarray(0, 3).equals(Buffer.alloc(3, 0xee)), 'nothing before the offset');
  assert.equal(buf[end], 0xee, 'nothing past the returned end');
  return buf.subarray(3, end);
}

const stringVectors: Array<[string, string, string]> = [
  ['plain ASCII', 'example.com:443', '22 6578616d706c652e636f6d3a343433 22'],
  ['empty', '', '22 22'],
  ['quote and backslash', 'a"b\\c', '22 61 5c22 62 5c5c 63 22'],
  ['the short escapes', '\b\t\n\f\r', '22 5c62 5c74 5c6e 5c66 5c72 22'],
  ['other controls: \\u00XX, lower-case hex', '\u0000\u001f\u000b', '22 5c7530303030 5c7530303166 5c7530303062 22'],
  ['DEL and the rest of ASCII as they are', '\u007f~ ', '22 7f 7e 20 22'],
  ['two bytes (é)', '\u00e9', '22 c3a9 22'],
  ['three bytes (€), and the last before the surrogates', '\u20ac\ud7ff', '22 e282ac ed9fbf 22'],
  ['three bytes after the surrogates', '\ue000\uffff', '22 ee8080 efbfbf 22'],
  ['four bytes (a surrogate pair: U+1F600)', '\ud83d\ude00', '22 f09f9880 22'],
  ['a lone high surrogate, escaped', '\ud800x', '22 5c7564383030 78 22'],
  ['a lone low surrogate, escaped', '\udc00', '22 5c7564633030 22'],
  ['a high surrogate last', 'x\udbff', '22 78 5c7564626666 22'],
  ['two high surrogates, then a low one: the second pairs', '\ud800\ud83d\ude00', '22 5c7564383030 f09f9880 22'],
];

for (const [what, text, bytes] of stringVectors) {
  test(`writeJsonString: ${what}`, () => {
    const out = written((buf, at) => writeJsonString(buf, at, text));
    assert.equal(out.toString('hex'), bytes.replaceAll(' ', ''));
    assert.ok(out.equals(Buffer.from(JSON.stringify(text))), 'as JSON.stringify');
    assert.ok(out.length <= 2 + jsonTextBound(text.length), 'within the bound');
  });
}

const numberVectors: Array<[number, string]> = [
  [0, '0'], [-0, '0'], [7, '7'], [10, '10'], [1795394064052, '1795394064052'], [-42, '-42'],
  [Number.MAX_SAFE_INTEGER, '9007199254740991'], [-Number.MAX_SAFE_INTEGER, '-9007199254740991'],
  [2 ** 53, '9007199254740992'], [2 ** 60, '1152921504606847000'], [1e21, '1e+21'], [1.5, '1.5'], [-0.000001, '-0.000001'],
  [5e-324, '5e-324'], [-Number.MAX_VALUE, '-1.7976931348623157e+308'],
  [Number.NaN, 'null'], [Number.POSITIVE_INFINITY, 'null'], [Number.NEGATIVE_INFINITY, 'null'],
];

for (const [value, text] of numberVectors) {
  test(`writeJsonNumber: ${String(value)} is ${text}`, () => {
    const out = written((buf, at) => writeJsonNumber(buf, at, value));
    assert.equal(out.toString(), text);
    assert.equal(out.toString(), JSON.stringify(value), 'as JSON.stringify');
    assert.ok(out.length <= JSON_NUMBER_BOUND, 'within the bound');
  });
}

test('writeNumberText writes what String() does, NaN and the infinities included (a message, not a JSON value)', () => {
  for (const value of [0, -0, 12, -12, 2 ** 53, 0.1, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
    assert.equal(written((buf, at) => writeNumberText(buf, at, value)).toString(), String(value));
  }
});

test('writeRaw copies text as it is, UTF-8 encoded past ASCII', () => {
  assert.equal(written((buf, at) => writeRaw(buf, at, ',"pid":4242')).toString(), ',"pid":4242');
  assert.equal(written((buf, at) => writeRaw(buf, at, ',"host":"h\u00e9\u20ac\ud83d\ude00"')).toString('hex'), Buffer.from(',"host":"h\u00e9\u20ac\ud83d\ude00"').toString('hex'));
});

test('any string, and any number, is written as JSON.stringify writes it, within the bound', () => {
  fc.assert(fc.property(anyText(200), (text) => {
    const out = written((buf, at) => writeJsonString(buf, at, text));
    assert.ok(out.equals(Buffer.from(JSON.stringify(text))));
    assert.ok(out.length <= 2 + jsonTextBound(text.length));
  }), { numRuns: 1000 });
  fc.assert(fc.property(fc.oneof(fc.integer(), fc.maxSafeInteger(), fc.double()), (value) => {
    const out = written((buf, at) => writeJsonNumber(buf, at, value));
    assert.equal(out.toString(), JSON.stringify(value));
  }), { numRuns: 1000 });
});
