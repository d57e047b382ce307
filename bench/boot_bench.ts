/**
 * Boot time to init: our VMM (kvm/) against QEMU's microvm machine on KVM, same kernel (the
 * microVM kernel of launcher/guest/kernel), same busybox initramfs, same command line, one vCPU,
 * 256 MiB, an entropy device on virtio-mmio, measured in the same run and printed as a ratio.
 *
 * "To init" is wall-clock time from starting the VMM (for ours: before creating the VM, so
 * kernel loading counts) to the first console line printed by /init (`VT-BEGIN`); the guest's
 * own uptime at that point is printed too. Without /dev/kvm it prints
 * "skipped: /dev/kvm not present" and exits 0.
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/boot_bench.ts [--runs N]`
 *
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MicroVm, NO_KVM_REASON } from "../kvm/mod.ts";
import { RngDevice } from "../devices/rng.ts";
import { ensureGuest, scriptCpio } from "../launcher/qemu.ts";
import { ensureKernel } from "../launcher/kernel.ts";

// reboot=t (triple fault): QEMU microvm has no i8042, and its firmware would catch a BIOS
// restart; a triple fault ends both VMMs (-no-reboot for QEMU, KVM_EXIT_SHUTDOWN for ours).
const CMDLINE = "console=ttyS0 reboot=t panic=-1 pci=off quiet vt_nomod=1 vt_exit=reboot";
const SCRIPT = "true";

interface Sample {
  /** Wall-clock ms from start to the VT-BEGIN line. */
  toInitMs: number;
  /** Guest uptime (ms) reported in the VT-BEGIN line. */
  guestUptimeMs: number;
  /** Wall-clock ms until the VMM exited. */
  totalMs: number;
}

function parseUptime(text: string): number {
  const m = /VT-BEGIN .*uptime=([\d.]+)/.exec(text);
  return m ? Math.round(Number(m[1]) * 1000) : NaN;
}

async function bootOurs(kernel: Uint8Array, initrd: Uint8Array): Promise<Sample> {
  const t0 = performance.now();
  let out = "";
  let toInit = NaN;
  const vm = MicroVm.create({
    kernel,
    initrd,
    cmdline: CMDLINE,
    memorySize: 256 << 20,
    devices: [new RngDevice()],
    console: (text) => {
      out += text;
      if (Number.isNaN(toInit) && /VT-BEGIN .*\n/.test(out)) toInit = performance.now() - t0;
    },
  });
  try {
    const r = await vm.run({ timeoutMs: 60_000 });
    if (r.reason !== "reset" || !/VT-RESULT: PASS/.test(out)) {
      throw new Error(`our VMM: guest ended with ${r.reason}\n${out}`);
    }
  } finally {
    vm.close();
  }
  return { toInitMs: toInit, guestUptimeMs: parseUptime(out), totalMs: performance.now() - t0 };
}

function bootQemu(kernelPath: string, initrdPath: string): Promise<Sample> {
  const t0 = performance.now();
  const child = spawn("timeout", [
    "60",
    "qemu-system-x86_64",
    "-M",
    "microvm,acpi=off",
    "-accel",
    "kvm",
    "-cpu",
    "host",
    "-m",
    "256M",
    "-smp",
    "1",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-no-reboot",
    "-serial",
    "stdio",
    "-global",
    "virtio-mmio.force-legacy=false",
    "-device",
    "virtio-rng-device",
    "-kernel",
    kernelPath,
    "-initrd",
    initrdPath,
    "-append",
    CMDLINE,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let toInit = NaN;
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    out += d;
    if (Number.isNaN(toInit) && /VT-BEGIN .*\n/.test(out)) toInit = performance.now() - t0;
  });
  child.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => {
      if (!/VT-RESULT: PASS/.test(out)) reject(new Error(`QEMU exited ${code}\n${out}`));
      else {resolve({
          toInitMs: toInit,
          guestUptimeMs: parseUptime(out),
          totalMs: performance.now() - t0,
        });}
    });
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

if (!MicroVm.available()) {
  console.log(NO_KVM_REASON);
} else {
  const argv = globalThis.process?.argv ?? [];
  const runsArg = argv.indexOf("--runs");
  const runs = runsArg >= 0 ? Number(argv[runsArg + 1]) : 5;
  const kernelPath = await ensureKernel();
  const guest = await ensureGuest({ env: { VT_GUEST_NO_QEMU: "1" } });
  const dir = mkdtempSync(join(tmpdir(), "vt-boot-bench-"));
  const base = new Uint8Array(readFileSync(guest.initramfs));
  const extra = scriptCpio(SCRIPT);
  const initrd = new Uint8Array(base.byteLength + extra.byteLength);
  initrd.set(base);
  initrd.set(extra, base.byteLength);
  const initrdPath = join(dir, "initrd.cpio.gz");
  writeFileSync(initrdPath, initrd);
  const kernel = new Uint8Array(readFileSync(kernelPath));
  const haveQemu = spawnSync("qemu-system-x86_64", ["--version"]).status === 0;
  const ours: Sample[] = [];
  const qemu: Sample[] = [];
  try {
    // Interleaved, so that host noise hits both alike.
    for (let i = 0; i < runs; i++) {
      ours.push(await bootOurs(kernel, initrd));
      if (haveQemu) qemu.push(await bootQemu(kernelPath, initrdPath));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const row = (name: string, s: Sample[]) =>
    `${name.padEnd(28)} to init ${median(s.map((x) => x.toInitMs)).toFixed(0).padStart(6)} ms` +
    `   guest uptime at init ${median(s.map((x) => x.guestUptimeMs)).toFixed(0).padStart(6)} ms` +
    `   total ${median(s.map((x) => x.totalMs)).toFixed(0).padStart(6)} ms`;
  console.log(`boot to init, median of ${runs} (1 vCPU, 256 MiB, virtio-rng over virtio-mmio)`);
  console.log(row("virtio-ts kvm/ (ours)", ours));
  if (haveQemu) {
    console.log(row("qemu -M microvm -accel kvm", qemu));
    const ratio = median(ours.map((x) => x.toInitMs)) / median(qemu.map((x) => x.toInitMs));
    console.log(`ratio ours/qemu (to init): ${ratio.toFixed(2)}`);
  } else {
    console.log("qemu-system-x86_64 not found: no comparison");
  }
}
