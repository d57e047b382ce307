/**
 * The queue-thread side of {@linkcode BlockDevice}: what a Worker serving one request queue
 * builds from the parameters of `BlockDevice.queueThread` (see `devices/queue_thread.ts`).
 *
 * @module
 */

import type { QueueHandler, QueueHandlerContext } from "./queue_thread.ts";
import type { BlockRequestLimits } from "./_block_request.ts";
import { FdBackend, type SharedFileBackend } from "./_block_backend.ts";
import { BlockRequestHandler, STAT_FIELDS } from "./_block_handler.ts";

/** What `BlockDevice.queueThread` hands the Worker (structured-cloneable). */
export interface BlockThreadParams {
  /** The image's descriptor and modes. */
  backend: SharedFileBackend;
  /** Request limits as negotiated (the capacity is re-read from `config`). */
  limits: BlockRequestLimits;
  /** The GET_ID answer. */
  id: Uint8Array;
  /** The device's configuration space (shared). */
  config: SharedArrayBuffer;
  /** The device's counters (shared), one row per serving thread. */
  counters: SharedArrayBuffer;
  /** This queue's row of `counters`. */
  row: number;
  /** Whether VIRTIO_BLK_F_FLUSH was negotiated. */
  flushNegotiated: boolean;
}

/**
 * Build the handler of one request queue on its thread.
 * @param params The device's {@linkcode BlockThreadParams}.
 * @param context The queue index and the error hook.
 * @returns The handler.
 */
export function createQueueHandler(
  params: unknown,
  context: QueueHandlerContext,
): QueueHandler {
  const p = params as BlockThreadParams;
  const counters = new Float64Array(p.counters);
  const handler = new BlockRequestHandler({
    backend: new FdBackend(p.backend),
    limits: { ...p.limits },
    id: p.id,
    config: new DataView(p.config),
    stats: counters.subarray(p.row * STAT_FIELDS, (p.row + 1) * STAT_FIELDS),
    flushNegotiated: () => p.flushNegotiated,
    onError: (err) => context.onError(err),
  });
  return { handle: handler.handle };
}
