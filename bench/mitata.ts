/**
 * The micro-benchmarks of `queue_bench.ts`, `rng_bench.ts`, `block_bench.ts` and `net_bench.ts`
 * under mitata,
 * runnable with `bun bench/mitata.ts` or `deno run -A bench/mitata.ts`; ends
 * with a table of derived descriptors/s and MB/s.
 *
 * @module
 */

import { bench, group, run } from "mitata";
import { type BenchCase, blockCases, queueCases, rate, rngCases } from "./_cases.ts";
import { netCases } from "./_net_cases.ts";

const cases: BenchCase[] = [...queueCases(), ...rngCases(), ...blockCases(), ...netCases()];

group("split queue", () => {
  for (const c of cases.filter((c) => c.group === "queue")) bench(c.name, () => c.run());
});
group("rng", () => {
  for (const c of cases.filter((c) => c.group === "rng")) bench(c.name, () => c.run());
});
group("block", () => {
  for (const c of cases.filter((c) => c.group === "block")) bench(c.name, () => c.run());
});
group("net", () => {
  for (const c of cases.filter((c) => c.group === "net")) bench(c.name, () => c.run());
});

const { benchmarks } = await run();

const rows: string[][] = [["case", "ops/s (batches)", "mean/batch", "rate (mean)", "rate (p50)"]];
for (const trial of benchmarks) {
  const c = cases.find((x) => x.name === trial.alias);
  const stats = trial.runs[0]?.stats;
  if (c === undefined || stats === undefined) continue;
  rows.push([
    c.name,
    (1e9 / stats.avg).toFixed(0),
    stats.avg >= 1e6 ? `${(stats.avg / 1e6).toFixed(2)} ms` : `${(stats.avg / 1e3).toFixed(2)} µs`,
    rate(c, stats.avg),
    rate(c, stats.p50),
  ]);
}
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
console.log("\nDerived rates");
for (const [i, r] of rows.entries()) {
  console.log(
    r.map((cell, j) => j === 0 ? cell.padEnd(widths[j]) : cell.padStart(widths[j])).join("  "),
  );
  if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
}
