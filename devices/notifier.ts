/**
 * Interrupt notifiers: how a device tells the driver about used buffers and configuration
 * changes, through a callback, an irqfd or a vhost-user call fd.
 *
 * @module
 */

import { VIRTIO_INTR_CONFIG, VIRTIO_INTR_VRING } from "./constants.ts";

// ---------------------------------------------------------------------------
// Interrupts

/**
 * Something that signals the driver: a used-buffer or configuration-change
 * notification. Callback-backed here; eventfd-backed (irqfd / vhost-user call
 * fd) notifiers implement the same interface.
 */
export interface InterruptNotifier {
  /** Deliver the notification. */
  notify(): void;
}

/** Raises the interrupt for a vector (an MSI-X vector, or 0 for a pin-based line). */
export type InterruptTrigger = (vector: number) => void;

/**
 * Anything with an eventfd-style `write`: an `EventFd` from `sys/` used as a
 * vhost-user call fd or a KVM irqfd. Writing 1 raises the interrupt.
 */
export interface EventSignal {
  /**
   * Add to the counter, waking the waiter.
   * @param value Amount (default 1).
   */
  write(value?: bigint): void;
}

/** How a notifier raises its interrupt: a callback, or an eventfd. */
export type InterruptTarget = InterruptTrigger | EventSignal;

function toTrigger(target: InterruptTarget): InterruptTrigger {
  if (typeof target === "function") return target;
  return () => target.write(1n);
}

/**
 * The interrupt status register of a transport (virtio-mmio InterruptStatus,
 * the PCI ISR): notifiers set bits, the driver acknowledges them.
 */
export class InterruptStatus {
  /** Current bits (`VIRTIO_INTR_VRING`, `VIRTIO_INTR_CONFIG`). */
  value = 0;

  /**
   * Set bits.
   * @param bits Bits to set.
   */
  set(bits: number): void {
    this.value |= bits;
  }

  /**
   * Clear the bits the driver acknowledged.
   * @param bits Bits to clear.
   */
  ack(bits: number): void {
    this.value &= ~bits;
  }
}

class StatusNotifier implements InterruptNotifier {
  readonly #trigger: InterruptTrigger;
  readonly #status: InterruptStatus | undefined;
  readonly #bits: number;
  readonly #vector: number;

  constructor(
    target: InterruptTarget,
    status: InterruptStatus | undefined,
    bits: number,
    vector: number,
  ) {
    this.#trigger = toTrigger(target);
    this.#status = status;
    this.#bits = bits;
    this.#vector = vector;
  }

  notify(): void {
    this.#status?.set(this.#bits);
    this.#trigger(this.#vector);
  }
}

/**
 * Create the notifier a device uses to signal a configuration change.
 * @param trigger Raises the interrupt: a callback, or an eventfd (irqfd, vhost-user call fd).
 * @param status Interrupt status register to set `VIRTIO_INTR_CONFIG` in, if the transport has one.
 * @param vector Interrupt vector (default 0).
 * @returns The notifier.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createDeviceNotifier, InterruptStatus, VIRTIO_INTR_CONFIG } from "./device.ts";
 * const status = new InterruptStatus();
 * let raised = 0;
 * createDeviceNotifier(() => raised++, status).notify();
 * assert.equal(status.value, VIRTIO_INTR_CONFIG);
 * assert.equal(raised, 1);
 * ```
 */
export function createDeviceNotifier(
  trigger: InterruptTarget,
  status?: InterruptStatus,
  vector = 0,
): InterruptNotifier {
  return new StatusNotifier(trigger, status, VIRTIO_INTR_CONFIG, vector);
}

/**
 * Create the notifier a device uses to signal used buffers on a queue.
 * @param trigger Raises the interrupt: a callback, or an eventfd (irqfd, vhost-user call fd).
 * @param status Interrupt status register to set `VIRTIO_INTR_VRING` in, if the transport has one.
 * @param vector Interrupt vector (default 0).
 * @returns The notifier.
 */
export function createQueueNotifier(
  trigger: InterruptTarget,
  status?: InterruptStatus,
  vector = 0,
): InterruptNotifier {
  return new StatusNotifier(trigger, status, VIRTIO_INTR_VRING, vector);
}
