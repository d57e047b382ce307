/**
 * Facts about the host: which runtime runs us, and whether KVM is usable.
 *
 * @module
 */

import { closeSync, openSync } from "node:fs";

export { runtime } from "./libc.ts";
export type { Runtime } from "./libc.ts";

/**
 * Whether `/dev/kvm` exists and this process may open it for reading and writing. Uses
 * `node:fs`, so it needs no FFI permission (Deno needs read and write access to `/dev/kvm`).
 *
 * @example Skip KVM tests on machines without it
 * ```ts
 * import { hasKvm } from "./mod.ts";
 * const kvm: boolean = hasKvm();
 * if (typeof kvm !== "boolean") throw new Error("unexpected");
 * ```
 *
 * @returns True if `/dev/kvm` can be opened read-write.
 */
export function hasKvm(): boolean {
  try {
    closeSync(openSync("/dev/kvm", "r+"));
    return true;
  } catch {
    return false;
  }
}
