/**
 * `npm run fuzz`: the fuzzer's command line.
 *
 * ```sh
 * npm run fuzz -- [--seed N] [--iterations N | --seconds N] [--targets rng,block,…] [--from N]
 *                 [--corpus DIR]
 * ```
 *
 * Runs each target for the given iterations (default 100000) or seconds, prints iterations per
 * second per target, and writes every failure to the corpus folder (default `fuzz/corpus/`) as
 * a JSON file that `tests/fuzz/corpus_test.ts` replays. Exits 1 when anything failed.
 *
 * @module
 */

import process from "node:process";
import { cpus, hostname } from "node:os";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { episodeStart, type RunStats, TARGETS } from "./targets.ts";

interface Args {
  seed: number;
  iterations: number;
  seconds: number | undefined;
  targets: string[];
  from: number;
  corpus: string;
}

function parse(argv: string[]): Args {
  const a: Args = {
    seed: 1,
    iterations: 100_000,
    seconds: undefined,
    targets: TARGETS.map((t) => t.name),
    from: 0,
    corpus: join(import.meta.dirname ?? "fuzz", "corpus"),
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    const num = () => {
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${k} needs a number, got ${v}`);
      i++;
      return n;
    };
    if (k === "--seed") a.seed = num();
    else if (k === "--iterations") a.iterations = num();
    else if (k === "--seconds") a.seconds = num();
    else if (k === "--from") a.from = num();
    else if (k === "--targets") {
      a.targets = (v ?? "").split(",").filter((s) => s !== "");
      i++;
    } else if (k === "--corpus") {
      a.corpus = v;
      i++;
    } else throw new RangeError(`Unknown option ${k}`);
  }
  for (const t of a.targets) {
    if (!TARGETS.some((x) => x.name === t)) {
      throw new RangeError(`Unknown target ${t} (${TARGETS.map((x) => x.name).join(", ")})`);
    }
  }
  return a;
}

function runtime(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  if (g.Bun !== undefined) return `Bun ${g.Bun.version}`;
  if (g.Deno !== undefined) return `Deno ${g.Deno.version.deno}`;
  return `Node ${process.version}`;
}

async function main(): Promise<number> {
  const args = parse(process.argv.slice(2));
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  console.log(
    `fuzz: seed ${args.seed}, ${
      args.seconds !== undefined ? `${args.seconds} s` : `${args.iterations} iterations`
    } per target, ${runtime()}, ${cpu} x${cpus().length} (${hostname()})`,
  );
  const all: RunStats[] = [];
  let failed = 0;
  for (const name of args.targets) {
    const target = TARGETS.find((t) => t.name === name)!;
    const deadline = args.seconds !== undefined
      ? performance.now() + args.seconds * 1000
      : undefined;
    const to = args.seconds !== undefined ? Number.MAX_SAFE_INTEGER : args.from + args.iterations;
    const t0 = performance.now();
    let last = t0;
    const stats = await target.run(args.seed, args.from, to, {
      deadline,
      progress: (done) => {
        const now = performance.now();
        if (now - last > 30_000) {
          last = now;
          const rate = Math.round(done / ((now - t0) / 1000));
          console.log(`  ${name}: ${done} iterations, ${rate} it/s`);
        }
      },
    });
    all.push(stats);
    const rate = Math.round(stats.iterations / (stats.ms / 1000));
    console.log(
      `${name.padEnd(10)} ${String(stats.iterations).padStart(10)} iterations ${
        String(rate).padStart(7)
      } it/s  ${stats.chains} chains, ${stats.resets} resets, ${stats.widened} widened, ${stats.failures.length} failures`,
    );
    for (const f of stats.failures) {
      failed++;
      console.log(`  FAIL at iteration ${f.iteration}: ${f.message}`);
      mkdirSync(args.corpus, { recursive: true });
      const file = join(args.corpus, `${name}-${args.seed}-${f.iteration}.json`);
      writeFileSync(
        file,
        JSON.stringify(
          {
            target: name,
            seed: args.seed,
            from: episodeStart(f.iteration),
            to: f.iteration + 1,
            message: f.message,
          },
          null,
          2,
        ) + "\n",
      );
    }
  }
  const total = all.reduce((n, s) => n + s.iterations, 0);
  console.log(`fuzz: ${total} iterations, ${failed} failures`);
  return failed === 0 ? 0 : 1;
}

process.exitCode = await main();
