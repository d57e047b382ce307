/**
 * Integer representation for offsets that index guest memory. Private to the library.
 *
 * @module
 */

/**
 * The same value, held as a 32-bit integer when it fits one.
 *
 * An integer computed through floating point (`hi * 2 ** 32 + lo`, a guest address) keeps a
 * double representation in JavaScriptCore, and Bun's optimizing JIT speculates that a
 * `DataView` offset is an int32: an offset held as a double makes it leave optimized code
 * on every call and recompile, again and again (a 50–200× slowdown, and the order-of-magnitude
 * swings between runs the queue benchmarks showed; `bench/README.md` has the reproduction).
 * V8 converts such values itself. Every guest-derived offset that ends up indexing a
 * `DataView` or a typed array is passed through here once, where it is computed.
 * @param n Any number.
 * @returns `n`, as an int32 when it is an integer in the int32 range (anything else unchanged).
 */
export function intRep(n: number): number {
  const i = n | 0;
  return i === n ? i : n;
}
