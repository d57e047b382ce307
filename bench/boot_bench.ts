/**
 * Boot time to init: our VMM (kvm/) against QEMU's microvm machine on KVM (`-M microvm -accel
 * kvm`), in the same run, interleaved: the same stock Debian kernel and busybox initramfs of the
 * test guest (launcher/guest/build.sh), the same command line, memory and vCPUs, an entropy
 * device on virtio-mmio that both declare to the guest in ACPI. Prints the medians and their
 * ratio, plus our VMM's start-up time to the first guest instruction and its memory overhead
 * (resident memory apart from guest RAM, when /init starts) next to QEMU's.
 *
 * "To init" is wall-clock time from starting the VMM (for ours: `MicroVm.create`, so loading the
 * kernel counts; for QEMU: spawning the process) until the first line of /init (`VT-BEGIN`) has
 * reached the host; the guest's own uptime at that point is printed too.
 *
 * On a host without /dev/kvm run it in the nested-KVM guest:
 * `scripts/kvm-guest.sh node_modules/.bin/deno run --allow-all bench/boot_bench.ts` — every
 * figure is then an emulation figure (QEMU TCG emulating SVM): compare the ratios, not the times.
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/boot_bench.ts [--runs N] [--cpus N]`
 *
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { MicroVm } from "../kvm/mod.ts";
import { kvmUnavailableReason } from "../sys/mod.ts";
import { RngDevice } from "../devices/rng.ts";
import { ensureGuest, scriptCpio } from "../launcher/qemu.ts";
import {
  guestUptimeAtInitMs,
  initReached,
  type MemoryFootprint,
  memoryFootprint,
} from "./_boot_measure.ts";

const CMDLINE = "console=ttyS0 panic=-1 pci=off quiet";
const MEMORY = 256 << 20;
const SCRIPT = "true";

interface Sample {
  /** Wall-clock ms from start to the whole VT-BEGIN line. */
  toInitMs: number;
  /** Guest uptime (ms) reported in the VT-BEGIN line. */
  guestUptimeMs: number;
  /** Wall-clock ms until the VMM had stopped. */
  totalMs: number;
  /** Ours only: ms from MicroVm.create to vCPU 0's first KVM_RUN. */
  startupMs: number;
  /** Memory when /init started. */
  memory?: MemoryFootprint;
}

async function bootOurs(kernel: Uint8Array, initrd: Uint8Array, cpus: number): Promise<Sample> {
  const t0 = performance.now();
  let out = "";
  let toInit = NaN;
  let memory: MemoryFootprint | undefined;
  const vm = MicroVm.create({
    kernel,
    initrd,
    cmdline: CMDLINE,
    memorySize: MEMORY,
    cpus,
    devices: [new RngDevice()],
    console: (text) => {
      out += text;
      if (Number.isNaN(toInit) && initReached(out)) {
        toInit = performance.now() - t0;
        memory = memoryFootprint(readFileSync("/proc/self/smaps", "utf8"), MEMORY);
      }
    },
  });
  try {
    const r = await vm.run({ timeoutMs: 120_000 });
    if (r.reason !== "poweroff" || !/VT-RESULT: PASS/.test(out)) {
      throw new Error(`our VMM: guest ended with ${r.reason}\n${out}`);
    }
    return {
      toInitMs: toInit,
      guestUptimeMs: guestUptimeAtInitMs(out),
      totalMs: performance.now() - t0,
      startupMs: r.startedAt - t0,
      memory,
    };
  } finally {
    vm.close();
  }
}

/** The QEMU process under `timeout` (its only child). */
function childPid(pid: number): number | undefined {
  try {
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
    return kids ? Number(kids.split(/\s+/)[0]) : undefined;
  } catch {
    return undefined;
  }
}

function bootQemu(kernelPath: string, initrdPath: string, cpus: number): Promise<Sample> {
  const t0 = performance.now();
  const child = spawn("timeout", [
    "--kill-after=5",
    "120",
    "qemu-system-x86_64",
    ...["-M", "microvm", "-accel", "kvm", "-cpu", "host"],
    ...["-m", `${MEMORY >> 20}M`, "-smp", String(cpus)],
    ...["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"],
    ...["-serial", "stdio"],
    ...["-global", "virtio-mmio.force-legacy=false", "-device", "virtio-rng-device"],
    ...["-kernel", kernelPath, "-initrd", initrdPath, "-append", CMDLINE],
  ], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let toInit = NaN;
  let memory: MemoryFootprint | undefined;
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    out += d;
    if (Number.isNaN(toInit) && initReached(out)) {
      toInit = performance.now() - t0;
      const qemu = child.pid === undefined ? undefined : childPid(child.pid);
      if (qemu !== undefined && existsSync(`/proc/${qemu}/smaps`)) {
        memory = memoryFootprint(readFileSync(`/proc/${qemu}/smaps`, "utf8"), MEMORY);
      }
    }
  });
  child.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => {
      if (!/VT-RESULT: PASS/.test(out)) reject(new Error(`QEMU exited ${code}\n${out}`));
      else {
        resolve({
          toInitMs: toInit,
          guestUptimeMs: guestUptimeAtInitMs(out),
          totalMs: performance.now() - t0,
          startupMs: NaN,
          memory,
        });
      }
    });
  });
}

function median(xs: number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} wants a positive integer`);
  return v;
}

/** Whether this machine's /dev/kvm is itself emulated (inside scripts/kvm-guest.sh's TCG guest). */
function emulatedKvm(): boolean {
  if (process.env.VT_IN_NESTED_KVM === "1") return true;
  try {
    return /^model name\s*:.*\bTCG\b/m.test(readFileSync("/proc/cpuinfo", "utf8"));
  } catch {
    return false;
  }
}

if (!MicroVm.available()) {
  console.log(
    `${kvmUnavailableReason()}; run it as: scripts/kvm-guest.sh node_modules/.bin/deno run --allow-all ` +
      "bench/boot_bench.ts",
  );
} else {
  const runs = option("--runs", 5);
  const cpus = option("--cpus", 1);
  const guest = await ensureGuest();
  const dir = mkdtempSync(join(tmpdir(), "vt-boot-bench-"));
  const base = new Uint8Array(readFileSync(guest.initramfs));
  const extra = scriptCpio(SCRIPT);
  const initrd = new Uint8Array(base.byteLength + extra.byteLength);
  initrd.set(base);
  initrd.set(extra, base.byteLength);
  const initrdPath = join(dir, "initrd.cpio.gz");
  writeFileSync(initrdPath, initrd);
  const kernel = new Uint8Array(readFileSync(guest.kernel));
  const haveQemu = spawnSync("qemu-system-x86_64", ["--version"]).status === 0;
  const ours: Sample[] = [];
  const qemu: Sample[] = [];
  try {
    // Interleaved, so that host noise hits both alike.
    for (let i = 0; i < runs; i++) {
      ours.push(await bootOurs(kernel, initrd, cpus));
      if (haveQemu) qemu.push(await bootQemu(guest.kernel, initrdPath, cpus));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const emulated = emulatedKvm();
  const m = (s: Sample[], f: (x: Sample) => number) => median(s.map(f));
  const fmt = (n: number, unit: string) => Number.isNaN(n) ? "—" : `${n.toFixed(0)} ${unit}`;
  const rows: [string, (x: Sample) => number, string][] = [
    ["to init (wall)", (x) => x.toInitMs, "ms"],
    ["guest uptime at init", (x) => x.guestUptimeMs, "ms"],
    ["start to power off", (x) => x.totalMs, "ms"],
    ["start-up to first guest instruction", (x) => x.startupMs, "ms"],
    ["memory overhead (RSS − guest RAM)", (x) => (x.memory?.overheadKiB ?? NaN) / 1024, "MiB"],
  ];
  console.log(
    `boot to init, median of ${runs}: ${cpus} vCPU, ${MEMORY >> 20} MiB, virtio-rng over ` +
      `virtio-mmio (ACPI), kernel ${guest.kernel}` +
      (emulated
        ? "\nEMULATION FIGURES: /dev/kvm is nested KVM under QEMU TCG; compare ratios"
        : ""),
  );
  const w = 38;
  console.log(
    `${"".padEnd(w)}${"virtio-ts kvm/".padStart(16)}${"qemu microvm".padStart(16)}` +
      `${"ours/qemu".padStart(11)}`,
  );
  for (const [name, f, unit] of rows) {
    const a = m(ours, f);
    const b = haveQemu ? m(qemu, f) : NaN;
    const ratio = Number.isNaN(a) || Number.isNaN(b) ? "" : (a / b).toFixed(2);
    console.log(
      `${name.padEnd(w)}${fmt(a, unit).padStart(16)}${fmt(b, unit).padStart(16)}` +
        `${ratio.padStart(11)}`,
    );
  }
  if (!haveQemu) console.log("qemu-system-x86_64 not found: no comparison");
}
