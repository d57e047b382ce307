/**
 * Virtqueues, device side: the split and packed rings behind one `Virtqueue`
 * interface, validated descriptor chains and their cursors, and the queue error type.
 *
 * @module
 */

export * from "./error.ts";
export * from "./chain.ts";
export * from "./split.ts";
export * from "./packed.ts";
export * from "./virtqueue.ts";
