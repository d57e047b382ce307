/**
 * The queue loop every device uses, and the budget that bounds one pass of it.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import { QueueError } from "../queue/error.ts";
import type { VirtioQueueConfig } from "./config.ts";
import { VirtioError } from "./errors.ts";

/**
 * What {@linkcode serveQueue} does with each chain: return the number of
 * bytes written to complete it now, or `undefined` when the handler keeps it
 * and completes it later (then it must call `addUsed` and notify itself).
 */
export type ChainHandler = (chain: DescriptorChain) => number | undefined;

/**
 * How much one pass of {@linkcode serveQueue} may do before it gives the event loop back:
 * at most `chains` chains, and it stops after the chain that brings the bytes moved (read
 * from readable buffers plus written to writable ones) to `bytes` or more.
 */
export interface ServeBudget {
  /** Most chains served in one pass (at least 1). */
  readonly chains: number;
  /** Bytes after which the pass stops (at least 1). */
  readonly bytes: number;
}

/**
 * The default budget of one pass: 256 chains or 64 MiB. A driver that keeps its ring full
 * (even one that feeds itself) gets at most this much per turn of the event loop; the
 * transport continues on the next turn, so other rings and the control channel are served in
 * between (DESIGN.md: work per notification is bounded).
 */
export const DEFAULT_SERVE_BUDGET: ServeBudget = Object.freeze({ chains: 256, bytes: 64 << 20 });

/** What one pass of {@linkcode serveQueue} did. */
export interface ServePass {
  /** Chains put in the used ring. */
  completed: number;
  /**
   * True when the pass stopped at its budget with buffers still available: call again on a
   * later turn (notifications stay suppressed meanwhile, so the driver need not kick).
   */
  more: boolean;
}

/**
 * The queue loop every device uses: take each available chain, hand it to
 * `handle` and put it in the used ring. With VIRTIO_F_EVENT_IDX the driver is
 * notified as soon as a used buffer passes its `used_event` (virtio 1.2
 * §2.7.10), so it can reap while the rest is served; without it, once at the
 * end unless it set VIRTQ_AVAIL_F_NO_INTERRUPT. Driver notifications are
 * suppressed while the loop runs and re-armed before it ends, with a re-check
 * so a buffer added meanwhile is not missed.
 *
 * One pass does at most `budget` work; when it stops there with buffers left
 * it returns `more: true` and leaves notifications suppressed: the caller (the
 * transport core, through the device's `processQueue`) runs it again later.
 *
 * A malformed chain is returned with used length 0 and reported; a broken
 * queue (fatal `QueueError`) is reported with `needsReset` and the loop stops.
 * Nothing is thrown.
 *
 * @param memory Guest memory.
 * @param qc The queue and its notifier.
 * @param handle Serves one chain.
 * @param onError Receives every error.
 * @param budget The most one pass may do (default {@linkcode DEFAULT_SERVE_BUDGET}).
 * @returns How many chains were completed and whether buffers are left for another pass.
 */
export function serveQueue(
  memory: GuestMemory,
  qc: VirtioQueueConfig,
  handle: ChainHandler,
  onError: (err: VirtioError) => void,
  budget: ServeBudget = DEFAULT_SERVE_BUDGET,
): ServePass {
  const q = qc.queue;
  const maxChains = Math.max(1, budget.chains);
  const maxBytes = Math.max(1, budget.bytes);
  let used = 0;
  let taken = 0;
  let bytes = 0;
  let more = false;
  try {
    outer: do {
      q.disableNotification(memory);
      for (;;) {
        if (taken >= maxChains || bytes >= maxBytes) {
          // Out of budget: leave the rest (and suppressed notifications) for the next pass.
          more = q.hasPending(memory);
          if (more) break outer;
        }
        let chain: DescriptorChain | null;
        try {
          chain = q.pop(memory);
        } catch (err) {
          if (err instanceof QueueError && !err.fatal && err.head !== undefined) {
            q.addUsed(memory, err.head, 0);
            used++;
            taken++;
            onError(VirtioError.from(err));
            continue;
          }
          throw err;
        }
        if (chain === null) break;
        taken++;
        let len: number | undefined;
        try {
          len = handle(chain);
        } catch (err) {
          len = 0;
          onError(VirtioError.from(err));
        }
        bytes += chain.readableBytes + (len ?? 0);
        if (len !== undefined) {
          q.addUsed(memory, chain.head, len);
          used++;
          // With EVENT_IDX the driver says exactly when it wants to hear (used_event), so
          // tell it as soon as it does: it can reap and refill while the rest is served.
          if (q.eventIdx && q.needsNotification(memory)) qc.notifier.notify();
        }
      }
    } while (q.enableNotification(memory));
  } catch (err) {
    more = false;
    const e = VirtioError.from(err);
    onError(
      e.needsReset ? e : new VirtioError(e.kind, e.message, { needsReset: true, cause: err }),
    );
  }
  try {
    // A broken queue was reported above; asking it again would only report it twice.
    if (used > 0 && q.broken === undefined && q.needsNotification(memory)) qc.notifier.notify();
  } catch (err) {
    onError(VirtioError.from(err));
  }
  return { completed: used, more };
}
