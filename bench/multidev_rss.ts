/**
 * Idle memory of many block devices in one process: our vhost-user backend
 * (`vhost_user/main.ts --device blk,socket=…,file=… …`, one process) next to
 * `qemu-storage-daemon` with the same number of vhost-user-blk exports on the same images, in
 * the same run.
 *
 * For each device count, each backend is started, one frontend per device connects
 * (`VhostUserFrontend` in this process: features, memory table, one ring of 128 started), does
 * a few 4 KiB reads and writes to prove the device serves, and then everything stays connected
 * and idle. The backend process's resident set (`/proc/PID/status`: VmRSS, with its anonymous,
 * file and shared-memory parts) is read 3 s after the last device was set up ("after set-up")
 * and after `--idle-ms` ("idle", default 40 s: V8's memory reducer gives back the young
 * generation the set-up grew some 25–30 s into an idle Deno process). The table shows the idle
 * reading; the set-up one is printed on stderr. Marginal cost per device is the slope between
 * the two largest counts (the smallest count also pays for code compiled once the process
 * serves in earnest).
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/multidev_rss.ts [--counts 1,10,100]
 * [--runtimes deno,bun] [--idle-ms 3000] [--no-qsd]`
 *
 * @module
 */

import { readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { mkdtempSync } from "node:fs";
import { type BackendProcess, spawnListening } from "../launcher/backends.ts";
import { VhostUserFrontend } from "../testing/vhost_user_frontend.ts";
import { BlkLoad, readCapacity, type Workload } from "./_blk_load.ts";
import { hasQsd } from "./_blk_backends.ts";
import { getrlimit, RLIMIT_NOFILE, setrlimit } from "../sys/mod.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    counts: { type: "string", default: "1,10,100" },
    runtimes: { type: "string", default: "deno,bun" },
    "idle-ms": { type: "string", default: "40000" },
    "no-qsd": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  console.log(
    "Usage: deno run -A bench/multidev_rss.ts [--counts 1,10,100] [--runtimes deno,bun] " +
      "[--idle-ms MS] [--no-qsd]",
  );
  process.exit(0);
}
const counts = opts.counts.split(",").map(Number);
if (counts.some((n) => !Number.isSafeInteger(n) || n < 1)) throw new RangeError("bad --counts");
const runtimes = opts.runtimes.split(",").filter((r) => r !== "") as ("deno" | "bun")[];
if (runtimes.some((r) => r !== "deno" && r !== "bun")) throw new RangeError("bad --runtimes");
const idleMs = Number(opts["idle-ms"]);
const withQsd = !opts["no-qsd"] && hasQsd();
if (!opts["no-qsd"] && !withQsd) {
  console.log("qemu-storage-daemon not installed (apt-get install qemu-system-common): ours only");
}

/** Image size: small and sparse; idle memory does not depend on it. */
const IMAGE_MIB = 64;
/** Guest memory of each frontend (only the pages a backend touches count in its RSS). */
const GUEST_MEMORY = 4 << 20;
/** How long one device is driven (4K randread QD1) after the idle reading. */
const IO_MS = 2000;
/** When the "after set-up" reading is taken. */
const SETUP_MS = 3000;
/** QEMU's default queue size for vhost-user-blk. */
const QUEUE_SIZE = 128;

/** Resident set of a process, in KiB, from /proc/PID/status. */
interface Rss {
  rss: number;
  anon: number;
  file: number;
  shmem: number;
  threads: number;
}

function readRss(pid: number): Rss {
  const text = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text);
    return m === null ? NaN : Number(m[1]);
  };
  return {
    rss: field("VmRSS"),
    anon: field("RssAnon"),
    file: field("RssFile"),
    shmem: field("RssShmem"),
    threads: field("Threads"),
  };
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Each frontend holds a socket, a memfd, kick and call eventfds and the backend channel. */
function raiseOpenFileLimit(): void {
  const lim = getrlimit(RLIMIT_NOFILE);
  if (lim.soft < lim.hard) setrlimit(RLIMIT_NOFILE, { soft: lim.hard, hard: lim.hard });
}

/** Connect to `socket`, start one ring, read and write a few blocks; stay connected. */
async function connectDevice(
  socket: string,
  seed: number,
): Promise<{ fe: VhostUserFrontend; load: BlkLoad }> {
  const fe = await VhostUserFrontend.connect(socket, { memorySize: GUEST_MEMORY });
  try {
    await fe.start({ queues: 0 });
    await fe.setupRing(0, { size: QUEUE_SIZE, bufferSize: 64 << 10 });
    const load = new BlkLoad(fe, 0, await readCapacity(fe), { slots: 2, maxBlock: 4096 });
    for (const op of ["write", "read"] as const) {
      const w = { name: `4K ${op}`, op, blockSize: 4096, queueDepth: 2, random: true };
      const r = await load.run(w, { maxOps: 4, seed });
      if (r.ops !== 4) throw new Error(`${socket}: ${r.ops} of 4 requests completed`);
    }
    return { fe, load };
  } catch (err) {
    await fe.close();
    throw err;
  }
}

/** One backend process with `n` devices, measured once every frontend is idle. */
async function measure(
  name: string,
  n: number,
  start: (sockets: string[]) => Promise<BackendProcess>,
  dir: string,
): Promise<{ setup: Rss; idle: Rss; iops: number }> {
  const sockets = Array.from({ length: n }, (_, i) => join(dir, `${name}-${i}.sock`));
  for (const s of sockets) rmSync(s, { force: true });
  const proc = await start(sockets);
  const frontends: VhostUserFrontend[] = [];
  try {
    // The process listens on every socket before the last one appears.
    let first: BlkLoad | undefined;
    for (let i = 0; i < n; i++) {
      const { fe, load } = await connectDevice(sockets[i], i + 1);
      frontends.push(fe);
      first ??= load;
    }
    const pid = proc.child.pid!;
    await delay(SETUP_MS);
    const setup = readRss(pid);
    await delay(Math.max(0, idleMs - SETUP_MS));
    const idle = readRss(pid);
    // The hot path with the others idle: each kick wakes a poll(2) over every device's
    // descriptors.
    const w = { name: "4K randread QD1", op: "read", blockSize: 4096, queueDepth: 1, random: true };
    const { iops } = await first!.run(w as Workload, { durationMs: IO_MS });
    return { setup, idle, iops };
  } finally {
    for (const fe of frontends) await fe.close();
    await proc.stop();
    for (const s of sockets) rmSync(s, { force: true });
  }
}

function startOurs(runtime: "deno" | "bun", images: string[]) {
  return (sockets: string[]): Promise<BackendProcess> => {
    const main = join(ROOT, "vhost_user", "main.ts");
    const bin = join(ROOT, "node_modules", ".bin", runtime);
    const specs = sockets.flatMap((s, i) => ["--device", `blk,socket=${s},file=${images[i]}`]);
    const args = runtime === "bun" ? [main, ...specs] : ["run", "--allow-all", main, ...specs];
    return spawnListening(bin, args, sockets[sockets.length - 1]);
  };
}

function startQsd(images: string[]) {
  return (sockets: string[]): Promise<BackendProcess> => {
    const args = sockets.flatMap((s, i) => [
      "--blockdev",
      `driver=file,node-name=file${i},filename=${images[i]},cache.direct=off,aio=threads`,
      "--blockdev",
      `driver=raw,node-name=disk${i},file=file${i}`,
      "--export",
      `type=vhost-user-blk,id=exp${i},node-name=disk${i},addr.type=unix,addr.path=${s},` +
      "writable=on,num-queues=1",
    ]);
    return spawnListening("qemu-storage-daemon", args, sockets[sockets.length - 1]);
  };
}

const mib = (kib: number) => (kib / 1024).toFixed(1);

raiseOpenFileLimit();
const dir = mkdtempSync(join(tmpdir(), "virtio-ts-multidev-"));
const maxN = Math.max(...counts);
const images = Array.from({ length: maxN }, (_, i) => join(dir, `disk${i}.img`));
for (const img of images) {
  writeFileSync(img, new Uint8Array(0));
  truncateSync(img, IMAGE_MIB << 20);
}

type Column = {
  label: string;
  start: (n: number) => (sockets: string[]) => Promise<BackendProcess>;
};
const columns: Column[] = [
  ...runtimes.map((r) => ({
    label: `ours (${r})`,
    start: (n: number) => startOurs(r, images.slice(0, n)),
  })),
  ...(withQsd ? [{ label: "qsd", start: (n: number) => startQsd(images.slice(0, n)) }] : []),
];

console.log(
  `Idle RSS, one process serving N vhost-user-blk devices, each with a frontend connected, ` +
    `memory table set and one ring of ${QUEUE_SIZE} started (${cpus().length} CPUs, ` +
    `${cpus()[0]?.model ?? "?"}, ${new Date().toISOString().slice(0, 10)}; idle ${idleMs} ms)`,
);
try {
  // Warm the runtimes' caches (Deno's transpiled modules) so no run pays for them.
  for (const r of runtimes) {
    const bin = join(ROOT, "node_modules", ".bin", r);
    const main = join(ROOT, "vhost_user", "main.ts");
    const { spawnSync } = await import("node:child_process");
    spawnSync(bin, r === "bun" ? [main, "--help"] : ["run", "--allow-all", main, "--help"]);
  }
  const results = new Map<string, Map<number, Rss>>();
  const rates = new Map<string, Map<number, number>>();
  for (const n of counts) {
    for (const c of columns) {
      const label = c.label.replace(/\W+/g, "");
      const { setup, idle, iops } = await measure(label, n, c.start(n), dir);
      if (!results.has(c.label)) results.set(c.label, new Map());
      results.get(c.label)!.set(n, idle);
      if (!rates.has(c.label)) rates.set(c.label, new Map());
      rates.get(c.label)!.set(n, iops);
      const show = (r: Rss) =>
        `${mib(r.rss)} MiB (anon ${mib(r.anon)}, file ${mib(r.file)}, shmem ${mib(r.shmem)})`;
      console.error(
        `  ${c.label} N=${n}: after set-up ${show(setup)}; idle ${show(idle)}; ` +
          `${idle.threads} threads; one device 4K randread QD1 ${iops.toFixed(0)} IOPS`,
      );
    }
  }
  const sorted = [...new Set(counts)].sort((a, b) => a - b);
  const hi = sorted[sorted.length - 1];
  const lo = sorted.length > 1 ? sorted[sorted.length - 2] : hi;
  const table = (title: string, part: (r: Rss) => number) => {
    console.log(`\n${title}`);
    const head = ["N", ...columns.map((c) => `${c.label} MiB`)];
    if (withQsd) head.push(...runtimes.map((r) => `ours (${r}) / qsd`));
    const at = (label: string, n: number) => part(results.get(label)!.get(n)!);
    const rows = sorted.map((n) => {
      const cells = [String(n), ...columns.map((c) => mib(at(c.label, n)))];
      if (withQsd) {
        cells.push(...runtimes.map((r) => (at(`ours (${r})`, n) / at("qsd", n)).toFixed(2)));
      }
      return cells;
    });
    if (hi > lo) {
      const slope = [`per device`];
      for (const c of columns) {
        slope.push(((at(c.label, hi) - at(c.label, lo)) / (hi - lo) / 1024).toFixed(3));
      }
      if (withQsd) {
        const q = (at("qsd", hi) - at("qsd", lo)) / (hi - lo);
        slope.push(
          ...runtimes.map((r) =>
            ((at(`ours (${r})`, hi) - at(`ours (${r})`, lo)) / (hi - lo) / q).toFixed(2)
          ),
        );
      }
      rows.push(slope);
    }
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    const line = (cells: string[]) =>
      `| ${cells.map((c, i) => c.padStart(widths[i])).join(" | ")} |`;
    console.log(line(head));
    console.log(`|${widths.map((w) => "-".repeat(w + 1) + ":").join("|")}|`);
    for (const r of rows) console.log(line(r));
  };
  table("Idle RSS (VmRSS)", (r) => r.rss);
  table(
    "Of which anonymous (RssAnon: private memory, without the executable's and libraries' pages)",
    (r) => r.anon,
  );
  if (hi > lo) console.log(`\n(per device: MiB, the slope from N=${lo} to N=${hi})`);
  console.log(
    `\nOne device driven (4K randread QD1, ${IO_MS} ms) while the N−1 others stay idle, IOPS`,
  );
  console.log(`| N | ${columns.map((c) => c.label).join(" | ")} |`);
  console.log(`|--:|${columns.map(() => "--:").join("|")}|`);
  for (const n of sorted) {
    console.log(
      `| ${n} | ${columns.map((c) => rates.get(c.label)!.get(n)!.toFixed(0)).join(" | ")} |`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
