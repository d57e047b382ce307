// Queue-thread handlers for tests/transport/queue_thread_test.ts: the module a test QueueThread
// loads in its Worker (`createQueueHandler`), with behaviours chosen by `params.mode`.

import type { QueueHandler, QueueHandlerContext } from "../../devices/queue_thread.ts";
import { VirtioError } from "../../devices/errors.ts";
import type { DescriptorChain } from "../../queue/chain.ts";

/** What the tests pass. */
export interface TestHandlerParams {
  /**
   * "fill": write the chain's head (le16) into its writable part and count it;
   * "feed": as "fill", then publish the same head again (a ring that feeds itself);
   * "errors": report an error for each chain and complete it empty.
   */
  mode: "fill" | "feed" | "errors";
  /** Shared counter (Int32 0: chains handled). */
  counter: SharedArrayBuffer;
  /** For "feed": the guest memory region's fd mapping is not needed: the avail ring address. */
  availRing?: number;
  /** For "feed": the queue size. */
  size?: number;
}

/**
 * Build the handler.
 * @param params A {@linkcode TestHandlerParams}.
 * @param context Queue index and error hook.
 * @returns The handler.
 */
export function createQueueHandler(params: unknown, context: QueueHandlerContext): QueueHandler {
  const p = params as TestHandlerParams;
  const counter = new Int32Array(p.counter);
  const head = new Uint8Array(2);
  const handle = (chain: DescriptorChain): number => {
    Atomics.add(counter, 0, 1);
    if (p.mode === "errors") {
      context.onError(new VirtioError("InvalidInput", `chain ${chain.head} refused`));
      return 0;
    }
    new DataView(head.buffer).setUint16(0, chain.head, true);
    const n = Math.min(2, chain.writer.remaining);
    chain.writer.writeExact(head.subarray(0, n));
    if (p.mode === "feed") {
      // Publish the same head again: avail.ring[idx % size] = head; avail.idx++.
      const mem = chain.memory;
      const idx = mem.readU16(p.availRing! + 2);
      mem.writeU16(p.availRing! + 4 + 2 * (idx % p.size!), chain.head);
      mem.writeU16(p.availRing! + 2, (idx + 1) & 0xffff);
    }
    return n;
  };
  return { handle };
}
