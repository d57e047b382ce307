/**
 * End-to-end virtio-fs benchmark: our backend (`vhost_user/main.ts --device fs`, its own
 * process) against Debian's C virtiofsd (`/usr/lib/qemu/virtiofsd`, qemu-system-common 7.2),
 * on the same host directory, in the same run, alternating round by round.
 *
 * - Frontend figures (no VM): our TypeScript vhost-user frontend sends FUSE requests over
 *   memfd guest memory — sequential 1 MiB reads and writes (MB/s), 4 KiB random reads (IOPS),
 *   at one and several requests in flight, and metadata (create + stat + unlink of 10 000
 *   files, one after the other). Both are proved correct first (write, fsync, read back,
 *   compare).
 * - Guest figure: a Linux guest under QEMU TCG mounts each backend in turn and writes and
 *   reads a file and creates, stats and removes files; guest-clock seconds.
 *
 * Nothing is asserted; it prints a table with the ratios ours/virtiofsd (medians), and ours in
 * poll mode (`--poll-us`, default 100) as one more column: virtiofsd does not poll.
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/fs_e2e.ts [--seconds S] [--rounds N]
 * [--files N] [--poll-us N] [--no-guest] [--bun]`
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import type { BackendProcess } from "../launcher/backends.ts";
import { bootGuest, vhostUserQemuArgs } from "../launcher/mod.ts";
import {
  connectFs,
  FS_WORKLOADS,
  type FsConnected,
  type FsLoadResult,
  runIo,
  runMeta,
  startOursFs,
  startVirtiofsd,
  verifyFs,
  VIRTIOFSD,
} from "./_fs_load.ts";

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    seconds: { type: "string", default: "2" },
    rounds: { type: "string", default: "3" },
    files: { type: "string", default: "10000" },
    "poll-us": { type: "string", default: "100" },
    "no-guest": { type: "boolean", default: false },
    bun: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  console.log(
    "Usage: deno run -A bench/fs_e2e.ts [--seconds S] [--rounds N] [--files N] [--poll-us N] " +
      "[--no-guest] [--bun]",
  );
  process.exit(0);
}
if (!existsSync(VIRTIOFSD)) {
  console.log(`skipped: ${VIRTIOFSD} not installed (apt-get install qemu-system-common)`);
  process.exit(0);
}
const seconds = Number(opts.seconds);
const rounds = Number(opts.rounds);
const files = Number(opts.files);
const runtime = opts.bun ? "bun" : "deno";
const pollUs = Number(opts["poll-us"]);
const MiB = 1 << 20;
const FILE_MIB = 256;

interface Contender {
  name: string;
  start(dir: string, socket: string): Promise<BackendProcess>;
  proc?: BackendProcess;
  conn?: FsConnected;
  socket: string;
}

const work = mkdtempSync(join(tmpdir(), "virtio-ts-fs-bench-"));
const share = join(work, "share");
mkdirSync(share);
const contenders: Contender[] = [
  {
    name: "ours",
    start: (d, s) => startOursFs(d, s, { runtime }),
    socket: join(work, "ours.sock"),
  },
  { name: "virtiofsd", start: startVirtiofsd, socket: join(work, "virtiofsd.sock") },
  {
    name: "ours-poll",
    start: (d, s) => startOursFs(d, s, { runtime, pollUs }),
    socket: join(work, "ours-poll.sock"),
  },
];

function median(xs: FsLoadResult[], rate: (r: FsLoadResult) => number): FsLoadResult {
  return [...xs].sort((a, b) => rate(a) - rate(b))[Math.floor(xs.length / 2)];
}

function machine(): string {
  const cpu = cpus();
  const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const kernel = readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
  const v = spawnSync(VIRTIOFSD, ["--version"], { encoding: "utf8" });
  const vfsd = (v.stdout || v.stderr).split("\n")[0];
  const deno = typeof Deno !== "undefined" ? `Deno ${Deno.version.deno}` : "Bun";
  return `${cpu[0]?.model.trim()}, ${cpu.length} cores, Linux ${kernel}, load ${load}; ` +
    `frontend on ${deno}, our backend on ${runtime}; ${vfsd}`;
}

/** The guest figure: the same script on each backend, guest-clock seconds per phase. */
async function guestFigure(): Promise<void> {
  const script = `
mkdir -p /mnt/fs
mount -t virtiofs bench /mnt/fs
t() { echo "VT-T $1 $(cut -d' ' -f1 /proc/uptime)"; }
t start
dd if=/dev/zero of=/mnt/fs/guest-file bs=1M count=64 2>/dev/null
sync
t written
echo 3 > /proc/sys/vm/drop_caches
dd if=/mnt/fs/guest-file of=/dev/null bs=1M 2>/dev/null
t read
mkdir /mnt/fs/guest-meta
i=0
while [ $i -lt 300 ]; do : > /mnt/fs/guest-meta/f$i; stat /mnt/fs/guest-meta/f$i >/dev/null; rm /mnt/fs/guest-meta/f$i; i=$((i + 1)); done
t meta
rmdir /mnt/fs/guest-meta
rm /mnt/fs/guest-file
umount /mnt/fs
`;
  const phases: Record<string, Record<string, number>> = {};
  for (const c of contenders.slice(0, 2)) {
    const socket = join(work, `guest-${c.name}.sock`);
    const proc = await c.start(share, socket);
    try {
      const r = await bootGuest({
        script,
        timeoutSec: 400,
        args: vhostUserQemuArgs("fs", "fs0", socket, "tag=bench"),
      });
      if (!r.passed) throw new Error(`guest on ${c.name} failed:\n${r.output.slice(-2000)}`);
      const t = (k: string) => Number(new RegExp(`^VT-T ${k} ([\\d.]+)$`, "m").exec(r.output)![1]);
      phases[c.name] = {
        write: t("written") - t("start"),
        read: t("read") - t("written"),
        meta: t("meta") - t("read"),
      };
    } finally {
      await proc.stop();
    }
  }
  const o = phases.ours, v = phases.virtiofsd;
  console.log("\nguest (QEMU TCG, Linux 6.1 virtiofs, queue size 128), guest-clock seconds:\n");
  console.log("| guest phase | ours | virtiofsd | ours/virtiofsd (speed) |");
  console.log("|---|---:|---:|---:|");
  const row = (label: string, k: string) =>
    console.log(
      `| ${label} | ${o[k].toFixed(2)} s | ${v[k].toFixed(2)} s | ${(v[k] / o[k]).toFixed(2)} |`,
    );
  row("dd write 64 MiB (bs=1M) + sync", "write");
  row("dd read 64 MiB (bs=1M), cold", "read");
  row("300 × (create, stat, rm)", "meta");
}

try {
  console.log(`date: ${new Date().toISOString()}`);
  console.log(`machine: ${machine()}`);
  const data = new Uint8Array(FILE_MIB * MiB);
  for (let i = 0; i < data.length; i += 4096) data[i] = i >>> 12;
  writeFileSync(join(share, "bench-read"), data);
  writeFileSync(join(share, "bench-write"), data);
  console.log(`share: ${share} with two ${FILE_MIB} MiB files (page-cache resident)`);
  for (const c of contenders) {
    c.proc = await c.start(share, c.socket);
    c.conn = await connectFs(c.socket, "bench-read");
  }
  const checked: string[] = [];
  for (const [i, c] of contenders.entries()) {
    const pattern = new Uint8Array(3 * MiB + 12345).map((_, j) => (j * 13 + i) & 0xff);
    checked.push(`${c.name} ${await verifyFs(c.conn!.session, `verify-${c.name}`, pattern)}`);
  }
  console.log(`correctness: wrote, fsynced, read back and compared (bytes) ${checked.join(", ")}`);
  console.log(`${rounds} rounds of ${seconds} s per backend and workload, alternating; medians\n`);
  console.log(
    `| workload | ours | virtiofsd | ours/virtiofsd | ours, poll ${pollUs} µs | ratio |`,
  );
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const w of FS_WORKLOADS) {
    const runs: FsLoadResult[][] = contenders.map(() => []);
    for (let r = 0; r < rounds; r++) {
      for (const [i, c] of contenders.entries()) {
        const file = w.kind === "read" ? "bench-read" : "bench-write";
        runs[i].push(await runIo(c.conn!.session, w, file, FILE_MIB * MiB, seconds * 1000, r + 1));
      }
    }
    const big = w.size >= MiB;
    const rate = (x: FsLoadResult) => big ? x.bytes / x.seconds / 1e6 : x.ops / x.seconds;
    const [o, v, p] = runs.map((rs) => median(rs, rate));
    const cell = (x: FsLoadResult) =>
      big ? `${rate(x).toFixed(0)} MB/s` : `${(rate(x) / 1000).toFixed(1)}k IOPS`;
    console.log(
      `| ${w.name} | ${cell(o)} | ${cell(v)} | ${(rate(o) / rate(v)).toFixed(2)} | ${cell(p)} | ` +
        `${(rate(p) / rate(v)).toFixed(2)} |`,
    );
  }
  const meta: FsLoadResult[][] = contenders.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (const [i, c] of contenders.entries()) {
      meta[i].push(await runMeta(c.conn!.session, `meta-${c.name}-${r}`, files));
    }
  }
  const rate = (x: FsLoadResult) => (3 * x.ops) / x.seconds;
  const [o, v, p] = meta.map((rs) => median(rs, rate));
  console.log(
    `| metadata: create+stat+unlink × ${files} (ops/s, 3 per file) | ${rate(o).toFixed(0)} | ` +
      `${rate(v).toFixed(0)} | ${(rate(o) / rate(v)).toFixed(2)} | ${rate(p).toFixed(0)} | ` +
      `${(rate(p) / rate(v)).toFixed(2)} |`,
  );
  for (const c of contenders) {
    await c.conn?.frontend.close();
    c.conn = undefined;
    await c.proc?.stop();
    c.proc = undefined;
  }
  if (!opts["no-guest"]) await guestFigure();
} finally {
  for (const c of contenders) {
    await c.conn?.frontend.close();
    await c.proc?.stop();
  }
  rmSync(work, { recursive: true, force: true });
}
