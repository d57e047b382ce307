/**
 * The device framework: what every virtio device offers a transport, in the
 * shape of the dbs-virtio-devices API. The interface and its base class live
 * here; constants, errors, notifiers, shared memory, the activation config and
 * the queue loop each have a file of their own and are re-exported.
 *
 * @module
 */

import { featureBit } from "./constants.ts";
import type { VirtioDeviceConfig, VirtioQueueConfig } from "./config.ts";
import type { QueueThreadSpec } from "./queue_thread.ts";
import { ActivateError, VirtioError } from "./errors.ts";
import type { GuestRam } from "./guest_ram.ts";
import type {
  DeviceResources,
  ResourceConstraint,
  VirtioSharedMemoryList,
} from "./shared_memory.ts";

export * from "./constants.ts";
export * from "./errors.ts";
export * from "./notifier.ts";
export * from "./shared_memory.ts";
export * from "./config.ts";
export * from "./serve.ts";
export * from "./guest_ram.ts";
export * from "./queue_thread.ts";

/**
 * What a transport (virtio-mmio, virtio-pci, vhost-user) needs from a device: the seed's
 * `VirtioDevice` trait, plus `processQueue` (the driver notified a queue) and `reconfigure`
 * (the set of started queues or guest memory changed without a reset).
 */
export interface VirtioDevice {
  /** The virtio device type (`TYPE_*`). */
  deviceType(): number;
  /** Maximum size of each data queue; the length is the number of data queues. */
  queueMaxSizes(): readonly number[];
  /**
   * Maximum size of the control queue, 0 when the device has none (default). A control queue
   * comes after the data queues and reaches the device as `VirtioDeviceConfig.ctrlQueue`.
   */
  ctrlQueueMaxSizes?(): number;
  /**
   * One 32-bit page of the features the device offers.
   * @param page Page number (0: bits 0–31, 1: bits 32–63, …).
   */
  getAvailFeatures(page: number): number;
  /**
   * Acknowledge one 32-bit page of features; acknowledgements accumulate until `reset()`, and
   * bits never offered are dropped.
   * @param page Page number.
   * @param value The bits.
   */
  setAckedFeatures(page: number, value: number): void;
  /** Features acknowledged so far, masked to those offered. */
  ackedFeatures(): bigint;
  /**
   * Read device configuration space.
   * @param offset Byte offset in the configuration space.
   * @param data Filled with the bytes read.
   * @throws {VirtioError} `InvalidInput` for a range outside the space.
   */
  readConfig(offset: number, data: Uint8Array): void;
  /**
   * Write device configuration space.
   * @param offset Byte offset in the configuration space.
   * @param data The bytes written.
   * @throws {VirtioError} `InvalidInput` for a range outside the space or a read-only field.
   */
  writeConfig(offset: number, data: Uint8Array): void;
  /**
   * Start serving: the driver set DRIVER_OK.
   * @param config Memory, queues and notifiers.
   * @throws {ActivateError} When the device cannot start.
   */
  activate(config: VirtioDeviceConfig): void;
  /**
   * The started queues or guest memory changed while the device runs (a vhost-user ring
   * stopped or started around a VM pause, a new memory table, a per-queue reset). Serve from
   * now on with `config`, keeping negotiated features and driver-written configuration: this
   * is not a reset. A transport that needs it on a device without it must reset the device.
   * @param config The new memory and queues.
   * @throws {ActivateError} When the device cannot run on the new set (NEEDS_RESET follows).
   */
  reconfigure?(config: VirtioDeviceConfig): void;
  /** Stop serving and return to the initial state; the device stays reusable. */
  reset(): void;
  /**
   * The driver notified queue `index`: serve its available buffers. One call does a bounded
   * amount of work ({@linkcode DEFAULT_SERVE_BUDGET}); it returns `true` when it stopped there
   * with buffers left, and the transport calls it again on a later turn of the event loop.
   * @param index Queue index.
   * @returns `true` when more work is pending for this queue.
   */
  processQueue(index: number): boolean | void;
  /**
   * How queue `index` can be served on a thread of its own (a transport's queue-thread mode),
   * or `undefined` when it cannot: the transport then serves it on the event loop through
   * `processQueue`. Asked each time the queue starts while the device is active; while a
   * thread serves the queue, `processQueue` is not called for it.
   * @param index Queue index.
   * @returns The handler description, or `undefined`.
   */
  queueThread?(index: number): QueueThreadSpec | undefined;
  /** Release host resources for good. */
  remove?(): void;
  /**
   * Add the resources the device needs from its VMM to `requests` (seed
   * `get_resource_requirements`).
   * @param requests Where the needs are pushed.
   * @param useGenericIrq Whether the transport uses message-signalled interrupts (MSI-X).
   */
  getResourceRequirements?(requests: ResourceConstraint[], useGenericIrq: boolean): void;
  /**
   * Take the resources the VMM assigned (seed `set_resource`). A device with device memory
   * maps it here and returns its window, which the VMM inserts into the guest through its
   * {@linkcode VirtioRegionHandler} and the transport exposes as shared memory.
   * @param resources What was assigned.
   * @returns The device memory window, if the device has one.
   * @throws {ActivateError} When the resources do not fit the device.
   */
  setResource?(resources: DeviceResources): VirtioSharedMemoryList | undefined;
  /**
   * Take the guest's RAM (not in the seed): for a device that gives guest pages back to the host
   * (the balloon). The VMM calls it once, before the guest runs; a device without it never
   * learns where RAM is or how it is backed.
   * @param ram Where RAM is, and how to release the host pages behind part of it.
   */
  setGuestRam?(ram: GuestRam): void;
}

/**
 * Feature and configuration-space bookkeeping shared by devices
 * (dbs-virtio-devices `VirtioDeviceInfo`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { VirtioDeviceInfo } from "./device.ts";
 * const info = new VirtioDeviceInfo("demo", 1n << 32n, [256], new Uint8Array(8));
 * info.setAckedFeatures(1, 1);
 * info.setAckedFeatures(0, 0xffffffff); // bits never offered are dropped
 * assert.equal(info.ackedFeatures, 1n << 32n);
 * ```
 */
export class VirtioDeviceInfo {
  /** Name for logs. */
  readonly driverName: string;
  /** Features the device offers. */
  availFeatures: bigint;
  /** Features the driver acknowledged (always a subset of `availFeatures`). */
  ackedFeatures = 0n;
  /** Maximum size of each queue. */
  readonly queueSizes: readonly number[];
  /** The configuration space bytes. */
  configSpace: Uint8Array;

  /**
   * Create it.
   * @param driverName Name for logs.
   * @param availFeatures Features the device offers.
   * @param queueSizes Maximum size of each queue.
   * @param configSpace The configuration space bytes.
   */
  constructor(
    driverName: string,
    availFeatures: bigint,
    queueSizes: readonly number[],
    configSpace: Uint8Array,
  ) {
    this.driverName = driverName;
    this.availFeatures = availFeatures;
    this.queueSizes = queueSizes;
    this.configSpace = configSpace;
  }

  /**
   * One 32-bit page of the offered features.
   * @param page Page number.
   * @returns The bits (0 for pages past bit 63).
   */
  getAvailFeatures(page: number): number {
    if (!Number.isInteger(page) || page < 0 || page > 1) return 0;
    return Number((this.availFeatures >> BigInt(32 * page)) & 0xffffffffn);
  }

  /**
   * Acknowledge features of one page: they add to those acknowledged before (until `reset()`,
   * as in the seed), and bits never offered are dropped.
   * @param page Page number.
   * @param value The bits.
   */
  setAckedFeatures(page: number, value: number): void {
    if (!Number.isInteger(page) || page < 0 || page > 1) return;
    const bits = BigInt(value >>> 0) << BigInt(32 * page);
    this.ackedFeatures |= bits & this.availFeatures;
  }

  /** Whether feature `bit` was acknowledged. */
  hasFeature(bit: number): boolean {
    return (this.ackedFeatures & featureBit(bit)) !== 0n;
  }

  /**
   * Read configuration space.
   * @param offset Byte offset.
   * @param data Filled with the bytes.
   * @throws {VirtioError} `InvalidInput` when the range is outside the space.
   */
  readConfig(offset: number, data: Uint8Array): void {
    this.#check(offset, data.length);
    data.set(this.configSpace.subarray(offset, offset + data.length));
  }

  /**
   * Write configuration space.
   * @param offset Byte offset.
   * @param data The bytes.
   * @throws {VirtioError} `InvalidInput` when the range is outside the space.
   */
  writeConfig(offset: number, data: Uint8Array): void {
    this.#check(offset, data.length);
    this.configSpace.set(data, offset);
  }

  #check(offset: number, len: number): void {
    if (
      !Number.isSafeInteger(offset) || offset < 0 || len < 0 ||
      offset + len > this.configSpace.length
    ) {
      throw new VirtioError(
        "InvalidInput",
        `${this.driverName}: config access at ${offset} (+${len}) outside ${this.configSpace.length} bytes`,
      );
    }
  }

  /** Forget acknowledged features (device reset). */
  reset(): void {
    this.ackedFeatures = 0n;
  }
}

/**
 * A convenient base for devices: feature and config bookkeeping through a
 * {@linkcode VirtioDeviceInfo}, an explicit inactive/active state, activation
 * checks, reconfiguration without reset, and the reset template. Subclasses
 * implement `processQueue` and may override `onActivate`, `onReconfigure` and
 * `onReset`.
 */
export abstract class VirtioDeviceBase implements VirtioDevice {
  /** Feature and config bookkeeping. */
  protected readonly info: VirtioDeviceInfo;
  /** The activation config while active. */
  protected active: VirtioDeviceConfig | undefined;
  readonly #type: number;
  #queues: (VirtioQueueConfig | undefined)[] = [];

  /**
   * Create it.
   * @param type The device type (`TYPE_*`).
   * @param info Feature and configuration bookkeeping.
   */
  constructor(type: number, info: VirtioDeviceInfo) {
    this.#type = type;
    this.info = info;
  }

  /** The virtio device type. */
  deviceType(): number {
    return this.#type;
  }

  /** Maximum size of each queue. */
  queueMaxSizes(): readonly number[] {
    return this.info.queueSizes;
  }

  /**
   * One 32-bit page of offered features.
   * @param page Page number.
   * @returns The bits.
   */
  getAvailFeatures(page: number): number {
    return this.info.getAvailFeatures(page);
  }

  /**
   * Acknowledge one page of features (accumulating).
   * @param page Page number.
   * @param value The bits.
   */
  setAckedFeatures(page: number, value: number): void {
    this.info.setAckedFeatures(page, value);
  }

  /** Acknowledged features. */
  ackedFeatures(): bigint {
    return this.info.ackedFeatures;
  }

  /**
   * Read configuration space.
   * @param offset Byte offset.
   * @param data Filled with the bytes.
   */
  readConfig(offset: number, data: Uint8Array): void {
    this.info.readConfig(offset, data);
  }

  /**
   * Write configuration space; read-only unless a device overrides it.
   * @param offset Byte offset.
   * @param data The bytes.
   * @throws {VirtioError} `InvalidInput`: the space is read-only.
   */
  writeConfig(offset: number, data: Uint8Array): void {
    throw new VirtioError(
      "InvalidInput",
      `${this.info.driverName}: configuration space is read-only (write at ${offset}, ${data.length} bytes)`,
    );
  }

  /**
   * The resources every device needs: an interrupt line, or one MSI-X vector per queue plus
   * one for configuration changes.
   * @param requests Where the needs are pushed.
   * @param useGenericIrq Whether the transport uses MSI-X.
   */
  getResourceRequirements(requests: ResourceConstraint[], useGenericIrq: boolean): void {
    requests.push({ type: "LegacyIrq" });
    if (useGenericIrq) {
      requests.push({ type: "GenericIrq", size: this.info.queueSizes.length + 1 });
    }
  }

  /** Whether the device is serving. */
  get isActive(): boolean {
    return this.active !== undefined;
  }

  /**
   * Start serving.
   * @param config Memory, queues and notifiers.
   * @throws {ActivateError} When already active or the queues do not match.
   */
  activate(config: VirtioDeviceConfig): void {
    if (this.active !== undefined) {
      throw new ActivateError("InvalidParam", `${this.info.driverName} is already active`);
    }
    const byIndex = this.#checkQueues(config);
    this.onActivate(config);
    this.#queues = byIndex;
    this.active = config;
  }

  /**
   * Serve from now on with a new queue set or memory, keeping negotiated features and
   * configuration (not a reset). An inactive device is activated.
   * @param config The new memory and queues.
   * @throws {ActivateError} When the queues do not match.
   */
  reconfigure(config: VirtioDeviceConfig): void {
    if (this.active === undefined) return this.activate(config);
    // A stopped queue, even a required one, only means there is nothing to serve on it.
    const byIndex = this.#checkQueues(config, false);
    this.onReconfigure(config);
    this.#queues = byIndex;
    this.active = config;
  }

  #checkQueues(config: VirtioDeviceConfig, all = true): (VirtioQueueConfig | undefined)[] {
    const sizes = this.info.queueSizes;
    const byIndex: (VirtioQueueConfig | undefined)[] = new Array(sizes.length);
    for (const qc of config.queues) {
      if (!Number.isInteger(qc.index) || qc.index < 0 || qc.index >= sizes.length) {
        throw new ActivateError("InvalidQueueConfig", `no queue ${qc.index}`);
      }
      if (byIndex[qc.index] !== undefined) {
        throw new ActivateError("InvalidQueueConfig", `queue ${qc.index} given twice`);
      }
      byIndex[qc.index] = qc;
    }
    const required = all ? this.requiredQueues() : 0;
    for (let i = 0; i < required; i++) {
      if (byIndex[i] === undefined) {
        throw new ActivateError(
          "InvalidQueueConfig",
          `${this.info.driverName} needs queue ${i}, which is not ready`,
        );
      }
    }
    for (const qc of config.queues) {
      const q = qc.queue;
      if (q.size > sizes[qc.index]) {
        throw new ActivateError("InvalidQueueConfig", `queue ${qc.index} size ${q.size}`);
      }
      q.setFeatures(config.ackedFeatures);
      try {
        q.validate(config.memory);
      } catch (err) {
        throw new ActivateError("InvalidQueueConfig", `queue ${qc.index}: ${String(err)}`, {
          cause: err,
        });
      }
    }
    return byIndex;
  }

  /**
   * How many queues, from index 0, must be ready for activation (default: all).
   * @returns The count.
   */
  protected requiredQueues(): number {
    return this.info.queueSizes.length;
  }

  /**
   * The active queue with this index.
   * @param index Queue index.
   * @returns The queue config, or `undefined` when inactive or not set up.
   */
  protected queue(index: number): VirtioQueueConfig | undefined {
    return this.active === undefined ? undefined : this.#queues[index];
  }

  /** Stop serving and forget the negotiation. */
  reset(): void {
    const wasActive = this.active;
    this.active = undefined;
    this.#queues = [];
    this.info.reset();
    this.onReset(wasActive);
  }

  /**
   * Serve queue `index`, at most one budget's worth.
   * @param index Queue index.
   * @returns `true` when more work is pending.
   */
  abstract processQueue(index: number): boolean | void;

  /**
   * Hook run at the end of a successful activation checks, before the device
   * is marked active. Throw an {@linkcode ActivateError} to refuse.
   * @param _config The activation config.
   */
  protected onActivate(_config: VirtioDeviceConfig): void {}

  /**
   * Hook run when the queue set or memory changes without a reset, before the new config
   * takes effect. Throw an {@linkcode ActivateError} to refuse.
   * @param _config The new config.
   */
  protected onReconfigure(_config: VirtioDeviceConfig): void {}

  /**
   * Hook run on reset, after the device is marked inactive.
   * @param _wasActive The config the device was active with, if any.
   */
  protected onReset(_wasActive: VirtioDeviceConfig | undefined): void {}

  /**
   * Report an error to the transport.
   * @param err The error.
   */
  protected reportError(err: VirtioError): void {
    this.active?.onError(err);
  }
}
