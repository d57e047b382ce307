/**
 * Facts about the host: which runtime runs us, and whether KVM is usable.
 *
 * @module
 */

import { closeSync, existsSync, openSync, readFileSync } from "node:fs";

export { runtime } from "./libc.ts";
export type { Runtime } from "./libc.ts";

/**
 * Why this host cannot run hardware-assisted KVM guests, or `undefined` when it can: `/dev/kvm`
 * opens read-write and the CPU advertises VT-x or AMD-V (`vmx`/`svm` in `/proc/cpuinfo`). A
 * `/dev/kvm` without either flag is a software KVM such as PVM (`kvm_pvm`, seen in Firecracker
 * hosts), which runs only kernels built for it: a stock distribution kernel stops there with a
 * KVM internal error at the first instruction PVM cannot emulate, so it counts as unusable.
 * Uses `node:fs`, so it needs no FFI permission (Deno needs read access to `/proc/cpuinfo`,
 * `/sys/module` and read-write access to `/dev/kvm`).
 *
 * @example Print why KVM tests would be skipped
 * ```ts
 * import { kvmUnavailableReason } from "./mod.ts";
 * const reason: string | undefined = kvmUnavailableReason();
 * if (reason !== undefined && typeof reason !== "string") throw new Error("unexpected");
 * ```
 *
 * @returns A sentence naming the reason, or `undefined` if KVM is usable.
 */
export function kvmUnavailableReason(): string | undefined {
  try {
    closeSync(openSync("/dev/kvm", "r+"));
  } catch (e) {
    const code = (e as { code?: string }).code;
    return code === "ENOENT"
      ? "/dev/kvm not present"
      : `/dev/kvm cannot be opened read-write (${code ?? String(e)})`;
  }
  let cpuinfo = "";
  try {
    cpuinfo = readFileSync("/proc/cpuinfo", "latin1");
  } catch {
    return undefined; // No way to tell: trust /dev/kvm.
  }
  if (/^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo)) return undefined;
  if (!/^flags\s*:/m.test(cpuinfo)) return undefined; // Not x86: no such flags to read.
  const pvm = existsSync("/sys/module/kvm_pvm");
  return `/dev/kvm is ${pvm ? "PVM (kvm_pvm)" : "a software KVM"}: the CPU has no VT-x/AMD-V, ` +
    "and stock guest kernels fail there on instructions it does not emulate";
}

/**
 * Whether this host can run hardware-assisted KVM guests: {@link kvmUnavailableReason} has no
 * reason against it.
 *
 * @example Skip KVM tests on machines without it
 * ```ts
 * import { hasKvm } from "./mod.ts";
 * const kvm: boolean = hasKvm();
 * if (typeof kvm !== "boolean") throw new Error("unexpected");
 * ```
 *
 * @returns True if `/dev/kvm` can be opened read-write and is hardware-assisted.
 */
export function hasKvm(): boolean {
  return kvmUnavailableReason() === undefined;
}
