/**
 * The one error type of the queue layer.
 *
 * @module
 */

/** What went wrong with a virtqueue; each code names one broken rule. */
export type QueueErrorCode =
  /** The queue is used before it was configured and made ready. */
  | "QueueNotReady"
  /** Queue size not a power of two, zero, or above the maximum. */
  | "InvalidSize"
  /** A ring area is misaligned or not inside guest memory. */
  | "InvalidRing"
  /** `avail.idx` moved more than the queue size past the last index the device saw. */
  | "AvailIdxJump"
  /** The head index taken from the available ring is not a descriptor index. */
  | "HeadOutOfRange"
  /** A `next` field points outside the descriptor table. */
  | "DescriptorIndexOutOfRange"
  /** The chain is longer than the table it lives in: a loop. */
  | "ChainTooLong"
  /** A buffer address and length are not inside guest memory. */
  | "DescriptorOutOfBounds"
  /** The sum of buffer lengths exceeds 2^32 - 1. */
  | "ChainTooLarge"
  /** The chain's buffers, split at guest memory region boundaries, make too many segments. */
  | "TooManySegments"
  /** An indirect table length is zero or not a multiple of 16. */
  | "InvalidIndirectLength"
  /** An indirect descriptor inside an indirect table. */
  | "NestedIndirect"
  /** A descriptor has both INDIRECT and NEXT set. */
  | "IndirectWithNext"
  /** INDIRECT used although VIRTIO_F_INDIRECT_DESC was not negotiated. */
  | "IndirectNotNegotiated"
  /** A packed-ring list whose later descriptors were not made available with the first. */
  | "InvalidChain"
  /** A device-readable descriptor follows a device-writable one. */
  | "ReadableAfterWritable"
  /** A read or write past the end of the chain's readable or writable part. */
  | "ShortBuffer"
  /** A used-ring entry names a head that is not a descriptor index. */
  | "InvalidUsedHead";

/**
 * A violation of the virtqueue rules, almost always by the driver.
 *
 * `fatal` errors leave the queue unusable (the device should enter
 * DEVICE_NEEDS_RESET, virtio 1.2 §2.1.2); non-fatal ones concern a single
 * chain, whose `head` can be returned to the driver with a used length of 0.
 */
export class QueueError extends Error {
  /** Which rule was broken. */
  readonly code: QueueErrorCode;
  /** The head of the offending chain, when it is known and valid. */
  readonly head: number | undefined;
  /** Whether the queue can no longer be used. */
  readonly fatal: boolean;

  /**
   * Create it.
   * @param code Which rule was broken.
   * @param message Details.
   * @param options The chain head and whether the queue is broken.
   */
  constructor(
    code: QueueErrorCode,
    message: string,
    options: { head?: number; fatal?: boolean } = {},
  ) {
    super(`${code}: ${message}`);
    this.name = "QueueError";
    this.code = code;
    this.head = options.head;
    this.fatal = options.fatal ?? false;
  }
}
