/**
 * An optional minimal guest kernel (built by `build-kernel.sh` from Debian's linux-source-6.1 with
 * every virtio driver and virtio-mmio command-line devices built in, no modules, no ACPI), for
 * `MicroVm` with `mmioDiscovery: "cmdline"`. Nothing in the tests, demo or benchmark needs it:
 * they boot Debian's stock kernel, which finds our devices in the ACPI tables the VMM writes.
 * Without ACPI (and without an MP table, which the VMM does not write) that kernel sees one CPU.
 * Only `node:` imports: runs on Deno and Bun.
 *
 * @module
 */

import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { runBuildScript } from "./qemu.ts";

const HERE = dirname(fileURLToPath(import.meta.url));

/** The build script. */
export const KERNEL_BUILD_SCRIPT: string = join(HERE, "guest", "kernel", "build-kernel.sh");

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
  cached = runBuildScript(KERNEL_BUILD_SCRIPT, ["VT_KVM_KERNEL"], options)
    .then((v) => v.VT_KVM_KERNEL);
  cached.catch(() => (cached = undefined));
  return cached;
}
