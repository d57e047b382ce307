/**
 * The device framework: what every virtio device offers a transport, in the
 * shape of the dbs-virtio-devices API.
 *
 * @module
 */

import { type GuestMemory, GuestMemoryError } from "../memory/guest_memory.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import { QueueError } from "../queue/error.ts";
import type { SplitQueue } from "../queue/split.ts";

// ---------------------------------------------------------------------------
// Device status bits (virtio 1.2 §2.1)

/** Initial state after device initialization or reset. */
export const DEVICE_INIT = 0x00;
/** The guest OS has found the device and recognised it as a valid virtio device. */
export const DEVICE_ACKNOWLEDGE = 0x01;
/** The guest OS knows how to drive the device. */
export const DEVICE_DRIVER = 0x02;
/** The driver is set up and ready to drive the device. */
export const DEVICE_DRIVER_OK = 0x04;
/** The driver acknowledged all features it understands; feature negotiation is complete. */
export const DEVICE_FEATURES_OK = 0x08;
/** The device experienced an error from which it cannot recover. */
export const DEVICE_NEEDS_RESET = 0x40;
/** Something went wrong in the guest, and it has given up on the device. */
export const DEVICE_FAILED = 0x80;

// ---------------------------------------------------------------------------
// Device types (virtio 1.2 §5)

/** Virtio network card device. */
export const TYPE_NET = 1;
/** Virtio block device. */
export const TYPE_BLOCK = 2;
/** Virtio console device. */
export const TYPE_CONSOLE = 3;
/** Virtio entropy (rng) device. */
export const TYPE_RNG = 4;
/** Virtio balloon device. */
export const TYPE_BALLOON = 5;
/** Virtio vsock device. */
export const TYPE_VSOCK = 19;
/** Virtio mem device. */
export const TYPE_MEM = 24;
/** Virtio-fs device. */
export const TYPE_VIRTIO_FS = 26;
/** Virtio pmem device. */
export const TYPE_PMEM = 27;

// ---------------------------------------------------------------------------
// Interrupt status bits and other constants

/** Interrupt status bit: data available in a used ring. */
export const VIRTIO_INTR_VRING = 0x01;
/** Interrupt status bit: device configuration changed. */
export const VIRTIO_INTR_CONFIG = 0x02;
/** Page size of legacy virtio devices (4 KiB). */
export const VIRTIO_LEGACY_PAGE_SIZE = 4096;

/** Feature bit: the device complies with virtio 1.0 or later (virtio 1.2 §6). */
export const VIRTIO_F_VERSION_1 = 32;
/** Feature bit: the device is behind an IOMMU / has platform access restrictions. */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Feature bit: packed virtqueue layout. */
export const VIRTIO_F_RING_PACKED = 34;
/** Feature bit: the driver passes extra data in its notifications. */
export const VIRTIO_F_NOTIFICATION_DATA = 38;
/** Feature bit: individual virtqueues can be reset. */
export const VIRTIO_F_RING_RESET = 40;

/**
 * Version of the virtio specification a device follows, as used by PCI devices.
 */
export const SpecVersion = {
  /** Legacy (virtio 0.9.5). */
  V0_95: 0,
  /** Virtio 1.0. */
  V1_0: 1,
  /** Virtio 1.1 and later. */
  V1_1: 2,
} as const;
/** A value of {@linkcode SpecVersion}. */
export type SpecVersion = typeof SpecVersion[keyof typeof SpecVersion];

/** The bit for feature number `bit`, as a bigint mask. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

// ---------------------------------------------------------------------------
// Errors

/** Why {@linkcode VirtioDevice.activate} failed. */
export type ActivateErrorKind =
  /** A parameter is out of range or inconsistent. */
  | "InvalidParam"
  /** The device is already active. */
  | "AlreadyActive"
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
 * import { createDeviceChangeNotifier, InterruptStatus, VIRTIO_INTR_CONFIG } from "./device.ts";
 * const status = new InterruptStatus();
 * let raised = 0;
 * createDeviceChangeNotifier(() => raised++, status).notify();
 * if (status.value !== VIRTIO_INTR_CONFIG || raised !== 1) throw new Error("unreachable");
 * ```
 */
export function createDeviceChangeNotifier(
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

// ---------------------------------------------------------------------------
// Shared memory regions (virtio 1.2 §2.10)

/** Device memory shared with the guest, as seen from both sides. */
export interface VirtioSharedMemory {
  /** Host address of the mapping (0 when it only exists as a buffer). */
  hostAddr: bigint;
  /** Guest-physical address of the region. */
  guestAddr: number;
}

/** One shared memory region of a device, identified by its shmid. */
export interface VirtioSharedMemoryRegion {
  /** The region id the driver selects (virtio-mmio SHMSel, PCI cap id). */
  id: number;
  /** Offset from the start of the list's window. */
  offset: number;
  /** Length in bytes. */
  len: number;
}

/** The shared memory window of a device and the regions carved from it. */
export class VirtioSharedMemoryList {
  /** Host address of the window. */
  hostAddr: bigint;
  /** Guest-physical address of the window. */
  guestAddr: number;
  /** Length of the window in bytes. */
  len: number;
  /** Memory slot flags for the hypervisor (e.g. KVM_MEM_READONLY). */
  regionFlags: number;
  /** The regions, by id. */
  regions: VirtioSharedMemoryRegion[];
  /** The window's bytes, when the host can reach them. */
  buffer: ArrayBuffer | SharedArrayBuffer | undefined;

  /**
   * Create it.
   * @param options Where the window is and what it holds.
   */
  constructor(options: {
    hostAddr?: bigint;
    guestAddr: number;
    len: number;
    regionFlags?: number;
    regions?: VirtioSharedMemoryRegion[];
    buffer?: ArrayBuffer | SharedArrayBuffer;
  }) {
    this.hostAddr = options.hostAddr ?? 0n;
    this.guestAddr = options.guestAddr;
    this.len = options.len;
    this.regionFlags = options.regionFlags ?? 0;
    this.regions = options.regions ?? [];
    this.buffer = options.buffer;
  }

  /**
   * The region with shmid `id`.
   * @param id The shmid.
   * @returns The region, or `undefined`.
   */
  find(id: number): VirtioSharedMemoryRegion | undefined {
    return this.regions.find((r) => r.id === id);
  }
}

/**
 * The VMM's hook for devices that expose device memory to the guest (DAX of
 * virtio-fs, pmem): it maps a window into guest-physical address space.
 */
export interface VirtioRegionHandler {
  /**
   * Map a device memory window into the guest.
   * @param region The window.
   */
  insertRegion(region: VirtioSharedMemoryList): void;
}

// ---------------------------------------------------------------------------
// Activation

/** A queue handed to a device on activation. */
export class VirtioQueueConfig {
  /** Queue index. */
  readonly index: number;
  /** The queue, configured by the driver. */
  readonly queue: SplitQueue;
  /** Signals used buffers to the driver. */
  readonly notifier: InterruptNotifier;

  /**
   * Create it.
   * @param index Queue index.
   * @param queue The configured queue.
   * @param notifier Used-buffer notifier.
   */
  constructor(index: number, queue: SplitQueue, notifier: InterruptNotifier) {
    this.index = index;
    this.queue = queue;
    this.notifier = notifier;
  }
}

/** Everything a device needs once the driver set DRIVER_OK. */
export class VirtioDeviceConfig {
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** The queues, by index. */
  readonly queues: VirtioQueueConfig[];
  /** Signals configuration changes to the driver. */
  readonly deviceChangeNotifier: InterruptNotifier;
  /** Features the driver acknowledged. */
  readonly ackedFeatures: bigint;
  /** The device's shared memory window, if it has one. */
  readonly shmRegions: VirtioSharedMemoryList | undefined;
  /** Called for every error while serving; the transport sets NEEDS_RESET when asked. */
  readonly onError: (err: VirtioError) => void;

  /**
   * Create it.
   * @param options The parts of the configuration.
   */
  constructor(options: {
    memory: GuestMemory;
    queues: VirtioQueueConfig[];
    deviceChangeNotifier: InterruptNotifier;
    ackedFeatures: bigint;
    shmRegions?: VirtioSharedMemoryList;
    onError?: (err: VirtioError) => void;
  }) {
    this.memory = options.memory;
    this.queues = options.queues;
    this.deviceChangeNotifier = options.deviceChangeNotifier;
    this.ackedFeatures = options.ackedFeatures;
    this.shmRegions = options.shmRegions;
    this.onError = options.onError ?? (() => {});
  }
}

/**
 * What a transport (virtio-mmio, virtio-pci, vhost-user) needs from a device.
 */
export interface VirtioDevice {
  /** The virtio device type (`TYPE_*`). */
  deviceType(): number;
  /** Maximum size of each queue; the length is the number of queues. */
  queueMaxSizes(): readonly number[];
  /**
   * One 32-bit page of the features the device offers.
   * @param page Page number (0: bits 0–31, 1: bits 32–63, …).
   */
  getAvailFeatures(page: number): number;
  /**
   * Record one 32-bit page of features the driver acknowledged.
   * @param page Page number.
   * @param value The bits.
   */
  setAckedFeatures(page: number, value: number): void;
  /** Features the driver acknowledged, masked to those offered. */
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
  /** Stop serving and return to the initial state; the device stays reusable. */
  reset(): void;
  /**
   * The driver notified queue `index`: serve its available buffers.
   * @param index Queue index.
   */
  processQueue(index: number): void;
  /** The device's shared memory regions, if any. */
  getSharedMemoryRegions?(): VirtioSharedMemoryList | undefined;
  /** Release host resources for good. */
  remove?(): void;
}

/**
 * Feature and configuration-space bookkeeping shared by devices
 * (dbs-virtio-devices `VirtioDeviceInfo`).
 *
 * @example
 * ```ts
 * import { VirtioDeviceInfo } from "./device.ts";
 * const info = new VirtioDeviceInfo("demo", 1n << 32n, [256], new Uint8Array(8));
 * info.setAckedFeatures(1, 1);
 * info.setAckedFeatures(0, 0xffffffff); // bits never offered are dropped
 * if (info.ackedFeatures !== 1n << 32n) throw new Error("unreachable");
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
   * Record acknowledged features of one page, dropping bits never offered.
   * @param page Page number.
   * @param value The bits.
   */
  setAckedFeatures(page: number, value: number): void {
    if (!Number.isInteger(page) || page < 0 || page > 1) return;
    const shift = BigInt(32 * page);
    const bits = BigInt(value >>> 0) << shift;
    const mask = 0xffffffffn << shift;
    this.ackedFeatures = (this.ackedFeatures & ~mask) | (bits & this.availFeatures);
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
 * checks, and the reset template. Subclasses implement `processQueue` and may
 * override `onActivate` / `onReset`.
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
   * Record one page of acknowledged features.
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
      throw new ActivateError("AlreadyActive", `${this.info.driverName} is already active`);
    }
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
    const required = this.requiredQueues();
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
    this.onActivate(config);
    this.#queues = byIndex;
    this.active = config;
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
   * Serve queue `index`.
   * @param index Queue index.
   */
  abstract processQueue(index: number): void;

  /**
   * Hook run at the end of a successful activation checks, before the device
   * is marked active. Throw an {@linkcode ActivateError} to refuse.
   * @param _config The activation config.
   */
  protected onActivate(_config: VirtioDeviceConfig): void {}

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

/**
 * What {@linkcode serveQueue} does with each chain: return the number of
 * bytes written to complete it now, or `undefined` when the handler keeps it
 * and completes it later (then it must call `addUsed` and notify itself).
 */
export type ChainHandler = (chain: DescriptorChain) => number | undefined;

/**
 * The queue loop every device uses: take each available chain, hand it to
 * `handle` and put it in the used ring. With VIRTIO_F_EVENT_IDX the driver is
 * notified as soon as a used buffer passes its `used_event` (virtio 1.2
 * §2.7.10), so it can reap while the rest is served; without it, once at the
 * end unless it set VIRTQ_AVAIL_F_NO_INTERRUPT. Driver notifications are
 * suppressed while the loop runs and re-armed before it ends, with a re-check
 * so a buffer added meanwhile is not missed.
 *
 * A malformed chain is returned with used length 0 and reported; a broken
 * queue (fatal `QueueError`) is reported with `needsReset` and the loop stops.
 * Nothing is thrown.
 *
 * @param memory Guest memory.
 * @param qc The queue and its notifier.
 * @param handle Serves one chain.
 * @param onError Receives every error.
 * @returns The number of chains completed.
 */
export function serveQueue(
  memory: GuestMemory,
  qc: VirtioQueueConfig,
  handle: ChainHandler,
  onError: (err: VirtioError) => void,
): number {
  const q = qc.queue;
  let used = 0;
  try {
    do {
      q.disableNotification(memory);
      for (;;) {
        let chain: DescriptorChain | null;
        try {
          chain = q.pop(memory);
        } catch (err) {
          if (err instanceof QueueError && !err.fatal && err.head !== undefined) {
            q.addUsed(memory, err.head, 0);
            used++;
            onError(VirtioError.from(err));
            continue;
          }
          throw err;
        }
        if (chain === null) break;
        let len: number | undefined;
        try {
          len = handle(chain);
        } catch (err) {
          len = 0;
          onError(VirtioError.from(err));
        }
        if (len !== undefined) {
          q.addUsed(memory, chain.head, len);
          used++;
          // With EVENT_IDX the driver says exactly when it wants to hear (used_event), so
          // tell it as soon as it does: it can reap and refill while the rest is served.
          if (q.eventIdx && q.needsNotification(memory)) qc.notifier.notify();
        }
      }
    } while (q.enableNotification(memory));
  } catch (err) {
    const e = VirtioError.from(err);
    onError(
      e.needsReset ? e : new VirtioError(e.kind, e.message, { needsReset: true, cause: err }),
    );
  }
  try {
    // A broken queue was reported above; asking it again would only report it twice.
    if (used > 0 && q.broken === undefined && q.needsNotification(memory)) qc.notifier.notify();
  } catch (err) {
    onError(VirtioError.from(err));
  }
  return used;
}
