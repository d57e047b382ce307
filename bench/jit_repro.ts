/**
 * The two JIT facts behind the queue figures, reduced to a few lines each; run under both
 * runtimes and compare:
 *
 * ```sh
 * node_modules/.bin/deno run bench/jit_repro.ts
 * node_modules/.bin/bun bench/jit_repro.ts
 * ```
 *
 * 1. A `DataView` read at an offset that is an integer held as a double (`hi * 2 ** 32 + lo`,
 *    which is how a guest address is put together). JavaScriptCore's optimizing tiers
 *    speculate an int32 offset: with a double one Bun leaves optimized code at the read on
 *    every call and recompiles, again and again (`BUN_JSC_verboseOSR=1` shows the same
 *    "OSR exit … Uncountable" at the `getUint32` over and over). The same offset passed
 *    through `| 0` first is read at full speed. V8 converts it itself.
 * 2. `Atomics.load` / `Atomics.store` against a plain typed-array access. Neither runtime makes
 *    them plain moves: V8 calls a builtin for each, JavaScriptCore's FTL turns `Atomics.load`
 *    into a locked `xadd` of 0 (`BUN_JSC_dumpFTLDisassembly=1`) and `Atomics.store` into an
 *    `xchg`, each a full fence. A split ring needs one such store per `addUsed` (used.idx) and
 *    one load per burst; a packed ring one load per list and one store per used descriptor.
 *
 * @module
 */

function rate(name: string, body: () => void, perRun: number): void {
  const rates: number[] = [];
  for (let r = 0; r < 30; r++) {
    const t0 = performance.now();
    body();
    rates.push(perRun / (performance.now() - t0) / 1e3);
  }
  rates.sort((a, b) => b - a);
  console.log(
    `${name.padEnd(44)} best ${rates[0].toFixed(0).padStart(5)} M/s, ` +
      `median ${rates[15].toFixed(0).padStart(5)} M/s`,
  );
}

const N = 1 << 20;
const buffer = new ArrayBuffer(1 << 20);
const view = new DataView(buffer);
const u16 = new Uint16Array(buffer);
let sink = 0;

// A ring offset put together at run time from the two 32-bit halves the driver wrote, kept in
// a field and read from a method, as a queue does: 0x1000 either way, held as an int32 by one
// class and as a double by the other. Two classes, so that neither read sees the other's kind.
const hi = Number("0");
const lo = Number("4096");
class IntOffset {
  base: number;
  constructor(base: number) {
    this.base = base;
  }
  read(i: number): number {
    const off = this.base + 16 * i;
    return view.getUint32(off, true) + view.getUint32(off + 8, true);
  }
}
class DoubleOffset {
  base: number;
  constructor(base: number) {
    this.base = base;
  }
  read(i: number): number {
    const off = this.base + 16 * i;
    return view.getUint32(off, true) + view.getUint32(off + 8, true);
  }
}
const readers: [string, { read(i: number): number }][] = [
  ["DataView reads, offset held as int32", new IntOffset((hi * 0x1_0000_0000 + lo) | 0)],
  ["DataView reads, offset held as a double", new DoubleOffset(hi * 0x1_0000_0000 + lo)],
];
for (const [name, reader] of readers) {
  const rates: number[] = [];
  for (let r = 0; r < 30; r++) {
    const t0 = performance.now();
    for (let i = 0; i < N; i++) sink += reader.read(i & 0xfff);
    rates.push(N / (performance.now() - t0) / 1e3);
  }
  rates.sort((a, b) => b - a);
  console.log(
    `${name.padEnd(44)} best ${rates[0].toFixed(0).padStart(5)} M/s, ` +
      `median ${rates[15].toFixed(0).padStart(5)} M/s`,
  );
}
rate("Uint16Array load, plain", () => {
  for (let i = 0; i < N; i++) sink += u16[i & 0xff];
}, N);
rate("Uint16Array load, Atomics.load", () => {
  for (let i = 0; i < N; i++) sink += Atomics.load(u16, i & 0xff);
}, N);
rate("Uint16Array store, plain", () => {
  for (let i = 0; i < N; i++) u16[i & 0xff] = i;
}, N);
rate("Uint16Array store, Atomics.store", () => {
  for (let i = 0; i < N; i++) Atomics.store(u16, i & 0xff, i);
}, N);
if (sink === 0.5) console.log(sink);
