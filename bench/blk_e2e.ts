/**
 * End-to-end vhost-user-blk benchmark without a VM: our TypeScript vhost-user frontend
 * (`vhost_user/frontend.ts` with the driver-side queue harness, memfd guest memory, N requests
 * in flight) drives (i) our backend (`vhost_user/main.ts`, its own process) and (ii)
 * `qemu-storage-daemon --export type=vhost-user-blk` on the same raw image, in the same run,
 * workload by workload, alternating between them. Both serve through the host page cache.
 *
 * Before measuring, the frontend proves each backend correct: it writes distinct data to random
 * 4 KiB blocks and a 1 MiB extent, flushes, reads it back through the backend and compares, and
 * compares the image file too.
 *
 * Contenders, each its own process on the same image: ours serving on the event loop; ours
 * with a thread per ring (`--queue-threads`); the same with poll mode (`--poll-us N`, default
 * 100; 0 leaves it out); and qemu-storage-daemon in four configurations: `aio=threads` or
 * `aio=io_uring`, each with and without an iothread (which polls adaptively before it sleeps,
 * QEMU's default `poll-max-ns` of 32 µs). For each workload it prints IOPS and MB/s (medians
 * over the rounds, the rounds interleaved between contenders), the best qemu-storage-daemon
 * configuration and the ratios queue threads / best qsd and queue threads / ceiling, then a
 * table of the four qsd configurations. The ceiling is the host's own throughput on the same
 * file with the same pattern, measured in every round between the backends: `fio` (psync at
 * QD1, io_uring at higher depths, buffered, one job) when installed, else a synchronous
 * pread/pwrite loop in this process. A second section does the
 * same with two request queues, the queue depth split between two rings driven at once
 * (`--queues N`; 1 leaves it out).
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/blk_e2e.ts [--seconds S] [--rounds N]
 * [--size-mib M] [--image PATH] [--keep] [--poll-us N] [--bun] [--queues N]
 * [--only NAME,...] [--multi-queue-only]`
 * (`--bun`: run our backend under Bun instead of Deno; the frontend stays on Deno; `--only`:
 * the workloads whose name contains one of these)
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import { closeSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { type LoadResult, type Workload, WORKLOADS } from "./_blk_load.ts";
import {
  type BackendProcess,
  type Connected,
  connectLoad,
  hasQsd,
  type QsdOptions,
  readImage,
  startOurs,
  startQsd,
  writeBenchImage,
} from "./_blk_backends.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    seconds: { type: "string", default: "2" },
    rounds: { type: "string", default: "3" },
    "size-mib": { type: "string", default: "1024" },
    image: { type: "string" },
    keep: { type: "boolean", default: false },
    "poll-us": { type: "string", default: "100" },
    bun: { type: "boolean", default: false },
    queues: { type: "string", default: "2" },
    only: { type: "string" },
    "multi-queue-only": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  console.log(
    "Usage: deno run -A bench/blk_e2e.ts [--seconds S] [--rounds N] [--size-mib M] " +
      "[--image PATH] [--keep] [--poll-us N] [--bun] [--queues N] [--only NAME,...] " +
      "[--multi-queue-only]",
  );
  process.exit(0);
}
const seconds = Number(opts.seconds);
const rounds = Number(opts.rounds);
const sizeMib = Number(opts["size-mib"]);
const pollUs = Number(opts["poll-us"]);
const runtime = opts.bun ? "bun" : "deno";
const queues2 = Number(opts.queues);
const image = opts.image ?? join(tmpdir(), `virtio-ts-blk-bench-${process.pid}.img`);
const dir = tmpdir();

if (!hasQsd()) {
  console.log("skipped: qemu-storage-daemon not installed (apt-get install qemu-system-common)");
  process.exit(0);
}

function hasFio(): boolean {
  return spawnSync("fio", ["--version"]).status === 0;
}

/** The host ceiling with fio, same file, pattern, block size and depth. */
function fioRun(w: Workload, sizeBytes: number): LoadResult {
  const rw = (w.random ? "rand" : "") + w.op;
  const args = [
    "--name=ceiling",
    `--filename=${image}`,
    `--size=${sizeBytes}`,
    `--rw=${rw}`,
    `--bs=${w.blockSize}`,
    `--iodepth=${w.queueDepth}`,
    `--ioengine=${w.queueDepth === 1 ? "psync" : "io_uring"}`,
    "--direct=0",
    "--invalidate=0",
    "--norandommap",
    "--randrepeat=0",
    "--time_based",
    `--runtime=${Math.max(1, Math.round(seconds * 1000))}ms`,
    "--output-format=json",
  ];
  const r = spawnSync("fio", args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`fio failed: ${r.stderr}`);
  const job = JSON.parse(r.stdout).jobs[0][w.op];
  const secs = job.runtime / 1000;
  return {
    ops: job.total_ios,
    bytes: job.io_bytes,
    seconds: secs,
    iops: job.iops,
    mbps: job.bw_bytes / 1e6,
  };
}

/** The host ceiling without fio: synchronous positional I/O in this process. */
function syncRun(w: Workload, sizeBytes: number): LoadResult {
  const fd = openSync(image, w.op === "read" ? "r" : "r+");
  const buf = new Uint8Array(w.blockSize).fill(0x5a);
  const blocks = Math.floor(sizeBytes / w.blockSize);
  let x = 1, seq = 0, ops = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  try {
    while (performance.now() < deadline) {
      let block = seq;
      if (w.random) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        x >>>= 0;
        block = x % blocks;
      } else seq = (seq + 1) % blocks;
      if (w.op === "read") readSync(fd, buf, 0, w.blockSize, block * w.blockSize);
      else writeSync(fd, buf, 0, w.blockSize, block * w.blockSize);
      ops++;
    }
  } finally {
    closeSync(fd);
  }
  const secs = (performance.now() - start) / 1000;
  return {
    ops,
    bytes: ops * w.blockSize,
    seconds: secs,
    iops: ops / secs,
    mbps: ops * w.blockSize / secs / 1e6,
  };
}

function median(xs: LoadResult[]): LoadResult {
  const sorted = [...xs].sort((a, b) => a.iops - b.iops);
  return sorted[Math.floor(sorted.length / 2)];
}

function fmtIops(r: LoadResult): string {
  return r.iops >= 1000 ? `${(r.iops / 1000).toFixed(1)}k` : r.iops.toFixed(0);
}

function machine(): string {
  const cpu = cpus();
  const model = cpu[0]?.model.trim() ?? "unknown CPU";
  const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const kernel = readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
  const qsd = spawnSync("qemu-storage-daemon", ["--version"], { encoding: "utf8" })
    .stdout.split("\n")[0];
  const deno = typeof Deno !== "undefined" ? `Deno ${Deno.version.deno}` : "Bun";
  const bunVersion = () =>
    spawnSync(join(ROOT, "node_modules", ".bin", "bun"), ["--version"], { encoding: "utf8" })
      .stdout?.trim();
  const backend = runtime === "bun" ? `our backend on Bun ${bunVersion()}` : "our backend on Deno";
  return `${model}, ${cpu.length} cores, Linux ${kernel}, load ${load}; frontend on ${deno}, ` +
    `${backend}; ${qsd}`;
}

/** One backend configuration the benchmark runs. */
interface Contender {
  /** Column heading. */
  name: string;
  /** Whether it is one of qemu-storage-daemon's configurations. */
  qsd: boolean;
  start: (socket: string) => Promise<BackendProcess>;
  proc?: BackendProcess;
  conn?: Connected;
  socket: string;
}

/** A workload over `rings` rings: the queue depth is split between them. */
function onRings(w: Workload, rings: number): Workload {
  return { ...w, queueDepth: Math.max(1, Math.round(w.queueDepth / rings)) };
}

/** Run `w` on every ring of `c` at once; the rings' results summed. */
async function runOn(c: Contender, w: Workload, rings: number, seed: number): Promise<LoadResult> {
  const loads = c.conn!.loads.slice(0, rings);
  const parts = await Promise.all(
    loads.map((l, i) =>
      l.run(onRings(w, rings), { durationMs: seconds * 1000, seed: seed * 7 + i })
    ),
  );
  const ops = parts.reduce((n, r) => n + r.ops, 0);
  const bytes = parts.reduce((n, r) => n + r.bytes, 0);
  const secs = Math.max(...parts.map((r) => r.seconds));
  return { ops, bytes, seconds: secs, iops: ops / secs, mbps: bytes / secs / 1e6 };
}

const QSD_CONFIGS: { label: string; options: QsdOptions }[] = [
  { label: "qsd", options: { aio: "threads" } },
  { label: "qsd io_uring", options: { aio: "io_uring" } },
  { label: "qsd iothread", options: { aio: "threads", iothread: true } },
  { label: "qsd iothread io_uring", options: { aio: "io_uring", iothread: true } },
];

function contendersFor(rings: number): Contender[] {
  const queues = rings;
  const list: Contender[] = [
    {
      name: "ours",
      qsd: false,
      start: (s) => startOurs(image, s, { runtime, queues }),
      socket: "",
    },
    {
      name: "ours, queue threads",
      qsd: false,
      start: (s) => startOurs(image, s, { runtime, queues, queueThreads: true }),
      socket: "",
    },
  ];
  if (rings === 1 && pollUs > 0) {
    list.push({
      name: `ours, queue threads, poll ${pollUs} µs`,
      qsd: false,
      start: (s) => startOurs(image, s, { runtime, queues, queueThreads: true, pollUs }),
      socket: "",
    });
  }
  for (const q of QSD_CONFIGS) {
    list.push({
      name: q.label,
      qsd: true,
      start: (s) => startQsd(image, s, { ...q.options, queues }),
      socket: "",
    });
  }
  list.forEach((c, i) => c.socket = join(dir, `virtio-ts-bench-${process.pid}-${rings}-${i}.sock`));
  return list;
}

const useFio = hasFio();
const sizeBytes = opts.image === undefined ? sizeMib * (1 << 20) : statSync(image).size;
const ceilings = new Map<string, LoadResult[]>();
const tables: string[] = [];
const cell = (r: LoadResult) => `${fmtIops(r)} IOPS, ${r.mbps.toFixed(0)} MB/s`;

/** Start `list`, check each is correct, run `workloads` on `rings` rings; print the tables. */
async function section(list: Contender[], rings: number, workloads: readonly Workload[]) {
  try {
    for (const c of list) {
      c.proc = await c.start(c.socket);
      c.conn = await connectLoad(c.socket, { rings });
      if (c.conn.load.capacity !== sizeBytes) {
        throw new Error(
          `${c.name} reports ${c.conn.load.capacity} bytes, the image has ${sizeBytes}`,
        );
      }
    }
    const read = (offset: number, length: number) => readImage(image, offset, length);
    const checked: string[] = [];
    for (const [i, c] of list.entries()) {
      let bytes = 0;
      for (const [r, l] of c.conn!.loads.entries()) {
        bytes += await l.verify(read, { seed: 11 + i * 5 + r });
      }
      checked.push(`${c.name} ${bytes}`);
    }
    console.log(
      `\n${rings} ring${rings > 1 ? "s" : ""}, correctness: wrote, flushed, read back and ` +
        `compared (bytes, on every ring) ${checked.join(", ")}; the image file matches each\n`,
    );
    const ours = list.filter((c) => !c.qsd);
    const qsds = list.filter((c) => c.qsd);
    const threads = list.findIndex((c) => c.name === "ours, queue threads");
    const header = `| workload (${rings} ring${rings > 1 ? "s" : ""}) | host ceiling | ` +
      ours.map((c) => c.name).join(" | ") +
      " | best qsd | queue threads / best qsd | queue threads / ceiling |";
    const rule = "|---|" + "---:|".repeat(ours.length + 4);
    const qheader = `| workload (${rings} ring${rings > 1 ? "s" : ""}) | ` +
      qsds.map((c) => c.name).join(" | ") + " | best |";
    const qrule = "|---|" + "---:|".repeat(qsds.length + 1);
    const main = [header, rule];
    const qsdTable = [qheader, qrule];
    console.log(header);
    console.log(rule);
    for (const w of workloads) {
      // The ceiling is measured in every round too, between the backends: on a shared host
      // the load moves, and a ratio is only as good as the moment both sides were taken.
      const ceilingRuns = ceilings.get(w.name) ?? [];
      const runs: LoadResult[][] = list.map(() => []);
      for (let r = 0; r < rounds; r++) {
        ceilingRuns.push(useFio ? fioRun(w, sizeBytes) : syncRun(w, sizeBytes));
        for (const [i, c] of list.entries()) runs[i].push(await runOn(c, w, rings, r + 1));
      }
      ceilings.set(w.name, ceilingRuns);
      const ceiling = median(ceilingRuns);
      const med = runs.map(median);
      const qsdMed = list.map((c, i) => ({ c, r: med[i] })).filter((x) => x.c.qsd);
      const best = qsdMed.reduce((a, b) => (b.r.iops > a.r.iops ? b : a));
      const t = med[threads];
      const line = `| ${w.name} | ${cell(ceiling)} | ` +
        ours.map((c) => cell(med[list.indexOf(c)])).join(" | ") +
        ` | ${cell(best.r)} (${best.c.name}) | ${(t.iops / best.r.iops).toFixed(2)} | ` +
        `${(t.iops / ceiling.iops).toFixed(2)} |`;
      main.push(line);
      console.log(line);
      qsdTable.push(
        `| ${w.name} | ` + qsdMed.map((x) => cell(x.r)).join(" | ") + ` | ${best.c.name} |`,
      );
    }
    console.log(`\nqemu-storage-daemon's configurations, same run:\n\n${qsdTable.join("\n")}`);
    tables.push(main.join("\n"), qsdTable.join("\n"));
  } finally {
    for (const c of list) {
      await c.conn?.frontend.close();
      if (c.proc !== undefined) await stopHard(c.proc);
      rmSync(c.socket, { force: true });
    }
  }
}

/**
 * SIGTERM, then SIGKILL after 5 s: qemu-storage-daemon 7.2 serving from an iothread sometimes
 * ignores SIGTERM once its frontend has gone.
 */
async function stopHard(proc: BackendProcess): Promise<void> {
  const stopped = proc.stop();
  const timer = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 5000));
  if (await Promise.race([stopped.then(() => true), timer])) return;
  // (ChildProcess.kill may not signal twice: go through the pid.)
  try {
    process.kill(proc.child.pid!, "SIGKILL");
  } catch { /* gone meanwhile */ }
  await stopped;
}

try {
  console.log(`date: ${new Date().toISOString()}`);
  console.log(`machine: ${machine()}`);
  if (opts.image === undefined) {
    console.log(`image: ${image}, ${sizeMib} MiB (written now, page-cache resident)`);
    writeBenchImage(image, sizeMib);
  }
  console.log(
    `ceiling: ${
      useFio ? "fio, buffered (psync at QD1, io_uring above)" : "sync pread/pwrite, one thread"
    }; ${rounds} rounds of ${seconds} s per backend and workload, medians; the qsd ratio is ` +
      "against the best of its four configurations for each workload",
  );
  const only = opts.only?.split(",");
  const pick = (ws: readonly Workload[]) =>
    only === undefined ? ws : ws.filter((w) => only.some((o) => w.name.includes(o)));
  if (!opts["multi-queue-only"]) await section(contendersFor(1), 1, pick(WORKLOADS));
  if (queues2 > 1) {
    await section(
      contendersFor(queues2),
      queues2,
      pick(WORKLOADS.filter((w) => w.queueDepth > 1)),
    );
  }
  console.log(`\nload average after: ${readFileSync("/proc/loadavg", "utf8").trim()}`);
  console.log(`\nAll tables again:\n\n${tables.join("\n\n")}`);
} finally {
  if (opts.image === undefined && !opts.keep) rmSync(image, { force: true });
}
