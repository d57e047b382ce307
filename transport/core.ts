/**
 * The transport core: what every way of reaching a device shares. The device status state
 * machine (virtio 1.2 §2.1, §3.1.1), feature negotiation, queue set-up rules, activation and
 * deactivation, DEVICE_NEEDS_RESET, configuration access, and the serving of notified queues
 * with a bounded amount of work per pass. The virtio-mmio register file, the virtio-pci
 * capabilities and the vhost-user message stream each translate their own wire format into
 * calls on one {@linkcode TransportCore}.
 *
 * Starting or stopping a queue while the device runs (vhost-user ring stop/start around a VM
 * pause, VIRTIO_F_RING_RESET) is not a reset: the device is told of its new queue set through
 * {@linkcode VirtioDevice.reconfigure} and keeps its negotiated features and driver-written
 * configuration.
 *
 * @module
 */

import { clearImmediate, setImmediate } from "node:timers";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { SplitQueue } from "../queue/split.ts";
import { PackedQueue } from "../queue/packed.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import {
  ActivateError,
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FAILED,
  DEVICE_FEATURES_OK,
  DEVICE_INIT,
  DEVICE_NEEDS_RESET,
  featureBit,
  type InterruptNotifier,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_RING_RESET,
  VIRTIO_F_VERSION_1,
  type VirtioDevice,
  VirtioDeviceConfig,
  VirtioError,
  VirtioQueueConfig,
  type VirtioSharedMemoryList,
} from "../devices/device.ts";

/** What a driver (or a frontend speaking for it) did wrong, as the transport core sees it. */
export type TransportErrorCode =
  /** A status write that clears bits or skips a step of virtio 1.2 §3.1.1. */
  | "InvalidStatusTransition"
  /** FEATURES_OK refused: the driver accepted features the device did not offer. */
  | "FeaturesRejected"
  /** Driver features written outside the negotiation window. */
  | "FeaturesLocked"
  /** A queue set up while it is live, or a queue that does not exist. */
  | "InvalidQueueAccess"
  /** A notification for a queue that does not exist. */
  | "InvalidNotify"
  /** The device refused activation; the device is now in NEEDS_RESET. */
  | "ActivationFailed"
  /** A configuration space access the device refused. */
  | "ConfigAccess"
  /** The device reported an error while serving. */
  | "DeviceError";

/** A driver-side misuse of a transport, or a device failure it caused. */
export class TransportError extends Error {
  /** Which rule was broken. */
  readonly code: TransportErrorCode;

  /**
   * Create it.
   * @param code Which rule was broken.
   * @param message Details.
   * @param options Standard error options (`cause`).
   */
  constructor(code: TransportErrorCode, message: string, options?: ErrorOptions) {
    super(`${code}: ${message}`, options);
    this.name = "TransportError";
    this.code = code;
  }
}

/** Options of {@linkcode TransportCore}. */
export interface TransportCoreOptions {
  /** Guest memory the queues live in; a vhost-user backend sets it later with `setMemory`. */
  memory?: GuestMemory;
  /**
   * Whether the driver is a virtio 1.x driver (default true). A legacy (virtio 0.9.5) driver
   * may set DRIVER_OK without FEATURES_OK and is not offered VIRTIO_F_VERSION_1.
   */
  modern?: boolean;
  /** Features this transport never offers on top of the device's (e.g. ones it cannot carry). */
  maskedFeatures?: bigint;
  /** The used-buffer notifier of queue `index`. */
  queueNotifier: (index: number) => InterruptNotifier;
  /** Signals a configuration change (also used for DEVICE_NEEDS_RESET, virtio 1.2 §2.1.2). */
  configNotifier: InterruptNotifier;
  /** Receives every misuse and device error; nothing is ever thrown into the transport. */
  onError?: (err: TransportError) => void;
  /** The device's shared memory window (from `setResource`), handed over on activation. */
  shmRegions?: VirtioSharedMemoryList;
  /**
   * Treat a device that refuses activation for want of queues (`InvalidQueueConfig`) as not
   * ready yet rather than broken (default false): for transports whose queues start one at a
   * time after DRIVER_OK, such as vhost-user. Activation is tried again as queues start.
   */
  deferIncompleteActivation?: boolean;
  /**
   * Offer VIRTIO_F_RING_PACKED (virtio 1.2 §2.8) to modern drivers (default true); the queues
   * become packed queues when the driver accepts it.
   */
  ringPacked?: boolean;
  /**
   * Transport features offered on top of the device's (to modern drivers): VIRTIO_F_RING_RESET
   * where the transport has a per-queue reset register, VIRTIO_F_NOTIFICATION_DATA where its
   * notifications can carry data (virtio-mmio, virtio-pci; not vhost-user's eventfds).
   */
  transportFeatures?: bigint;
  /** Called once each time the device enters DEVICE_NEEDS_RESET (e.g. to signal err fds). */
  onNeedsReset?: (err: VirtioError | ActivateError) => void;
}

const KNOWN_STATUS = DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK;
const ALL_PAGES = 0xffffffffn;

/**
 * The shared half of every transport: one device, its queues and its status.
 *
 * A transport calls `setStatus` for status writes, `writeDriverFeatures` (one 32-bit page) or
 * `setDriverFeatures` (all at once) during negotiation, `queueForSetup` before it writes a
 * queue's size and addresses, `notify` when the driver kicks a queue, and `readConfig` /
 * `writeConfig` for the device configuration space. Errors go to `onError`; nothing throws.
 *
 * @example Negotiate and activate an entropy device by hand
 * ```ts
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * import { DEVICE_ACKNOWLEDGE, DEVICE_DRIVER, DEVICE_DRIVER_OK, DEVICE_FEATURES_OK } from "../devices/device.ts";
 * import { TransportCore } from "./core.ts";
 * const memory = GuestMemory.create(1 << 20);
 * const errors: Error[] = [];
 * const core = new TransportCore(new RngDevice(), {
 *   memory,
 *   queueNotifier: () => ({ notify() {} }),
 *   configNotifier: { notify() {} },
 *   onError: (e) => errors.push(e),
 * });
 * core.setStatus(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
 * core.setDriverFeatures(core.offeredFeatures());
 * core.setStatus(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
 * const q = core.queueForSetup(0)!;
 * q.size = 16;
 * q.descTable = 0x1000;
 * q.availRing = 0x2000;
 * q.usedRing = 0x3000;
 * q.ready = true;
 * core.setStatus(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK);
 * console.assert(core.isActive && errors.length === 0);
 * ```
 */
export class TransportCore {
  /** The device. */
  readonly device: VirtioDevice;
  /** The queues, by index; owned by the core. */
  readonly queues: Virtqueue[];
  #modern: boolean;
  readonly #masked: bigint;
  readonly #queueNotifier: (index: number) => InterruptNotifier;
  readonly #configNotifier: InterruptNotifier;
  readonly #onError: (err: TransportError) => void;
  readonly #onNeedsReset: (err: VirtioError | ActivateError) => void;
  readonly #shm: VirtioSharedMemoryList | undefined;
  readonly #ctrlIndex: number;
  readonly #defer: boolean;
  readonly #ringPacked: boolean;
  readonly #transportFeatures: bigint;
  readonly #notifiers: (InterruptNotifier | undefined)[];
  // Continuations of passes that stopped at their budget, by queue index.
  readonly #continuations: (ReturnType<typeof setImmediate> | undefined)[];
  readonly #notifyData: (number | undefined)[];
  #memory: GuestMemory | undefined;
  #status = 0;
  #driverFeatures = 0n;
  #active = false;
  #configGeneration = 0;
  // Bumped whenever the device stops serving, so a stale continuation does nothing.
  #epoch = 0;

  /**
   * Create it; the device stays untouched until the driver negotiates.
   * @param device The device.
   * @param options Memory, notifiers, legacy mode and hooks.
   */
  constructor(device: VirtioDevice, options: TransportCoreOptions) {
    this.device = device;
    this.#memory = options.memory;
    this.#modern = options.modern ?? true;
    this.#masked = options.maskedFeatures ?? 0n;
    this.#queueNotifier = options.queueNotifier;
    this.#configNotifier = options.configNotifier;
    this.#onError = options.onError ?? (() => {});
    this.#onNeedsReset = options.onNeedsReset ?? (() => {});
    this.#shm = options.shmRegions;
    this.#defer = options.deferIncompleteActivation ?? false;
    this.#ringPacked = options.ringPacked ?? true;
    this.#transportFeatures = options.transportFeatures ?? 0n;
    // Data queues, then the control queue if the device has one (seed `ctrl_queue_max_sizes`).
    const sizes = [...device.queueMaxSizes()];
    const ctrl = device.ctrlQueueMaxSizes?.() ?? 0;
    this.#ctrlIndex = ctrl > 0 ? sizes.length : -1;
    if (ctrl > 0) sizes.push(ctrl);
    this.queues = sizes.map((n) => new SplitQueue(n));
    this.#notifiers = this.queues.map(() => undefined);
    this.#continuations = this.queues.map(() => undefined);
    this.#notifyData = this.queues.map(() => undefined);
  }

  /** Index of the control queue (after the data queues), or -1 when the device has none. */
  get ctrlQueueIndex(): number {
    return this.#ctrlIndex;
  }

  /** The device status (virtio 1.2 §2.1). */
  get status(): number {
    return this.#status;
  }

  /** Whether the device has been activated and not reset since. */
  get isActive(): boolean {
    return this.#active;
  }

  /** Whether the driver speaks virtio 1.x on this transport. */
  get modern(): boolean {
    return this.#modern;
  }

  /**
   * Switch between the virtio 1.x and the legacy interface (a transitional PCI device, whose
   * driver picks one). Only while the device is reset (status 0); otherwise ignored.
   * @param modern Whether the driver uses the virtio 1.x interface.
   * @returns Whether the mode is now `modern`.
   */
  setModern(modern: boolean): boolean {
    if (this.#status === 0) this.#modern = modern;
    return this.#modern === modern;
  }

  /** The configuration generation (bumped at each configuration change). */
  get configGeneration(): number {
    return this.#configGeneration;
  }

  /** Guest memory, once known. */
  get memory(): GuestMemory | undefined {
    return this.#memory;
  }

  /** The features the driver wrote (not yet masked to the offer). */
  get driverFeatures(): bigint {
    return this.#driverFeatures;
  }

  // -------------------------------------------------------------------------------------------
  // Features

  /**
   * One 32-bit page of the features offered on this transport.
   * @param page Page number.
   * @returns The bits (0 past page 1).
   */
  offeredPage(page: number): number {
    if (!Number.isInteger(page) || page < 0 || page > 1) return 0;
    let all = BigInt(this.device.getAvailFeatures(page) >>> 0) << BigInt(32 * page);
    // Ring layouts are the transport's business: the packed ring is offered on top.
    if (this.#ringPacked) all |= featureBit(VIRTIO_F_RING_PACKED);
    all |= this.#transportFeatures;
    return Number((this.#offerMask(all) >> BigInt(32 * page)) & ALL_PAGES);
  }

  /** All features offered on this transport. */
  offeredFeatures(): bigint {
    return BigInt(this.offeredPage(0)) | (BigInt(this.offeredPage(1)) << 32n);
  }

  #offerMask(features: bigint): bigint {
    let f = features & ~this.#masked;
    // A legacy device must not offer VIRTIO_F_VERSION_1 (virtio 1.2 §2.2.3), nor any of the
    // transport features that came with it.
    if (!this.#modern) {
      f &= ~(featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_RING_PACKED) |
        this.#transportFeatures);
    }
    return f;
  }

  #negotiating(): boolean {
    const s = this.#status;
    return (s & DEVICE_DRIVER) !== 0 && (s & (DEVICE_FEATURES_OK | DEVICE_DRIVER_OK)) === 0;
  }

  /**
   * The driver wrote one 32-bit page of the features it accepts (a register write). Allowed
   * only after DRIVER and before FEATURES_OK; bits past page 1 make FEATURES_OK fail.
   * @param page Page number.
   * @param value The bits.
   * @returns Whether the write was taken.
   */
  writeDriverFeatures(page: number, value: number): boolean {
    if (!this.#negotiating()) {
      this.#error(
        "FeaturesLocked",
        "driver features may only be written after DRIVER and before FEATURES_OK",
      );
      return false;
    }
    if (!Number.isInteger(page) || page < 0 || page > 1) {
      if (value !== 0) this.#driverFeatures |= 1n << 64n; // a bit no device can offer
      return true;
    }
    const shift = BigInt(32 * page);
    this.#driverFeatures = (this.#driverFeatures & ~(ALL_PAGES << shift)) |
      (BigInt(value >>> 0) << shift);
    return true;
  }

  /**
   * The driver accepts exactly `features` (a transport that carries all 64 bits at once,
   * such as vhost-user). Same window as {@linkcode TransportCore.writeDriverFeatures}.
   * @param features The accepted bits.
   * @returns Whether the write was taken.
   */
  setDriverFeatures(features: bigint): boolean {
    if (!this.#negotiating()) {
      this.#error("FeaturesLocked", "driver features set outside the negotiation window");
      return false;
    }
    this.#driverFeatures = BigInt.asUintN(128, features);
    return true;
  }

  #featuresProblem(): string | undefined {
    const acked = this.#driverFeatures;
    const extra = acked & ~this.offeredFeatures();
    if (extra !== 0n) {
      return `driver accepted features 0x${extra.toString(16)} the device did not offer`;
    }
    if (this.#modern && (acked & featureBit(VIRTIO_F_VERSION_1)) === 0n) {
      return "driver did not accept VIRTIO_F_VERSION_1";
    }
    return undefined;
  }

  // Hand the accepted features to the device page by page (the seed's accumulating API).
  #ackFeatures(): void {
    const f = this.#driverFeatures & this.offeredFeatures();
    this.device.setAckedFeatures(0, Number(f & ALL_PAGES));
    this.device.setAckedFeatures(1, Number((f >> 32n) & ALL_PAGES));
    this.#useFormat((f & featureBit(VIRTIO_F_RING_PACKED)) !== 0n ? "packed" : "split");
  }

  // The driver chose the ring layout with its features (before it sets queues up).
  #useFormat(format: "split" | "packed"): void {
    for (let i = 0; i < this.queues.length; i++) {
      const q = this.queues[i];
      if (q.format === format) continue;
      this.queues[i] = format === "packed" ? new PackedQueue(q.maxSize) : new SplitQueue(q.maxSize);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Status

  /**
   * The driver wrote the device status. 0 resets; FAILED stops serving; otherwise each step of
   * virtio 1.2 §3.1.1 needs the ones before it, bits are never cleared, FEATURES_OK is refused
   * (left clear) when the accepted features are not acceptable, and DRIVER_OK activates.
   * @param value The new status.
   * @returns Whether the write was accepted as a whole.
   */
  setStatus(value: number): boolean {
    if (value === 0) {
      this.reset();
      return true;
    }
    const old = this.#status;
    // The driver never sets NEEDS_RESET; it is the device's bit.
    const requested = value & ~DEVICE_NEEDS_RESET;
    const keep = old & ~DEVICE_NEEDS_RESET;
    if ((requested & keep) !== keep) {
      this.#error("InvalidStatusTransition", `status 0x${value.toString(16)} clears bits`);
      return false;
    }
    const added = requested & ~keep;
    if (added & DEVICE_FAILED) {
      // The driver gave up (virtio 1.2 §2.1): stop serving until reset.
      this.#status |= DEVICE_FAILED;
      this.#deactivate();
      return true;
    }
    if (added & ~KNOWN_STATUS) {
      this.#error("InvalidStatusTransition", `unknown status bits 0x${value.toString(16)}`);
      return false;
    }
    const after = keep | added;
    const needs = (bit: number, prereq: number) =>
      (added & bit) === 0 || (after & prereq) === prereq;
    if (
      !needs(DEVICE_DRIVER, DEVICE_ACKNOWLEDGE) ||
      !needs(DEVICE_FEATURES_OK, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER) ||
      !needs(
        DEVICE_DRIVER_OK,
        DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | (this.#modern ? DEVICE_FEATURES_OK : 0),
      ) ||
      (old & DEVICE_FAILED) !== 0
    ) {
      this.#error(
        "InvalidStatusTransition",
        `0x${old.toString(16)} -> 0x${value.toString(16)} skips a step`,
      );
      return false;
    }
    if (added & DEVICE_FEATURES_OK) {
      const problem = this.#featuresProblem();
      if (problem !== undefined) {
        // Leave FEATURES_OK clear: the driver re-reads the status and sees the refusal.
        this.#status = (after & ~(DEVICE_FEATURES_OK | DEVICE_DRIVER_OK)) |
          (old & DEVICE_NEEDS_RESET);
        this.#error("FeaturesRejected", problem);
        return false;
      }
      this.#ackFeatures();
    } else if (!this.#modern && (added & DEVICE_DRIVER_OK) && (old & DEVICE_FEATURES_OK) === 0) {
      // A legacy driver goes straight to DRIVER_OK and cannot be refused: the features it
      // accepted take effect now, those never offered dropped (virtio 1.2 §2.2.3 legacy).
      this.#ackFeatures();
    }
    this.#status = after | (old & DEVICE_NEEDS_RESET);
    if (added & DEVICE_DRIVER_OK) this.#activate();
    return true;
  }

  // -------------------------------------------------------------------------------------------
  // Queues

  /**
   * The queue with this index, if the driver may set it up now: it exists, is not ready, and
   * the device is not live (before DRIVER_OK). Otherwise reports `InvalidQueueAccess`.
   * @param index Queue index.
   * @returns The queue to configure, or `undefined`.
   */
  queueForSetup(index: number): Virtqueue | undefined {
    const q = this.queues[index];
    if (!Number.isInteger(index) || q === undefined) {
      this.#error("InvalidQueueAccess", `queue ${index} does not exist`);
      return undefined;
    }
    // After DRIVER_OK only a queue reset with VIRTIO_F_RING_RESET frees a queue for set-up
    // (virtio 1.2 §2.6.1.2).
    const live = (this.#status & DEVICE_DRIVER_OK) !== 0 && !this.negotiated(VIRTIO_F_RING_RESET);
    if (q.ready || live) {
      this.#error("InvalidQueueAccess", `queue ${index} is live`);
      return undefined;
    }
    return q;
  }

  /**
   * Whether the driver accepted feature `bit` (device or transport feature), once
   * FEATURES_OK (or a legacy driver's DRIVER_OK) made the features final.
   * @param bit Feature bit.
   * @returns The answer.
   */
  negotiated(bit: number): boolean {
    if ((this.#status & (DEVICE_FEATURES_OK | DEVICE_DRIVER_OK)) === 0) return false;
    return (this.#driverFeatures & this.offeredFeatures() & featureBit(bit)) !== 0n;
  }

  /**
   * The driver enabled queue `index` (QueueReady, queue_enable). Before DRIVER_OK this marks
   * it ready; after it (a queue re-enabled after a per-queue reset, VIRTIO_F_RING_RESET) the
   * device starts serving it without a reset.
   * @param index Queue index.
   * @returns Whether the queue is ready afterwards.
   */
  enableQueue(index: number): boolean {
    const q = this.queueForSetup(index);
    if (q === undefined) return false;
    if ((this.#status & DEVICE_DRIVER_OK) === 0) {
      q.ready = true;
      return true;
    }
    try {
      this.startQueue(index);
      return true;
    } catch (err) {
      this.#error("InvalidQueueAccess", errorMessage(err), err);
      return false;
    }
  }

  /**
   * Reset queue `index` on its own (virtio 1.2 §2.6.1: VIRTIO_F_RING_RESET): the device stops
   * serving it and forgets its state; the driver may set it up and enable it again.
   * @param index Queue index.
   * @returns Whether the reset happened (the feature is negotiated and the queue exists).
   */
  resetQueue(index: number): boolean {
    const q = this.queues[index];
    if (!Number.isInteger(index) || q === undefined) {
      this.#error("InvalidQueueAccess", `queue ${index} does not exist`);
      return false;
    }
    if (!this.negotiated(VIRTIO_F_RING_RESET)) {
      this.#error("InvalidQueueAccess", "queue reset without VIRTIO_F_RING_RESET");
      return false;
    }
    this.stopQueue(index);
    q.reset();
    this.#notifyData[index] = undefined;
    return true;
  }

  /**
   * Start queue `index` while the device runs (a vhost-user ring started, a queue re-enabled
   * after a per-queue reset). The queue must be configured; before activation this only marks
   * it ready. The device keeps its negotiated state: it is reconfigured, not reset.
   * @param index Queue index.
   * @throws {VirtioError} `InvalidInput` when the rings are not valid in guest memory.
   */
  startQueue(index: number): void {
    const q = this.#existing(index);
    q.ready = true;
    q.setFeatures(this.device.ackedFeatures());
    if (this.#memory !== undefined) {
      try {
        q.validate(this.#memory);
      } catch (err) {
        q.ready = false;
        throw new VirtioError("InvalidInput", `queue ${index}: ${errorMessage(err)}`, {
          cause: err,
        });
      }
    }
    if (this.#active) this.#reconfigure();
  }

  /**
   * Stop queue `index` without resetting the device (vhost-user GET_VRING_BASE, VM pause).
   * Its indices stay readable for the frontend; the device no longer serves it.
   * @param index Queue index.
   */
  stopQueue(index: number): void {
    const q = this.#existing(index);
    if (!q.ready) return;
    q.ready = false;
    this.#cancel(index);
    if (this.#active) this.#reconfigure();
  }

  #existing(index: number): Virtqueue {
    const q = this.queues[index];
    if (!Number.isInteger(index) || q === undefined) {
      throw new VirtioError("InvalidInput", `queue ${index} does not exist`);
    }
    return q;
  }

  /**
   * Replace guest memory (a new vhost-user memory table). A running device is reconfigured
   * onto it; queues whose rings no longer translate are stopped and reported.
   * @param memory The new guest memory.
   */
  setMemory(memory: GuestMemory): void {
    this.#memory = memory;
    for (let i = 0; i < this.queues.length; i++) {
      const q = this.queues[i];
      if (!q.ready) continue;
      try {
        q.validate(memory);
      } catch (err) {
        q.ready = false;
        this.#cancel(i);
        this.#error("InvalidQueueAccess", `queue ${i} after a memory change: ${errorMessage(err)}`);
      }
    }
    if (this.#active) this.#reconfigure();
  }

  /**
   * Forget guest memory (the frontend went away): the device stops serving until memory and
   * queues are given again, but is not reset.
   */
  clearMemory(): void {
    this.#memory = undefined;
    for (let i = 0; i < this.queues.length; i++) this.#cancel(i);
    this.#epoch++;
  }

  // -------------------------------------------------------------------------------------------
  // Activation

  /**
   * Activate now if DRIVER_OK is set and the device is not active (a transport whose DRIVER_OK
   * arrives before memory or queues, such as vhost-user, calls this when they arrive).
   * @returns Whether the device is active afterwards.
   */
  tryActivate(): boolean {
    if (!this.#active && (this.#status & DEVICE_DRIVER_OK) !== 0) this.#activate();
    return this.#active;
  }

  #config(): VirtioDeviceConfig | undefined {
    const memory = this.#memory;
    if (memory === undefined) return undefined;
    const queues: VirtioQueueConfig[] = [];
    let ctrlQueue: VirtioQueueConfig | undefined;
    this.queues.forEach((q, i) => {
      if (!q.ready) return;
      const notifier = this.#notifiers[i] ??= this.#queueNotifier(i);
      const qc = new VirtioQueueConfig(i, q, notifier);
      if (i === this.#ctrlIndex) ctrlQueue = qc;
      else queues.push(qc);
    });
    return new VirtioDeviceConfig({
      memory,
      queues,
      ctrlQueue,
      deviceChangeNotifier: this.#deviceNotifier,
      ackedFeatures: this.device.ackedFeatures(),
      shmRegions: this.#shm,
      onError: (err) => this.deviceError(err),
    });
  }

  #activate(): void {
    if ((this.#status & (DEVICE_NEEDS_RESET | DEVICE_FAILED)) !== 0) return;
    const config = this.#config();
    if (config === undefined) return;
    try {
      this.device.activate(config);
      this.#active = true;
      this.#epoch++;
    } catch (err) {
      if (this.#defer && err instanceof ActivateError && err.kind === "InvalidQueueConfig") {
        return; // not every queue it needs has started yet
      }
      const e = err instanceof ActivateError
        ? err
        : new ActivateError("InternalError", errorMessage(err), { cause: err });
      this.#needsReset(e);
      this.#error("ActivationFailed", e.message, e);
    }
  }

  #reconfigure(): void {
    const config = this.#config();
    if (config === undefined) return;
    this.#epoch++;
    try {
      if (this.device.reconfigure !== undefined) {
        this.device.reconfigure(config);
      } else {
        // A device without reconfigure can only be restarted (and loses driver-written state).
        this.device.reset();
        this.#ackFeatures();
        this.device.activate(config);
      }
    } catch (err) {
      this.#active = false;
      const e = err instanceof ActivateError
        ? err
        : new ActivateError("InternalError", errorMessage(err), { cause: err });
      this.#needsReset(e);
      this.#error("ActivationFailed", e.message, e);
    }
  }

  #deactivate(): void {
    for (let i = 0; i < this.queues.length; i++) this.#cancel(i);
    this.#epoch++;
    if (this.#active) {
      this.#active = false;
      this.device.reset();
    }
  }

  /** Reset device and queues to their initial state (the driver wrote 0 to the status). */
  reset(): void {
    this.#deactivate();
    // A device that was never activated still forgets its negotiation.
    this.device.reset();
    this.#useFormat("split");
    for (const q of this.queues) q.reset();
    this.#status = DEVICE_INIT;
    this.#driverFeatures = 0n;
    this.#notifyData.fill(undefined);
  }

  // -------------------------------------------------------------------------------------------
  // Serving

  /**
   * The driver notified queue `index`. The device serves it; when the pass stops at its budget
   * with buffers left, the core continues on a later turn of the event loop, so other queues
   * and the control channel are served in between. Ignored before activation, after
   * NEEDS_RESET or FAILED, and for a queue that is not ready.
   * @param index Queue index.
   * @param data With VIRTIO_F_NOTIFICATION_DATA, the notification's upper 16 bits.
   */
  notify(index: number, data?: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.queues.length) {
      this.#error("InvalidNotify", `notify for queue ${index}`);
      return;
    }
    if (data !== undefined) {
      // virtio 1.2 §2.9: with VIRTIO_F_NOTIFICATION_DATA the driver says where its next
      // available entry goes. A hint only: the ring itself is always what is served.
      this.#notifyData[index] = data;
    }
    this.#serve(index);
  }

  /**
   * The data of the last notification of queue `index` (next_off in bits 0–14, next_wrap in
   * bit 15), when VIRTIO_F_NOTIFICATION_DATA is in use.
   * @param index Queue index.
   * @returns The data, or `undefined`.
   */
  notificationData(index: number): number | undefined {
    return this.#notifyData[index];
  }

  #serve(index: number): void {
    if (!this.#active || (this.#status & (DEVICE_NEEDS_RESET | DEVICE_FAILED)) !== 0) return;
    if (!this.queues[index].ready) return;
    let more: boolean | void;
    try {
      more = this.device.processQueue(index);
    } catch (err) {
      this.deviceError(VirtioError.from(err));
      return;
    }
    if (more === true && this.#continuations[index] === undefined) {
      const epoch = this.#epoch;
      // setImmediate, not setTimeout(0): a chain of timers each set from the previous one is
      // clamped to 4 ms after five levels (HTML timers, which Deno and Bun follow), which
      // held a queue under sustained load to one pass per ~3 ms.
      this.#continuations[index] = setImmediate(() => {
        this.#continuations[index] = undefined;
        if (this.#epoch === epoch) this.#serve(index);
      });
    }
  }

  /** Whether a pass of queue `index` is waiting for its turn. */
  hasContinuation(index: number): boolean {
    return this.#continuations[index] !== undefined;
  }

  #cancel(index: number): void {
    const t = this.#continuations[index];
    if (t !== undefined) clearImmediate(t);
    this.#continuations[index] = undefined;
  }

  /**
   * A device error while serving: reported, and with `needsReset` the device enters
   * DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2).
   * @param err The error.
   */
  deviceError(err: VirtioError): void {
    if (err.needsReset) this.#needsReset(err);
    this.#error("DeviceError", err.message, err);
  }

  // virtio 1.2 §2.1.2: set NEEDS_RESET and, once DRIVER_OK is set, signal a config change.
  #needsReset(err: VirtioError | ActivateError): void {
    if ((this.#status & DEVICE_NEEDS_RESET) !== 0) return;
    this.#status |= DEVICE_NEEDS_RESET;
    for (let i = 0; i < this.queues.length; i++) this.#cancel(i);
    this.#epoch++;
    this.#onNeedsReset(err);
    if ((this.#status & DEVICE_DRIVER_OK) !== 0) this.configChanged();
  }

  // -------------------------------------------------------------------------------------------
  // Configuration space

  // The device's configuration changes reach the driver through the core (generation bump).
  readonly #deviceNotifier: InterruptNotifier = { notify: () => this.configChanged() };

  /** Bump the configuration generation and signal the driver. */
  configChanged(): void {
    this.#configGeneration = (this.#configGeneration + 1) >>> 0;
    this.#configNotifier.notify();
  }

  /**
   * Read the device configuration space; a refused access reads as zeroes and is reported.
   * @param offset Byte offset.
   * @param data Filled with the bytes.
   * @returns Whether the device accepted the access.
   */
  readConfig(offset: number, data: Uint8Array): boolean {
    try {
      this.device.readConfig(offset, data);
      return true;
    } catch (err) {
      data.fill(0);
      this.#error("ConfigAccess", errorMessage(err), err);
      return false;
    }
  }

  /**
   * Write the device configuration space; a refused access is ignored and reported.
   * @param offset Byte offset.
   * @param data The bytes.
   * @returns Whether the device accepted the write.
   */
  writeConfig(offset: number, data: Uint8Array): boolean {
    try {
      this.device.writeConfig(offset, data);
      return true;
    } catch (err) {
      this.#error("ConfigAccess", errorMessage(err), err);
      return false;
    }
  }

  #error(code: TransportErrorCode, message: string, cause?: unknown): void {
    this.#onError(new TransportError(code, message, { cause }));
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
