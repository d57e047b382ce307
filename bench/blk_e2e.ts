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
 * For each workload it prints IOPS and MB/s for both and the ratio ours/qsd (medians over the
 * rounds), plus the host's own throughput on the same file with the same pattern as the
 * ceiling: `fio` (psync at QD1, io_uring at higher depths, buffered) when installed, else a
 * synchronous pread/pwrite loop in this process. A second pair compares the two in poll
 * mode: ours with `--poll-us N` (default 100) against qemu-storage-daemon serving from an
 * iothread, which polls adaptively before it sleeps.
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/blk_e2e.ts [--seconds S] [--rounds N]
 * [--size-mib M] [--image PATH] [--keep] [--poll-us N] [--bun]`
 * (`--bun`: run our backend under Bun instead of Deno; the frontend stays on Deno)
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
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  console.log(
    "Usage: deno run -A bench/blk_e2e.ts [--seconds S] [--rounds N] [--size-mib M] " +
      "[--image PATH] [--keep] [--poll-us N] [--bun]",
  );
  process.exit(0);
}
const seconds = Number(opts.seconds);
const rounds = Number(opts.rounds);
const sizeMib = Number(opts["size-mib"]);
const pollUs = Number(opts["poll-us"]);
const runtime = opts.bun ? "bun" : "deno";
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
  name: string;
  start: (socket: string) => Promise<BackendProcess>;
  proc?: BackendProcess;
  conn?: Connected;
  socket: string;
}

const contenders: Contender[] = [
  { name: "ours", start: (s) => startOurs(image, s, { runtime }), socket: "" },
  { name: "qsd", start: (s) => startQsd(image, s), socket: "" },
  {
    name: `ours --poll-us ${pollUs}`,
    start: (s) => startOurs(image, s, { pollUs, runtime }),
    socket: "",
  },
  { name: "qsd iothread", start: (s) => startQsd(image, s, { iothread: true }), socket: "" },
];
contenders.forEach((c, i) => c.socket = join(dir, `virtio-ts-bench-${process.pid}-${i}.sock`));

const useFio = hasFio();
const sizeBytes = opts.image === undefined ? sizeMib * (1 << 20) : statSync(image).size;
try {
  console.log(`date: ${new Date().toISOString()}`);
  console.log(`machine: ${machine()}`);
  if (opts.image === undefined) {
    console.log(`image: ${image}, ${sizeMib} MiB (written now, page-cache resident)`);
    writeBenchImage(image, sizeMib);
  }
  for (const c of contenders) {
    c.proc = await c.start(c.socket);
    c.conn = await connectLoad(c.socket);
    if (c.conn.load.capacity !== sizeBytes) {
      throw new Error(
        `${c.name} reports ${c.conn.load.capacity} bytes, the image has ${sizeBytes}`,
      );
    }
  }
  const read = (offset: number, length: number) => readImage(image, offset, length);
  const checked: string[] = [];
  for (const [i, c] of contenders.entries()) {
    checked.push(`${c.name} ${await c.conn!.load.verify(read, { seed: 11 + i })}`);
  }
  console.log(
    `correctness: wrote, flushed, read back and compared (bytes) ${checked.join(", ")}; ` +
      "the image file matches each",
  );
  console.log(
    `ceiling: ${
      useFio ? "fio, buffered (psync at QD1, io_uring above)" : "sync pread/pwrite, one thread"
    }; ${rounds} rounds of ${seconds} s per backend and workload, medians\n`,
  );
  const header = "| workload | host ceiling | ours | qsd | ours/qsd | " +
    `ours, poll ${pollUs} µs | qsd, iothread | ratio |`;
  const lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"];
  console.log(header);
  console.log(lines[1]);
  for (const w of WORKLOADS) {
    const ceiling = useFio ? fioRun(w, sizeBytes) : syncRun(w, sizeBytes);
    const runs: LoadResult[][] = contenders.map(() => []);
    for (let r = 0; r < rounds; r++) {
      for (const [i, c] of contenders.entries()) {
        runs[i].push(await c.conn!.load.run(w, { durationMs: seconds * 1000, seed: r + 1 }));
      }
    }
    const [o, q, op, qi] = runs.map(median);
    const cell = (r: LoadResult) => `${fmtIops(r)} IOPS, ${r.mbps.toFixed(0)} MB/s`;
    const line = `| ${w.name} | ${cell(ceiling)} | ${cell(o)} | ${cell(q)} | ${
      (o.iops / q.iops).toFixed(2)
    } | ${cell(op)} | ${cell(qi)} | ${(op.iops / qi.iops).toFixed(2)} |`;
    lines.push(line);
    console.log(line);
  }
} finally {
  for (const c of contenders) {
    await c.conn?.frontend.close();
    await c.proc?.stop();
    rmSync(c.socket, { force: true });
  }
  if (opts.image === undefined && !opts.keep) rmSync(image, { force: true });
}
