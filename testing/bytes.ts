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
 * Where two byte arrays first differ.
 * @param a One array.
 * @param b The other.
 * @returns The first differing index (the shorter length when one is a prefix of the
 *   other), or -1 when they are equal.
 */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/**
 * Assert two byte arrays are equal, naming the first differing offset.
 * @param actual The bytes seen.
 * @param expected The bytes wanted.
 * @param message What is compared.
 */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, message = "bytes"): void {
  const at = firstDifference(actual, expected);
  if (at < 0) return;
  throw new AssertionError({
    message: `${message}: ${actual.length} bytes vs ${expected.length} expected, first ` +
      `difference at ${at}: got [${hex(actual, at)}], want [${hex(expected, at)}]`,
  });
}

/**
 * What `yes TEXT | head -c SIZE` prints in the guest: `TEXT\n` repeated, cut at `size` bytes.
 *
 * @param text The line, without its newline.
 * @param size Total bytes.
 * @returns The bytes.
 */
export function yesPattern(text: string, size: number): Uint8Array {
  const line = new TextEncoder().encode(`${text}\n`);
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = line[i % line.length];
  return out;
}
