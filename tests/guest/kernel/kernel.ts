/**
 * The microVM guest kernel (built by `build-kernel.sh` from Debian's linux-source-6.1 with every
 * virtio driver and virtio-mmio command-line devices built in), for the KVM tests, demo and
 * benchmark. Only `node:` imports: runs on Deno and Bun.
 *
 * @module
 */

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

/** The build script. */
export const KERNEL_BUILD_SCRIPT: string = join(HERE, "build-kernel.sh");

/** Where `build-kernel.sh` leaves the bzImage (without building anything). */
export function kernelPath(): string {
  const cache = process.env.VT_KERNEL_CACHE ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "virtio-ts/kernel");
  return join(cache, "bzImage");
}

/** Whether the kernel has been built already. */
export function kernelBuilt(): boolean {
  return existsSync(kernelPath());
}

let cached: Promise<string> | undefined;

/**
 * Builds the kernel if needed (about 10 minutes on 2 cores the first time; a stamp check of well
 * under a second afterwards) and returns the bzImage path.
 *
 * @param options `verbose`: stream the build log to stderr.
 * @returns The bzImage path.
 */
export function ensureKernel(options: { verbose?: boolean } = {}): Promise<string> {
  if (cached) return cached;
  cached = new Promise<string>((resolve, reject) => {
    const child = spawn("bash", [KERNEL_BUILD_SCRIPT], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      err += d;
      if (options.verbose) process.stderr.write(d);
    });
    child.on("error", reject);
    child.on("close", (code) => {
      const path = /^VT_KVM_KERNEL=(.*)$/m.exec(out)?.[1];
      if (code === 0 && path) resolve(path);
      else reject(new Error(`build-kernel.sh failed (exit ${code}):\n${err.slice(-4000)}`));
    });
  });
  cached.catch(() => (cached = undefined));
  return cached;
}
