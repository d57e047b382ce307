/**
 * Integer representation of numbers that offsets into guest memory are computed from. Private
 * to the library.
 *
 * Why it matters: an integer computed through floating point (`hi * 2 ** 32 + lo`, a guest
 * address put together from two register halves) keeps a double representation in
 * JavaScriptCore, and Bun's optimizing tiers speculate that a `DataView` offset is an int32.
 * A read whose offset has only ever been such a double leaves optimized code on every call and
 * is recompiled, again and again: 20–50× slower, and the order-of-magnitude swings between runs
 * the queue benchmarks used to show (`bench/jit_repro.ts` reproduces it in a few lines). V8
 * pays about 2–3× for the same. So the queue layer keeps every offset it reads through on a hot
 * path small and integral: each ring is read through a view of its own, and a region's base and
 * end are held as int32s where they fit, so that `addr - base` stays one.
 *
 * `intRep` is for cold code (set-up, validation): inlined into an optimized function it merges
 * an int32 and a double into one value, which is held as a double again.
 *
 * @module
 */

/**
 * The same value, held as a 32-bit integer when it fits one.
 * @param n Any number.
 * @returns `n`, as an int32 when it is an integer in the int32 range (anything else unchanged).
 */
export function intRep(n: number): number {
  const i = n | 0;
  return i === n ? i : n;
}
