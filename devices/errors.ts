/**
 * Errors of the device framework: why activation failed, and what went wrong while serving.
 *
 * @module
 */

import { GuestMemoryError } from "../memory/guest_memory.ts";
import { QueueError } from "../queue/error.ts";

/** Why {@linkcode VirtioDevice.activate} failed (the seed's `ActivateError` variants). */
export type ActivateErrorKind =
  /** A parameter is out of range or inconsistent (a second activation included). */
  | "InvalidParam"
  /** A queue is missing, not ready or badly placed. */
  | "InvalidQueueConfig"
  /** A host resource (file, fd, mapping) could not be set up. */
  | "IOError"
  /** Anything else inside the device. */
  | "InternalError";

/** Failure of {@linkcode VirtioDevice.activate}. */
export class ActivateError extends Error {
  /** What kind of failure. */
  readonly kind: ActivateErrorKind;

  /**
   * Create it.
   * @param kind What kind of failure.
   * @param message Details.
   * @param options Standard error options (`cause`).
   */
  constructor(kind: ActivateErrorKind, message: string, options?: ErrorOptions) {
    super(`${kind}: ${message}`, options);
    this.name = "ActivateError";
    this.kind = kind;
  }
}

/** Kinds of {@linkcode VirtioError}. */
export type VirtioErrorKind =
  /** The driver sent something the device cannot accept. */
  | "InvalidInput"
  /** A host I/O operation failed. */
  | "IOError"
  /** A virtqueue rule was broken; `cause` is the {@linkcode QueueError}. */
  | "QueueError"
  /** Guest memory could not be accessed. */
  | "GuestMemory"
  /** The device is not activated. */
  | "NotActivated"
  /** An unexpected failure inside the device. */
  | "InternalError";

/**
 * A device-side failure while serving the guest. The guest only ever sees virtio
 * status codes; this is what the host sees. `needsReset` tells the transport
 * to set DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2).
 */
export class VirtioError extends Error {
  /** What kind of failure. */
  readonly kind: VirtioErrorKind;
  /** Whether the device can no longer operate until the driver resets it. */
  readonly needsReset: boolean;

  /**
   * Create it.
   * @param kind What kind of failure.
   * @param message Details.
   * @param options `needsReset` and a `cause`.
   */
  constructor(
    kind: VirtioErrorKind,
    message: string,
    options: { needsReset?: boolean; cause?: unknown } = {},
  ) {
    super(`${kind}: ${message}`, { cause: options.cause });
    this.name = "VirtioError";
    this.kind = kind;
    this.needsReset = options.needsReset ?? false;
  }

  /**
   * Wrap anything thrown while serving a queue.
   * @param err What was thrown.
   * @returns A `VirtioError` (the same one if it already is).
   */
  static from(err: unknown): VirtioError {
    if (err instanceof VirtioError) return err;
    if (err instanceof QueueError) {
      return new VirtioError("QueueError", err.message, { needsReset: err.fatal, cause: err });
    }
    if (err instanceof GuestMemoryError) {
      return new VirtioError("GuestMemory", err.message, { cause: err });
    }
    const msg = err instanceof Error ? err.message : String(err);
    return new VirtioError("InternalError", msg, { cause: err });
  }
}
