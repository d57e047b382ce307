/**
 * The cases of the hostile-driver conformance suite: hand-written malformed split and packed
 * rings and chains, and abuse of the virtio-mmio register file. Each case builds its attack,
 * arms the memory watch, notifies; the runner then lets the device settle, checks what must
 * hold (see {@linkcode Rig.verify}) and that a valid request still works. Private to `testing/`.
 *
 * @module
 */

import type { Rig, RingFormat } from "./_conformance_harness.ts";
import { fire } from "./_conformance_chains.ts";
import { SPLIT } from "./_conformance_split.ts";
import { PACKED } from "./_conformance_packed.ts";
import { MMIO } from "./_conformance_mmio.ts";

/** One case: what it is called, where it runs, and the attack. */
export interface CaseDef {
  /** Unique name, e.g. `split: descriptor loop (queue 1)`. */
  name: string;
  /** Ring format, or `mmio` for register abuse on a reset device. */
  kind: RingFormat | "mmio";
  /** Driver features for the set-up (default: all but the opt-in ones). */
  features?: bigint;
  /** Whether the rings are still the driver's own afterwards (default true). */
  sameRings?: boolean;
  /** The attack: build, `rig.arm()`, allow what the device may write, notify. */
  run(rig: Rig): void | Promise<void>;
}

/**
 * Every case for a device with `queues` attacked queues, in a fixed order.
 * @param attack The queues attacked.
 * @param opts What the device and driver support.
 * @returns The cases.
 */
export function allCases(
  attack: readonly number[],
  opts: { packed: boolean },
): CaseDef[] {
  const out: CaseDef[] = [];
  for (const q of attack) {
    for (const c of SPLIT) {
      out.push({
        name: `split: ${c.name} (queue ${q})`,
        kind: "split",
        features: c.features?.({ offered: 0n }),
        sameRings: c.sameRings,
        run: (rig) => {
          if (c.needsIndirect && !rig.indirect) {
            rig.notes.push("skipped: indirect descriptors not negotiated");
            return fire(rig, q);
          }
          return c.run(rig, q);
        },
      });
    }
  }
  if (opts.packed) {
    for (const q of attack) {
      for (const c of PACKED) {
        out.push({
          name: `packed: ${c.name} (queue ${q})`,
          kind: "packed",
          sameRings: c.sameRings,
          run: (rig) => {
            if (c.needsIndirect && !rig.indirect) {
              rig.notes.push("skipped: indirect descriptors not negotiated");
              return fire(rig, q);
            }
            return c.run(rig, q);
          },
        });
      }
    }
  }
  for (const c of MMIO) {
    out.push({ name: `mmio: ${c.name}`, kind: "mmio", sameRings: false, run: c.run });
  }
  return out;
}
