/**
 * What a device says so that a transport can serve one of its queues on a thread of its own
 * (a Worker that maps guest memory itself, blocks on the queue's kick eventfd and signals its
 * call eventfd, the shape of qemu-storage-daemon's iothreads). The device describes a handler
 * the Worker builds from plain parameters; the transport does the rest
 * (`transport/queue_thread.ts`).
 *
 * @module
 */

import type { ChainHandler } from "./serve.ts";
import type { VirtioError } from "./errors.ts";

/**
 * How queue `index` of a device can be served on its own thread, from
 * {@linkcode VirtioDevice.queueThread}. Asked each time the queue starts while the device is
 * active, so the parameters may carry what the driver negotiated.
 */
export interface QueueThreadSpec {
  /**
   * URL of the module the Worker imports. It exports `createQueueHandler`, a
   * {@linkcode CreateQueueHandler}.
   */
  readonly module: string;
  /**
   * What `createQueueHandler` receives: anything the structured clone algorithm copies
   * (SharedArrayBuffers are shared, not copied: state both threads see lives in them).
   */
  readonly params: unknown;
  /**
   * On the calling (main) thread: receives each error the handler reported on the queue's
   * thread, as the device's own error hook would on the event loop.
   */
  readonly onError?: (err: VirtioError) => void;
}

/** What the Worker gives a queue handler besides its parameters. */
export interface QueueHandlerContext {
  /** The queue's index. */
  readonly index: number;
  /**
   * Report an error. It reaches the spec's `onError` and the transport (which sets
   * DEVICE_NEEDS_RESET when `needsReset` is set) on the main thread.
   */
  onError(err: VirtioError): void;
}

/** A queue handler on its thread: serves chains as the device's own loop would. */
export interface QueueHandler {
  /** Serves one chain: returns the used length (a queue thread completes every chain at once). */
  readonly handle: ChainHandler;
  /** Releases what the handler holds on the thread (the device's files stay the device's). */
  close?(): void;
}

/**
 * The `createQueueHandler` export of a {@linkcode QueueThreadSpec}'s module.
 * @param params The spec's `params`, as received by the Worker.
 * @param context The queue index and the error hook.
 * @returns The handler.
 */
export type CreateQueueHandler = (params: unknown, context: QueueHandlerContext) => QueueHandler;
