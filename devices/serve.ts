/**
 * The queue loop every device uses.
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
 * The queue loop every device uses: take each available chain, hand it to
 * `handle` and put it in the used ring. With VIRTIO_F_EVENT_IDX the driver is
 * notified as soon as a used buffer passes its `used_event` (virtio 1.2
 * §2.7.10), so it can reap while the rest is served; without it, once at the
 * end unless it set VIRTQ_AVAIL_F_NO_INTERRUPT. Driver notifications are
 * suppressed while the loop runs and re-armed before it ends, with a re-check
 * so a buffer added meanwhile is not missed.
 *
 * A malformed chain is returned with used length 0 and reported; a broken
 * queue (fatal `QueueError`) is reported with `needsReset` and the loop stops.
 * Nothing is thrown.
 *
 * @param memory Guest memory.
 * @param qc The queue and its notifier.
 * @param handle Serves one chain.
 * @param onError Receives every error.
 * @returns The number of chains completed.
 */
export function serveQueue(
  memory: GuestMemory,
  qc: VirtioQueueConfig,
  handle: ChainHandler,
  onError: (err: VirtioError) => void,
): number {
  const q = qc.queue;
  let used = 0;
  try {
    do {
      q.disableNotification(memory);
      for (;;) {
        let chain: DescriptorChain | null;
        try {
          chain = q.pop(memory);
        } catch (err) {
          if (err instanceof QueueError && !err.fatal && err.head !== undefined) {
            q.addUsed(memory, err.head, 0);
            used++;
            onError(VirtioError.from(err));
            continue;
          }
          throw err;
        }
        if (chain === null) break;
        let len: number | undefined;
        try {
          len = handle(chain);
        } catch (err) {
          len = 0;
          onError(VirtioError.from(err));
        }
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
  return used;
}
