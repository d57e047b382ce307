/**
 * The one queue interface devices and transports use, whatever the ring format: the split
 * ring ({@linkcode SplitQueue}, virtio 1.2 §2.7) or the packed ring ({@linkcode PackedQueue},
 * §2.8). A transport creates the format the driver negotiated (VIRTIO_F_RING_PACKED); devices
 * never see the difference.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { DescriptorChain } from "./chain.ts";
import type { QueueError } from "./error.ts";

/** Plain saved state of a queue (for migration, vhost-user and debugging). */
export interface VirtqueueState {
  /** Ring format. */
  format: "split" | "packed";
  /** Maximum size the device offers. */
  maxSize: number;
  /** Size chosen by the driver. */
  size: number;
  /** Whether the driver marked the queue ready. */
  ready: boolean;
  /** Guest address of the descriptor table or ring. */
  descTable: number;
  /** Guest address of the driver area. */
  availRing: number;
  /** Guest address of the device area. */
  usedRing: number;
  /** Next available position the device will read (format-specific encoding, see `nextAvail`). */
  nextAvail: number;
  /** Next used position the device will write (format-specific encoding). */
  nextUsed: number;
  /** Whether VIRTIO_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** Whether VIRTIO_F_INDIRECT_DESC was negotiated. */
  indirect: boolean;
}

/** The device side of one virtqueue, in either ring format. */
export interface Virtqueue {
  /** The ring format. */
  readonly format: "split" | "packed";
  /** Maximum size the device offers. */
  readonly maxSize: number;
  /** Size the driver chose. */
  size: number;
  /** Whether the driver marked the queue ready. */
  ready: boolean;
  /** Whether VIRTIO_F_EVENT_IDX (or its packed equivalent) is in effect. */
  eventIdx: boolean;
  /** Whether VIRTIO_F_INDIRECT_DESC is in effect. */
  indirect: boolean;
  /** Whether VIRTIO_F_IN_ORDER is in effect: used entries may be batched until `flushUsed`. */
  inOrder: boolean;
  /** Guest address of the descriptor table (split) or descriptor ring (packed). */
  descTable: number;
  /** Guest address of the driver area (split: available ring; packed: driver event suppression). */
  availRing: number;
  /** Guest address of the device area (split: used ring; packed: device event suppression). */
  usedRing: number;
  /**
   * Next available position: split, a free-running 16-bit index; packed, the ring position in
   * bits 0–14 and the wrap counter in bit 15 (the vhost-user `vring base` encoding).
   */
  nextAvail: number;
  /** Next used position, in the same encoding as `nextAvail`. */
  nextUsed: number;
  /** The fatal error that stopped this queue, if any. */
  readonly broken: QueueError | undefined;
  /**
   * Set the descriptor area address, or one 32-bit half of it.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setDescTableAddress(low?: number, high?: number): void;
  /**
   * Set the driver area address, or one half of it.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setAvailRingAddress(low?: number, high?: number): void;
  /**
   * Set the device area address, or one half of it.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setUsedRingAddress(low?: number, high?: number): void;
  /**
   * Apply the negotiated features that change ring behaviour.
   * @param features The acknowledged feature bits.
   */
  setFeatures(features: bigint): void;
  /** Return to the state after device reset. */
  reset(): void;
  /**
   * Check size and ring placement against guest memory.
   * @param mem Guest memory.
   * @throws {QueueError} `QueueNotReady`, `InvalidSize` or `InvalidRing`.
   */
  validate(mem: GuestMemory): void;
  /**
   * Whether the queue is ready and its rings are valid in `mem`.
   * @param mem Guest memory.
   */
  isValid(mem: GuestMemory): boolean;
  /**
   * Take the next available chain (see {@linkcode SplitQueue.pop} for the error contract).
   * @param mem Guest memory.
   * @returns The chain, or `null` when nothing is available.
   * @throws {QueueError} For every violation of the ring rules.
   */
  pop(mem: GuestMemory): DescriptorChain | null;
  /** Put back the chain just popped. */
  undoPop(): void;
  /**
   * Return a chain to the driver.
   * @param mem Guest memory.
   * @param head The chain's `head` (split: head index; packed: buffer id).
   * @param len Bytes the device wrote.
   * @throws {QueueError} For a head that was never handed out.
   */
  addUsed(mem: GuestMemory, head: number, len: number): void;
  /**
   * Return several chains so that the driver sees all of them or none (a received packet
   * spread over several buffers, virtio-net MRG_RXBUF: the driver reads its `num_buffers`
   * entries as soon as it sees the first). Entries an in-order batch held back go first.
   * @param mem Guest memory.
   * @param heads The chains' `head`s, in order.
   * @param lens Bytes written into each.
   * @param count How many of `heads`/`lens` (default all of `heads`).
   * @throws {QueueError} For a head that was never handed out (nothing is published).
   */
  addUsedMany(
    mem: GuestMemory,
    heads: readonly number[],
    lens: readonly number[],
    count?: number,
  ): void;
  /**
   * Publish used entries an in-order batch held back (a no-op without VIRTIO_F_IN_ORDER);
   * `needsNotification` and `enableNotification` do it first.
   * @param mem Guest memory.
   */
  flushUsed(mem: GuestMemory): void;
  /**
   * Whether the driver wants a used-buffer notification now; call once after a batch.
   * @param mem Guest memory.
   */
  needsNotification(mem: GuestMemory): boolean;
  /**
   * Ask the driver to notify the device of new buffers, then report whether buffers arrived
   * meanwhile.
   * @param mem Guest memory.
   */
  enableNotification(mem: GuestMemory): boolean;
  /**
   * Ask the driver not to notify the device.
   * @param mem Guest memory.
   */
  disableNotification(mem: GuestMemory): void;
  /**
   * Whether the driver has made buffers available that the device has not taken.
   * @param mem Guest memory.
   */
  hasPending(mem: GuestMemory): boolean;
  /**
   * Whether the indices are away from their reset values: the rings were used before (a
   * frontend that reconnected, a backend that restarted and resumed them).
   */
  inUse(): boolean;
  /**
   * Where the device stands, as vhost-user's GET_VRING_BASE reports it: split, the next
   * available index; packed, `nextAvail` in bits 0–15 and `nextUsed` in bits 16–31.
   */
  vringBase(): number;
  /**
   * Resume at `base` (a vhost-user vring base, as `vringBase()` encodes it) after the rings
   * were set up again; a split ring's used index follows what its used ring says, so chains in
   * flight when the previous server stopped are served again.
   * @param mem Guest memory.
   * @param base The position to resume at.
   */
  resume(mem: GuestMemory, base: number): void;
  /** A plain copy of the queue's state. */
  state(): VirtqueueState;
}
