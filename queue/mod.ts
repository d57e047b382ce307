/**
 * Virtqueues, device side: the split ring, validated descriptor chains and
 * their cursors, and the queue error type.
 *
 * @module
 */

export * from "./error.ts";
export * from "./chain.ts";
export * from "./split.ts";
