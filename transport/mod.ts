/**
 * Transports: the transport core every way of reaching a device shares (status machine,
 * feature negotiation, queue set-up, activation, NEEDS_RESET, configuration access, budgeted
 * serving), the virtio-mmio and virtio-pci register files on top of it, and queue threads
 * (a virtqueue served on a Worker of its own, handed over and taken back by the transport).
 *
 * @module
 */

export * from "./core.ts";
export * from "./mmio.ts";
export * from "./pci.ts";
export {
  describeRing,
  QUEUE_THREAD_MAX_PENDING_ERRORS,
  QUEUE_THREAD_STOP_TIMEOUT_MS,
  QueueThread,
  type QueueThreadIndices,
  type QueueThreadOptions,
  type QueueThreadRegion,
  type QueueThreadRing,
  type QueueThreadSpec,
  regionsByAddress,
} from "./queue_thread.ts";
