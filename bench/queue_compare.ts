/**
 * The queue micro-benchmarks under Deno and Bun in turn, several rounds, one table: for each
 * case and runtime the median over the rounds of the per-batch median time (mitata's p50, so a
 * batch interrupted by another process on a shared machine does not count), as chains/s and
 * descriptors/s, with the spread (slowest and fastest round), then the Bun/Deno and
 * packed/split ratios of the medians.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/queue_compare.ts [--rounds 5] [--before DIR]
 * ```
 * `--before DIR` also runs another checkout's `bench/mitata.ts` in every round (give it this
 * checkout's `bench/_cases.ts`, `bench/mitata.ts` and `testing/queue_driver.ts` to compare the
 * queue code alone) and adds a before/after table; the runtimes are this checkout's.
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import { cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";

interface Row {
  runtime: string;
  name: string;
  batch: number;
  descriptors: number;
  p50Ns: number;
}

const args = process.argv.slice(2);
const opt = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const rounds = Number(opt("--rounds", "5"));
const here = resolve(new URL("..", import.meta.url).pathname);
const before = args.includes("--before") ? resolve(opt("--before", "")) : undefined;
const roots: [string, string][] = [
  ["", here],
  ...(before ? [["before ", before]] as [string, string][] : []),
];
const runtimes: [string, string[]][] = [
  ["deno", [join(here, "node_modules/.bin/deno"), "run", "-A"]],
  ["bun", [join(here, "node_modules/.bin/bun")]],
];

const results = new Map<string, number[]>(); // `${runtime}\t${name}` → chains/s per round
const cases = new Map<string, Row>();
const loads: number[] = [];
for (let r = 0; r < rounds; r++) {
  for (const [tag, root] of roots) {
    for (const [runtime, cmd] of runtimes) {
      loads.push(loadavg()[0]);
      const out = spawnSync(cmd[0], [...cmd.slice(1), "bench/mitata.ts", "queue", "--json"], {
        cwd: root,
        encoding: "utf8",
        maxBuffer: 1 << 24,
      });
      if (out.status !== 0) throw new Error(`${tag}${runtime} failed: ${out.stderr}`);
      for (const line of out.stdout.split("\n")) {
        if (!line.startsWith("{")) continue;
        const row = { ...JSON.parse(line), runtime } as Row;
        if (tag === "") cases.set(row.name, row);
        const key = `${tag}${runtime}\t${row.name}`;
        const list = results.get(key) ?? [];
        list.push(row.batch * 1e9 / row.p50Ns);
        results.set(key, list);
      }
      console.error(
        `round ${r + 1}/${rounds} ${tag}${runtime} done (load ${loadavg()[0].toFixed(1)})`,
      );
    }
  }
}

const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const m = (v: number) => (v / 1e6).toFixed(v >= 1e7 ? 1 : 2);
const cell = (runtime: string, row: Row) => {
  const list = results.get(`${runtime}\t${row.name}`) ?? [];
  if (list.length === 0) return "–";
  const per = row.descriptors / row.batch;
  const med = median(list);
  const lo = Math.min(...list);
  const hi = Math.max(...list);
  const desc = per === 1 ? "" : ` (${m(med * per)} M desc/s)`;
  return `${m(med)} M/s${desc} [${m(lo)}–${m(hi)}]`;
};
const ratio = (a: string, b: string) => {
  const x = results.get(a);
  const y = results.get(b);
  return x && y ? (median(x) / median(y)).toFixed(2) : "–";
};

console.log(
  `${rounds} rounds, ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}), load average during ` +
    `the runs ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}; ` +
    `chains/s at the median batch time, median of the rounds [slowest–fastest round]\n`,
);
console.log("| case | Deno | Bun | Bun/Deno | packed/split (Deno) | packed/split (Bun) |");
console.log("| --- | --- | --- | --- | --- | --- |");
for (const row of cases.values()) {
  const split = row.name.replace(/^packed/, "split");
  const packed = row.name.startsWith("packed");
  console.log(
    `| ${row.name} | ${cell("deno", row)} | ${cell("bun", row)} | ` +
      `${ratio(`bun\t${row.name}`, `deno\t${row.name}`)} | ` +
      `${packed ? ratio(`deno\t${row.name}`, `deno\t${split}`) : ""} | ` +
      `${packed ? ratio(`bun\t${row.name}`, `bun\t${split}`) : ""} |`,
  );
}

if (before) {
  console.log(`\nBefore (${before}) and after (${here}), same rounds:\n`);
  console.log(
    "| case | Deno before | Deno after | after/before | Bun before | Bun after | after/before |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- |");
  for (const row of cases.values()) {
    console.log(
      `| ${row.name} | ${cell("before deno", row)} | ${cell("deno", row)} | ` +
        `${ratio(`deno\t${row.name}`, `before deno\t${row.name}`)} | ` +
        `${cell("before bun", row)} | ${cell("bun", row)} | ` +
        `${ratio(`bun\t${row.name}`, `before bun\t${row.name}`)} |`,
    );
  }
}
