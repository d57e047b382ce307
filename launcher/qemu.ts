/**
 * Boots the virtio-ts test guest (Debian cloud kernel + busybox initramfs, built by `build.sh`)
 * under QEMU (TCG) and collects its serial console.
 *
 * Runtime-neutral: only `node:` modules, so it runs under Deno and Bun.
 *
 * The guest's `/init` (see `init.sh`) loads the virtio modules, runs one shell script and prints
 * `VT-RESULT: PASS` or `VT-RESULT: FAIL <step> (exit <n>)`, then powers off.
 *
 * @example
 * ```ts
 * const r = await bootGuest({
 *   args: ["-device", "virtio-rng-pci"],
 *   script: "step rng\ndd if=/dev/hwrng bs=16 count=1 | hexdump -C",
 * });
 * if (!r.passed) console.log(r.output);
 * ```
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { trackChild } from "./_children.ts";

/** Paths of a built guest image. */
export interface GuestImage {
  /** The kernel (bzImage), `<cache>/vmlinuz`. */
  kernel: string;
  /** The busybox initramfs (gzip'd newc cpio), `<cache>/initramfs.cpio.gz`. */
  initramfs: string;
}

/** Options of {@link ensureGuest}. */
export interface EnsureGuestOptions {
  /** Echo build.sh's progress (its stderr) to this process's stderr. Default false. */
  verbose?: boolean;
  /** Extra environment for build.sh (e.g. `VT_GUEST_CACHE`, `VT_GUEST_NO_QEMU`). */
  env?: Record<string, string>;
}

/** How the test script reaches the guest's `/init`. */
export type ScriptTransport =
  /** As `/vt/script` in a small cpio archive appended to the initramfs (default; any VMM). */
  | "initramfs"
  /** As the QEMU fw_cfg file `opt/vt/script` (QEMU only). */
  | "fw_cfg"
  /** As `vt_run64=<base64>` on the kernel command line (at most ~1.4 KB of script). */
  | "cmdline";

/** Options of {@link bootGuest}. */
export interface BootOptions {
  /**
   * The shell script (busybox ash) that the guest's init runs with `set -e`. Helpers available:
   * `step NAME` (names the step a failure reports), `fail MSG`, `expect_eq ACTUAL EXPECTED
   * [WHAT]`, `wait_for PATH [TENTHS_OF_SECONDS]`. Without a script the guest reports
   * `VT-RESULT: FAIL no-script`.
   */
  script?: string;
  /** How the script is carried. Default `"initramfs"`. */
  scriptVia?: ScriptTransport;
  /** Extra QEMU arguments, e.g. `["-device", "virtio-rng-pci"]` or vhost-user chardevs. */
  args?: string[];
  /** Extra kernel command line parameters, appended after the defaults. */
  append?: string;
  /** Wall-clock limit for the whole QEMU run in seconds (via `timeout`). Default 120. */
  timeoutSec?: number;
  /** Guest memory, also the size of the shared memfd backend. Default `"512M"`. */
  memory?: string;
  /** vCPUs. Default 1. */
  smp?: number;
  /** QEMU machine type. Default `"q35"`. */
  machine?: string;
  /**
   * Add `-nic none` so QEMU's default NIC (and its option ROM) is left out. Default true;
   * set false when the caller wants QEMU's default network card.
   */
  noDefaultNic?: boolean;
  /** Echo the serial console live to this process's stderr. Default false. */
  echo?: boolean;
  /** Called with each chunk of console output as it arrives (e.g. to wait for a marker). */
  onOutput?: (chunk: string) => void;
  /** The image to boot. Default: the result of {@link ensureGuest}. */
  guest?: GuestImage;
  /** The QEMU binary. Default `"qemu-system-x86_64"`. */
  qemu?: string;
  /** Aborting kills QEMU; the result then has `exitCode` of the killed process. */
  signal?: AbortSignal;
  /** A Unix socket path for QMP (`-qmp unix:PATH,server=on,wait=off`); see `Qmp`. */
  qmpSocket?: string;
}

/** What a guest run produced. */
export interface BootResult {
  /** The serial console (QEMU's stdout) with `\r` removed. */
  output: string;
  /** QEMU's stderr (warnings, errors). */
  stderr: string;
  /** Exit status of `timeout qemu-system-x86_64 …`: 0 after a guest power-off, 124 on timeout. */
  exitCode: number | null;
  /** True when QEMU exited 0 and the guest printed `VT-RESULT: PASS`. */
  passed: boolean;
  /** The step named in `VT-RESULT: FAIL <step> (exit n)`, if the guest reported a failure. */
  failedStep?: string;
  /** True when `timeout` ended QEMU. */
  timedOut: boolean;
  /** Names printed by `step` in the order they started. */
  steps: string[];
  /** Guest uptime in ms when `/init` started (`VT-BEGIN`), i.e. kernel boot time in guest time. */
  bootToInitMs?: number;
  /** Wall-clock time of the whole run in ms. */
  elapsedMs: number;
  /** The full QEMU command line that ran (for logs). */
  command: string[];
}

const HERE = dirname(fileURLToPath(import.meta.url));
/** Path of `build.sh`. */
export const BUILD_SCRIPT: string = join(HERE, "guest", "build.sh");

let cached: Promise<GuestImage> | undefined;

/**
 * Runs a build script (`bash script`) and returns the `KEY=value` lines it printed on stdout for
 * `keys`. Rejects with the script's output when it fails or leaves a key out.
 *
 * @param script Path of the script.
 * @param keys The keys the script must print.
 * @param options Extra environment; `verbose` streams the script's stderr.
 * @returns The values by key.
 */
export function runBuildScript(
  script: string,
  keys: readonly string[],
  options: EnsureGuestOptions = {},
): Promise<Record<string, string>> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [script], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...options.env },
    });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      err += d;
      if (options.verbose) process.stderr.write(d);
    });
    child.on("error", reject);
    child.on("close", (code) => {
      const values: Record<string, string> = {};
      for (const key of keys) {
        const v = new RegExp(`^${key}=(.*)$`, "m").exec(out)?.[1];
        if (v) values[key] = v;
      }
      if (code === 0 && keys.every((k) => k in values)) resolve(values);
      else reject(new Error(`${script} failed (exit ${code}):\n${(err + out).slice(-8000)}`));
    });
  });
}

/**
 * Builds the guest if needed (runs `build.sh`, which installs its Debian packages when missing and
 * is a no-op of well under a second once cached) and returns the kernel and initramfs paths.
 * Concurrent and repeated calls share one build.
 */
export function ensureGuest(options: EnsureGuestOptions = {}): Promise<GuestImage> {
  if (cached && !options.env) return cached;
  const p = runBuildScript(BUILD_SCRIPT, ["VT_GUEST_KERNEL", "VT_GUEST_INITRAMFS"], options)
    .then((v) => ({ kernel: v.VT_GUEST_KERNEL, initramfs: v.VT_GUEST_INITRAMFS }));
  if (!options.env) {
    cached = p;
    p.catch(() => (cached = undefined));
  }
  return p;
}

/** True when `qemu-system-x86_64` (or the given binary) can be run. */
export function qemuAvailable(qemu = "qemu-system-x86_64"): boolean {
  const r = spawnSync(qemu, ["--version"], { stdio: "ignore" });
  return r.status === 0;
}

/**
 * Builds a gzip'd newc cpio archive holding `vt/script` (mode 0755). Appended to the base
 * initramfs, the kernel unpacks it on top (concatenated archives are allowed).
 */
export function scriptCpio(script: string): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  let ino = 1;
  const entry = (name: string, mode: number, data: Uint8Array) => {
    const nameBytes = enc.encode(name + "\0");
    const hex = (n: number) => n.toString(16).padStart(8, "0");
    const fields = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
    const header = enc.encode("070701" + fields.map(hex).join(""));
    const pad = (n: number) => new Uint8Array((4 - (n % 4)) % 4);
    parts.push(header, nameBytes, pad(header.length + nameBytes.length), data, pad(data.length));
  };
  entry("vt", 0o040755, new Uint8Array(0));
  entry("vt/script", 0o100755, enc.encode(script.endsWith("\n") ? script : script + "\n"));
  entry("TRAILER!!!", 0, new Uint8Array(0));
  const total = parts.reduce((n, p) => n + p.length, 0);
  const raw = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    raw.set(p, off);
    off += p.length;
  }
  return new Uint8Array(gzipSync(raw));
}

function parseResult(output: string) {
  const steps = [...output.matchAll(/^VT-STEP: (.*)$/gm)].map((m) => m[1]);
  const res = /^VT-RESULT: (PASS|FAIL)(?: (.*?))?(?: \(exit \d+\))?$/m.exec(output);
  const begin = /VT-BEGIN .*uptime=([\d.]+)/.exec(output);
  return {
    steps,
    pass: res?.[1] === "PASS",
    failedStep: res?.[1] === "FAIL" ? (res[2] ?? "") : undefined,
    bootToInitMs: begin ? Math.round(Number(begin[1]) * 1000) : undefined,
  };
}

/**
 * Boots the guest under `timeout N qemu-system-x86_64 -M q35 -accel tcg` with shared memfd guest
 * memory (as vhost-user needs), `console=ttyS0 quiet panic=-1` and `-no-reboot`, runs
 * `options.script` in it and resolves when QEMU exits. Never rejects for a failing guest: check
 * `passed`. Rejects only if QEMU cannot be started or the guest cannot be built.
 */
export async function bootGuest(options: BootOptions = {}): Promise<BootResult> {
  const guest = options.guest ?? (await ensureGuest());
  const mem = options.memory ?? "512M";
  const via = options.scriptVia ?? "initramfs";
  const tmp = mkdtempSync(join(tmpdir(), "vt-guest-"));
  try {
    let initrd = guest.initramfs;
    const append = ["console=ttyS0", "quiet", "panic=-1"];
    const extra: string[] = [];
    if (options.script !== undefined) {
      if (via === "initramfs") {
        initrd = join(tmp, "initramfs.cpio.gz");
        const base = readFileSync(guest.initramfs);
        const add = scriptCpio(options.script);
        const both = new Uint8Array(base.length + add.length);
        both.set(base, 0);
        both.set(add, base.length);
        writeFileSync(initrd, both);
      } else if (via === "fw_cfg") {
        const file = join(tmp, "script.sh");
        writeFileSync(file, options.script);
        extra.push("-fw_cfg", `name=opt/vt/script,file=${file}`);
      } else {
        const b64 = Buffer.from(options.script, "utf8").toString("base64");
        append.push(`vt_run64=${b64}`);
      }
    }
    if (options.append) append.push(options.append);
    const timeoutSec = options.timeoutSec ?? 120;
    const qemu = options.qemu ?? "qemu-system-x86_64";
    const command = [
      "timeout",
      "--kill-after=5",
      String(timeoutSec),
      qemu,
      ...["-M", options.machine ?? "q35", "-accel", "tcg"],
      ...["-m", mem, "-smp", String(options.smp ?? 1)],
      ...["-nographic", "-no-reboot"],
      ...["-object", `memory-backend-memfd,id=mem,size=${mem},share=on`],
      ...["-machine", "memory-backend=mem"],
      ...(options.noDefaultNic === false ? [] : ["-nic", "none"]),
      ...["-kernel", guest.kernel, "-initrd", initrd, "-append", append.join(" ")],
      ...extra,
      ...(options.qmpSocket ? ["-qmp", `unix:${options.qmpSocket},server=on,wait=off`] : []),
      ...(options.args ?? []),
    ];
    const start = performance.now();
    const { code, stdout, stderr } = await new Promise<
      { code: number | null; stdout: string; stderr: string }
    >((resolve, reject) => {
      const child = spawn(command[0], command.slice(1), {
        stdio: ["ignore", "pipe", "pipe"],
        signal: options.signal,
      });
      trackChild(child);
      let out = "";
      let err = "";
      child.stdout.setEncoding("utf8").on("data", (d: string) => {
        out += d;
        if (options.echo) process.stderr.write(d);
        options.onOutput?.(d);
      });
      child.stderr.setEncoding("utf8").on("data", (d: string) => {
        err += d;
        if (options.echo) process.stderr.write(d);
      });
      child.on("error", (e: Error) => {
        if (e.name === "AbortError") return; // "close" follows with the kill status
        reject(e);
      });
      child.on("close", (c: number | null, sig: string | null) =>
        resolve({
          code: c ??
            (sig ? 128 + (constants.signals[sig as keyof typeof constants.signals] ?? 0) : null),
          stdout: out,
          stderr: err,
        }));
    });
    const elapsedMs = Math.round(performance.now() - start);
    const output = stdout.replace(/\r/g, "");
    const parsed = parseResult(output);
    return {
      output,
      stderr,
      exitCode: code,
      passed: code === 0 && parsed.pass,
      failedStep: parsed.failedStep,
      timedOut: code === 124 || code === 137,
      steps: parsed.steps,
      bootToInitMs: parsed.bootToInitMs,
      elapsedMs,
      command,
    };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
