/**
 * Every process the launcher starts is tracked here and killed when this process exits, so
 * no backend or QEMU outlives a test run or a demo that ended early.
 *
 * @module
 */

import type { ChildProcess } from "node:child_process";
import process from "node:process";

const live = new Set<ChildProcess>();
let hooked = false;

/**
 * Kill `child` (SIGKILL) if it is still running when this process exits.
 * @param child A process the launcher started.
 */
export function trackChild(child: ChildProcess): void {
  live.add(child);
  child.once("exit", () => live.delete(child));
  if (hooked) return;
  hooked = true;
  process.once("exit", () => {
    for (const c of live) {
      try {
        c.kill("SIGKILL");
      } catch { /* already gone */ }
    }
  });
}
