/**
 * The micro-benchmarks of `queue_bench.ts`, `rng_bench.ts`, `block_bench.ts` and `net_bench.ts`
 * under mitata, runnable with `bun bench/mitata.ts` or `deno run -A bench/mitata.ts`; ends
 * with a table of derived rates (chains and descriptors/s, MB/s, requests/s, frames/s).
 *
 * Arguments: group names to run only those (`queue`, `rng`, `block`, `net`; default all), and
 * `--json` to print one JSON object per case instead of mitata's report and the table (what
 * `queue_compare.ts` reads). With `--json` every case is first run for 300 ms, then timed one
 * batch per sample for at least one second of measured time: mitata's own choice between timing
 * single batches and averaging 4096 of them depends on how long the first cold call took, which
 * gives medians of different kinds from run to run.
 *
 * @module
 */

import process from "node:process";
import { bench, group, measure, run } from "mitata";
import { type BenchCase, blockCases, queueCases, rate, rngCases } from "./_cases.ts";
import { netCases } from "./_net_cases.ts";

const args = process.argv.slice(2);
const json = args.includes("--json");
const groups = args.filter((a) => !a.startsWith("--"));
const wanted = (g: BenchCase["group"]) => groups.length === 0 || groups.includes(g);

const cases: BenchCase[] = [
  ...(wanted("queue") ? queueCases() : []),
  ...(wanted("rng") ? rngCases() : []),
  ...(wanted("block") ? blockCases() : []),
  ...(wanted("net") ? netCases() : []),
];

const runtime = "Bun" in globalThis ? "bun" : "Deno" in globalThis ? "deno" : "other";

if (json) {
  for (const c of cases) {
    const until = performance.now() + 300;
    while (performance.now() < until) c.run();
    const stats = await measure(() => c.run(), {
      batch_threshold: 0,
      min_samples: 100,
      min_cpu_time: 1e9,
    });
    console.log(JSON.stringify({
      runtime,
      name: c.name,
      group: c.group,
      batch: c.batch,
      descriptors: c.descriptors,
      bytes: c.bytes,
      avgNs: stats.avg,
      p50Ns: stats.p50,
      minNs: stats.min,
      samples: stats.samples.length,
    }));
  }
} else {
  for (const g of ["queue", "rng", "block", "net"] as const) {
    const mine = cases.filter((c) => c.group === g);
    if (mine.length === 0) continue;
    group(g, () => {
      for (const c of mine) bench(c.name, () => c.run());
    });
  }
  const { benchmarks } = await run();
  const rows: string[][] = [["case", "ops/s (batches)", "mean/batch", "rate (mean)", "rate (p50)"]];
  for (const trial of benchmarks) {
    const c = cases.find((x) => x.name === trial.alias);
    const stats = trial.runs[0]?.stats;
    if (c === undefined || stats === undefined) continue;
    rows.push([
      c.name,
      (1e9 / stats.avg).toFixed(0),
      stats.avg >= 1e6
        ? `${(stats.avg / 1e6).toFixed(2)} ms`
        : `${(stats.avg / 1e3).toFixed(2)} µs`,
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
}
