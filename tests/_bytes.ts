/**
 * Byte-array assertions for tests. `assert.deepEqual` on two large, different byte arrays
 * computes a full diff, which for a few hundred KiB takes gigabytes of memory (an OOM kill
 * rather than a failure); `assertBytes` reports the first difference instead.
 *
 * @module
 */

import { AssertionError } from "node:assert";

function hex(b: Uint8Array, at: number): string {
  return [...b.subarray(at, at + 16)].map((x) => x.toString(16).padStart(2, "0")).join(" ");
}

/**
 * Assert two byte arrays are equal, naming the first differing offset.
 * @param actual The bytes seen.
 * @param expected The bytes wanted.
 * @param message What is compared.
 */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, message = "bytes"): void {
  const n = Math.min(actual.length, expected.length);
  let at = -1;
  for (let i = 0; i < n; i++) {
    if (actual[i] !== expected[i]) {
      at = i;
      break;
    }
  }
  if (at < 0 && actual.length === expected.length) return;
  if (at < 0) at = n;
  throw new AssertionError({
    message: `${message}: ${actual.length} bytes vs ${expected.length} expected, first ` +
      `difference at ${at}: got [${hex(actual, at)}], want [${hex(expected, at)}]`,
  });
}
