/**
 * The fuzzer's own pseudo-random numbers: xoshiro128** seeded through splitmix32, so that a
 * seed and an iteration number name one input exactly, on every runtime.
 *
 * @module
 */

function splitmix32(x: number): () => number {
  let s = x >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** A deterministic generator (xoshiro128**). */
export class Prng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  /**
   * Seed it from a run's seed and a stream (an iteration number, say).
   * @param seed The run's seed.
   * @param stream Which stream of that seed.
   */
  constructor(seed: number, stream = 0) {
    const sm = splitmix32((seed >>> 0) ^ Math.imul(stream >>> 0, 0x27d4eb2f) ^ (stream / 2 ** 32));
    this.#a = sm();
    this.#b = sm();
    this.#c = sm();
    this.#d = sm() | 1;
  }

  /** The next 32 random bits. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.#b, 5), 7), 9) >>> 0;
    const t = this.#b << 9;
    this.#c ^= this.#a;
    this.#d ^= this.#b;
    this.#b ^= this.#c;
    this.#a ^= this.#d;
    this.#c ^= t;
    this.#d = rotl(this.#d, 11);
    return r;
  }

  /**
   * A number from 0 to n - 1.
   * @param n Bound (at least 1).
   */
  int(n: number): number {
    return n <= 1 ? 0 : Math.floor((this.u32() / 0x1_0000_0000) * n);
  }

  /**
   * True with probability p.
   * @param p Probability.
   */
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }

  /**
   * One element.
   * @param xs The choices (not empty).
   */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  /**
   * Random bytes.
   * @param n How many.
   */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      out[i] = v;
      if (i + 1 < n) out[i + 1] = v >>> 8;
      if (i + 2 < n) out[i + 2] = v >>> 16;
      if (i + 3 < n) out[i + 3] = v >>> 24;
    }
    return out;
  }

  /** A length biased towards the small and the edges: 0, 1, small, powers of two, ±1. */
  size(max: number): number {
    switch (this.int(6)) {
      case 0:
        return this.int(Math.min(max, 4) + 1);
      case 1:
        return this.int(Math.min(max, 64) + 1);
      case 2: {
        const p = 1 << this.int(Math.max(1, Math.floor(Math.log2(Math.max(2, max))) + 1));
        return Math.min(max, Math.max(0, p + this.int(3) - 1));
      }
      default:
        return this.int(max + 1);
    }
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Values that break arithmetic: zeros, ones, sign and width edges. */
export const INTERESTING_32: readonly number[] = [
  0,
  1,
  2,
  7,
  8,
  16,
  0x7f,
  0x80,
  0xff,
  0x100,
  0x1ff,
  0x200,
  0x7fff,
  0x8000,
  0xffff,
  0x10000,
  0x7fffffff,
  0x80000000,
  0xfffffffe,
  0xffffffff,
];

/** 64-bit edges. */
export const INTERESTING_64: readonly bigint[] = [
  0n,
  1n,
  0xffffffffn,
  0x100000000n,
  (1n << 53n) - 1n,
  1n << 53n,
  (1n << 63n) - 1n,
  1n << 63n,
  (1n << 64n) - 1n,
  (1n << 64n) - 512n,
];

/**
 * Mutate bytes in place (and maybe change their length): bit flips, interesting values at
 * random offsets (8, 16, 32 and 64 bits), random bytes, truncation or growth.
 * @param r The generator.
 * @param b The bytes.
 * @param rounds How many mutations.
 * @returns The mutated bytes (a new array when the length changed).
 */
export function mutateBytes(r: Prng, b: Uint8Array, rounds = 1 + r.int(4)): Uint8Array {
  let out = b;
  for (let k = 0; k < rounds; k++) {
    const n = out.length;
    const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
    switch (r.int(8)) {
      case 0:
        if (n > 0) out[r.int(n)] ^= 1 << r.int(8);
        break;
      case 1:
        if (n > 0) out[r.int(n)] = r.pick(INTERESTING_32);
        break;
      case 2:
        if (n >= 2) v.setUint16(r.int(n - 1), r.pick(INTERESTING_32), true);
        break;
      case 3:
        if (n >= 4) v.setUint32(r.int(n - 3), r.pick(INTERESTING_32), true);
        break;
      case 4:
        if (n >= 8) v.setBigUint64(r.int(n - 7), r.pick(INTERESTING_64), true);
        break;
      case 5:
        if (n > 0) out[r.int(n)] = r.u32();
        break;
      case 6:
        out = out.slice(0, r.int(n + 1));
        break;
      default: {
        const grown = new Uint8Array(n + 1 + r.int(64));
        grown.set(out);
        grown.set(r.bytes(grown.length - n), n);
        out = grown;
      }
    }
  }
  return out;
}
