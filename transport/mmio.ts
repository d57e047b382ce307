/**
 * The virtio-mmio transport (virtio 1.2 §4.2): the register file a driver
 * reads and writes, the device status state machine and feature negotiation.
 * Version 2 (modern) and the legacy version 1 layout (§4.2.4) are supported.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import { SplitQueue } from "../queue/split.ts";
import {
  ActivateError,
  createDeviceChangeNotifier,
  createQueueNotifier,
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FAILED,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  type InterruptNotifier,
  InterruptStatus,
  type InterruptTrigger,
  VIRTIO_F_VERSION_1,
  VIRTIO_LEGACY_PAGE_SIZE,
  type VirtioDevice,
  VirtioDeviceConfig,
  VirtioError,
  VirtioQueueConfig,
} from "../devices/device.ts";

/** "virt" in little-endian: the MagicValue register. */
export const MMIO_MAGIC_VALUE = 0x74726976;
/** Size of the register window of one device (control registers + config space). */
export const MMIO_WINDOW_SIZE = 0x1000;
/** Offset of the device-specific configuration space. */
export const MMIO_CONFIG_OFFSET = 0x100;
/** Vendor id this library reports unless told otherwise ("vtts"). */
export const MMIO_DEFAULT_VENDOR_ID = 0x73747476;

/** Control register offsets (virtio 1.2 §4.2.2, legacy §4.2.4). */
export const MmioRegister = {
  MagicValue: 0x000,
  Version: 0x004,
  DeviceId: 0x008,
  VendorId: 0x00c,
  DeviceFeatures: 0x010,
  DeviceFeaturesSel: 0x014,
  DriverFeatures: 0x020,
  DriverFeaturesSel: 0x024,
  GuestPageSize: 0x028,
  QueueSel: 0x030,
  QueueNumMax: 0x034,
  QueueNum: 0x038,
  QueueAlign: 0x03c,
  QueuePfn: 0x040,
  QueueReady: 0x044,
  QueueNotify: 0x050,
  InterruptStatus: 0x060,
  InterruptAck: 0x064,
  Status: 0x070,
  QueueDescLow: 0x080,
  QueueDescHigh: 0x084,
  QueueDriverLow: 0x090,
  QueueDriverHigh: 0x094,
  QueueDeviceLow: 0x0a0,
  QueueDeviceHigh: 0x0a4,
  ShmSel: 0x0ac,
  ShmLenLow: 0x0b0,
  ShmLenHigh: 0x0b4,
  ShmBaseLow: 0x0b8,
  ShmBaseHigh: 0x0bc,
  QueueReset: 0x0c0,
  ConfigGeneration: 0x0fc,
} as const;

/** What a driver did wrong on the register file. */
export type MmioErrorCode =
  /** A control register accessed with a width other than 32 bits, or unaligned. */
  | "InvalidAccess"
  /** A read of a write-only or unknown register, or a write of a read-only one. */
  | "InvalidRegister"
  /** A status write that clears bits or skips a step of virtio 1.2 §3.1.1. */
  | "InvalidStatusTransition"
  /** FEATURES_OK refused: the driver accepted features the device did not offer. */
  | "FeaturesRejected"
  /** DriverFeatures written outside the negotiation window. */
  | "FeaturesLocked"
  /** A queue register written while the queue is live, or for a queue that does not exist. */
  | "InvalidQueueAccess"
  /** QueueNotify names a queue that does not exist. */
  | "InvalidNotify"
  /** The device refused activation; the device is now in NEEDS_RESET. */
  | "ActivationFailed"
  /** A configuration space access the device refused. */
  | "ConfigAccess"
  /** The device reported an error while serving. */
  | "DeviceError";

/** A driver-side misuse of the MMIO register file, or a device failure it caused. */
export class MmioError extends Error {
  /** Which rule was broken. */
  readonly code: MmioErrorCode;
  /** Register offset involved. */
  readonly offset: number;

  /**
   * Create it.
   * @param code Which rule was broken.
   * @param offset Register offset.
   * @param message Details.
   * @param options Standard error options (`cause`).
   */
  constructor(code: MmioErrorCode, offset: number, message: string, options?: ErrorOptions) {
    super(`${code} at 0x${offset.toString(16)}: ${message}`, options);
    this.name = "MmioError";
    this.code = code;
    this.offset = offset;
  }
}

/** Options of {@linkcode MmioTransport}. */
export interface MmioTransportOptions {
  /** 2 for modern virtio-mmio (default), 1 for the legacy layout. */
  version?: 1 | 2;
  /** VendorID register value. */
  vendorId?: number;
  /** Raises the device's interrupt line (a KVM irqfd, a callback in tests). */
  interrupt?: InterruptTrigger;
  /** Receives every driver misuse and device error; never throws into the driver. */
  onError?: (err: MmioError) => void;
}

/**
 * The register file of one virtio-mmio device.
 *
 * The VMM routes MMIO exits in the device's window to `read`/`write`; every
 * access is validated and nothing is thrown: misuse is reported to `onError`
 * and, where the spec asks for it, the device enters DEVICE_NEEDS_RESET.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * import { MmioTransport, MmioRegister } from "./mmio.ts";
 * const t = new MmioTransport(new RngDevice(), GuestMemory.create(1 << 20));
 * if (t.readU32(MmioRegister.DeviceId) !== 4) throw new Error("unreachable");
 * ```
 */
export class MmioTransport {
  /** The device behind this window. */
  readonly device: VirtioDevice;
  /** The queues, by index; owned by the transport. */
  readonly queues: SplitQueue[];
  /** The interrupt status register. */
  readonly interruptStatus: InterruptStatus = new InterruptStatus();
  /** Transport version (1 legacy, 2 modern). */
  readonly version: 1 | 2;
  readonly #memory: GuestMemory;
  readonly #vendorId: number;
  readonly #trigger: InterruptTrigger;
  readonly #onError: (err: MmioError) => void;
  readonly #queueNotifier: InterruptNotifier;
  readonly #configNotifier: InterruptNotifier;
  #status = 0;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #driverFeatures = 0n;
  #queueSel = 0;
  #shmSel = 0;
  #configGeneration = 0;
  #guestPageSize = VIRTIO_LEGACY_PAGE_SIZE;
  #queueAlign: number[];
  #queuePfn: number[];
  #active = false;
  readonly #buf = new Uint8Array(4);
  readonly #bufView = new DataView(this.#buf.buffer);

  /**
   * Create it.
   * @param device The device.
   * @param memory Guest memory the queues live in.
   * @param options Version, vendor id, interrupt line and error hook.
   */
  constructor(device: VirtioDevice, memory: GuestMemory, options: MmioTransportOptions = {}) {
    this.device = device;
    this.#memory = memory;
    this.version = options.version ?? 2;
    this.#vendorId = options.vendorId ?? MMIO_DEFAULT_VENDOR_ID;
    this.#trigger = options.interrupt ?? (() => {});
    this.#onError = options.onError ?? (() => {});
    this.queues = device.queueMaxSizes().map((n) => new SplitQueue(n));
    this.#queueAlign = this.queues.map(() => VIRTIO_LEGACY_PAGE_SIZE);
    this.#queuePfn = this.queues.map(() => 0);
    this.#queueNotifier = createQueueNotifier(this.#trigger, this.interruptStatus);
    const raiseConfig = createDeviceChangeNotifier(this.#trigger, this.interruptStatus);
    this.#configNotifier = {
      notify: () => {
        this.#configGeneration = (this.#configGeneration + 1) >>> 0;
        raiseConfig.notify();
      },
    };
  }

  /** The device status register. */
  get status(): number {
    return this.#status;
  }

  /** Whether the device has been activated (DRIVER_OK accepted). */
  get isActive(): boolean {
    return this.#active;
  }

  /** The ConfigGeneration register. */
  get configGeneration(): number {
    return this.#configGeneration;
  }

  /** Signal a device configuration change to the driver (bumps ConfigGeneration). */
  notifyConfigChange(): void {
    this.#configNotifier.notify();
  }

  /**
   * Read a 32-bit register.
   * @param offset Offset in the window.
   * @returns The value.
   */
  readU32(offset: number): number {
    this.read(offset, this.#buf);
    return this.#bufView.getUint32(0, true);
  }

  /**
   * Write a 32-bit register.
   * @param offset Offset in the window.
   * @param value The value.
   */
  writeU32(offset: number, value: number): void {
    this.#bufView.setUint32(0, value >>> 0, true);
    this.write(offset, this.#buf);
  }

  /**
   * An MMIO read of `data.length` bytes at `offset` in the device window.
   * Invalid accesses read as zero and are reported.
   * @param offset Offset in the window.
   * @param data Filled with the value, little-endian.
   */
  read(offset: number, data: Uint8Array): void {
    if (offset >= MMIO_CONFIG_OFFSET) {
      try {
        this.device.readConfig(offset - MMIO_CONFIG_OFFSET, data);
      } catch (err) {
        data.fill(0);
        this.#error("ConfigAccess", offset, String(err), err);
      }
      return;
    }
    data.fill(0);
    if (data.length !== 4 || offset % 4 !== 0) {
      this.#error("InvalidAccess", offset, `${data.length}-byte read of a control register`);
      return;
    }
    const v = this.#readRegister(offset);
    if (v === undefined) {
      this.#error("InvalidRegister", offset, "read of a write-only or unknown register");
      return;
    }
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, v >>> 0, true);
  }

  /**
   * An MMIO write of `data.length` bytes at `offset` in the device window.
   * Invalid accesses are ignored and reported.
   * @param offset Offset in the window.
   * @param data The value, little-endian.
   */
  write(offset: number, data: Uint8Array): void {
    if (offset >= MMIO_CONFIG_OFFSET) {
      try {
        this.device.writeConfig(offset - MMIO_CONFIG_OFFSET, data);
      } catch (err) {
        this.#error("ConfigAccess", offset, String(err), err);
      }
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.#error("InvalidAccess", offset, `${data.length}-byte write of a control register`);
      return;
    }
    const v = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
    this.#writeRegister(offset, v);
  }

  #selectedQueue(): SplitQueue | undefined {
    return this.queues[this.#queueSel];
  }

  #readRegister(offset: number): number | undefined {
    const R = MmioRegister;
    const legacy = this.version === 1;
    const q = this.#selectedQueue();
    switch (offset) {
      case R.MagicValue:
        return MMIO_MAGIC_VALUE;
      case R.Version:
        return this.version;
      case R.DeviceId:
        return this.device.deviceType();
      case R.VendorId:
        return this.#vendorId;
      case R.DeviceFeatures:
        return this.#offeredPage(this.#deviceFeaturesSel);
      case R.QueueNumMax:
        return q?.maxSize ?? 0;
      case R.QueueReady:
        return legacy ? undefined : q?.ready ? 1 : 0;
      case R.QueuePfn:
        return legacy ? (this.#queuePfn[this.#queueSel] ?? 0) : undefined;
      case R.InterruptStatus:
        return this.interruptStatus.value;
      case R.Status:
        return this.#status;
      case R.ShmLenLow:
      case R.ShmLenHigh:
      case R.ShmBaseLow:
      case R.ShmBaseHigh:
        return legacy ? undefined : this.#shm(offset);
      case R.QueueReset:
        return legacy ? undefined : 0;
      case R.ConfigGeneration:
        return legacy ? undefined : this.#configGeneration;
      default:
        return undefined;
    }
  }

  #offeredPage(page: number): number {
    let v = this.device.getAvailFeatures(page);
    // A legacy device must not offer VIRTIO_F_VERSION_1 (bit 32).
    if (this.version === 1 && page === 1) v &= ~1;
    return v >>> 0;
  }

  #shm(offset: number): number {
    const list = this.device.getSharedMemoryRegions?.();
    const region = list?.find(this.#shmSel);
    if (list === undefined || region === undefined) return 0xffffffff; // virtio 1.2 §4.2.2: -1
    const value = offset === MmioRegister.ShmLenLow || offset === MmioRegister.ShmLenHigh
      ? region.len
      : list.guestAddr + region.offset;
    const high = offset === MmioRegister.ShmLenHigh || offset === MmioRegister.ShmBaseHigh;
    return high ? Math.floor(value / 0x1_0000_0000) >>> 0 : value >>> 0;
  }

  #writeRegister(offset: number, v: number): void {
    const R = MmioRegister;
    const legacy = this.version === 1;
    switch (offset) {
      case R.DeviceFeaturesSel:
        this.#deviceFeaturesSel = v;
        return;
      case R.DriverFeatures:
        return this.#writeDriverFeatures(offset, v);
      case R.DriverFeaturesSel:
        this.#driverFeaturesSel = v;
        return;
      case R.GuestPageSize:
        if (!legacy) break;
        if (v === 0 || (v & (v - 1)) !== 0) {
          this.#error("InvalidQueueAccess", offset, `guest page size ${v} is not a power of two`);
          return;
        }
        this.#guestPageSize = v;
        return;
      case R.QueueSel:
        this.#queueSel = v;
        return;
      case R.QueueNum:
        return this.#writeQueue(offset, (q) => {
          q.size = v;
        });
      case R.QueueAlign:
        if (!legacy) break;
        return this.#writeQueue(offset, () => {
          if (v === 0 || (v & (v - 1)) !== 0) {
            this.#error("InvalidQueueAccess", offset, `queue align ${v} is not a power of two`);
            return;
          }
          this.#queueAlign[this.#queueSel] = v;
        });
      case R.QueuePfn:
        if (!legacy) break;
        return this.#writeLegacyPfn(offset, v);
      case R.QueueReady:
        if (legacy) break;
        return this.#writeQueueReady(offset, v);
      case R.QueueDescLow:
      case R.QueueDescHigh:
      case R.QueueDriverLow:
      case R.QueueDriverHigh:
      case R.QueueDeviceLow:
      case R.QueueDeviceHigh:
        if (legacy) break;
        return this.#writeQueue(offset, (q) => {
          const high = (offset & 4) !== 0;
          const lo = high ? undefined : v;
          const hi = high ? v : undefined;
          if (offset < R.QueueDriverLow) q.setDescTableAddress(lo, hi);
          else if (offset < R.QueueDeviceLow) q.setAvailRingAddress(lo, hi);
          else q.setUsedRingAddress(lo, hi);
        });
      case R.QueueNotify:
        return this.#notify(offset, v);
      case R.InterruptAck:
        this.interruptStatus.ack(v);
        return;
      case R.Status:
        return this.#writeStatus(offset, v);
      case R.ShmSel:
        if (legacy) break;
        this.#shmSel = v;
        return;
      case R.QueueReset:
        if (legacy) break;
        // VIRTIO_F_RING_RESET is never offered, so the register is inert.
        this.#error("InvalidRegister", offset, "QueueReset without VIRTIO_F_RING_RESET");
        return;
    }
    this.#error("InvalidRegister", offset, "write of a read-only or unknown register");
  }

  #writeDriverFeatures(offset: number, v: number): void {
    const s = this.#status;
    if ((s & DEVICE_DRIVER) === 0 || (s & (DEVICE_FEATURES_OK | DEVICE_DRIVER_OK)) !== 0) {
      this.#error(
        "FeaturesLocked",
        offset,
        "driver features may only be written after DRIVER and before FEATURES_OK",
      );
      return;
    }
    const page = this.#driverFeaturesSel;
    if (page > 1) {
      if (v !== 0) this.#driverFeatures |= 1n << 64n; // a bit no device can offer
      return;
    }
    const shift = BigInt(32 * page);
    this.#driverFeatures = (this.#driverFeatures & ~(0xffffffffn << shift)) |
      (BigInt(v >>> 0) << shift);
    // Only what this transport offers: a legacy driver must not acknowledge VERSION_1.
    this.device.setAckedFeatures(page, (v & this.#offeredPage(page)) >>> 0);
  }

  #writeQueue(offset: number, apply: (q: SplitQueue) => void): void {
    const q = this.#selectedQueue();
    if (q === undefined) {
      this.#error("InvalidQueueAccess", offset, `queue ${this.#queueSel} does not exist`);
      return;
    }
    if (q.ready || (this.#status & DEVICE_DRIVER_OK) !== 0) {
      this.#error("InvalidQueueAccess", offset, `queue ${this.#queueSel} is live`);
      return;
    }
    apply(q);
  }

  #writeQueueReady(offset: number, v: number): void {
    const q = this.#selectedQueue();
    if (q === undefined) {
      this.#error("InvalidQueueAccess", offset, `queue ${this.#queueSel} does not exist`);
      return;
    }
    if (v === 0) {
      // Stopping a queue while the device runs (virtio 1.2 §4.2.3.2): allowed only before DRIVER_OK.
      if ((this.#status & DEVICE_DRIVER_OK) !== 0 && q.ready) {
        this.#error("InvalidQueueAccess", offset, "QueueReady cleared while DRIVER_OK");
        return;
      }
      q.ready = false;
      return;
    }
    if ((this.#status & DEVICE_DRIVER_OK) !== 0) {
      this.#error("InvalidQueueAccess", offset, "QueueReady set after DRIVER_OK");
      return;
    }
    q.ready = true;
  }

  // Legacy layout (virtio 1.2 §2.7.2 legacy note): descriptors at PFN * page size,
  // the available ring right after them, the used ring at the next QueueAlign boundary.
  #writeLegacyPfn(offset: number, pfn: number): void {
    const i = this.#queueSel;
    const q = this.queues[i];
    if (q === undefined) {
      this.#error("InvalidQueueAccess", offset, `queue ${i} does not exist`);
      return;
    }
    if ((this.#status & DEVICE_DRIVER_OK) !== 0) {
      this.#error("InvalidQueueAccess", offset, "QueuePFN written after DRIVER_OK");
      return;
    }
    this.#queuePfn[i] = pfn;
    if (pfn === 0) {
      q.ready = false;
      return;
    }
    const align = this.#queueAlign[i];
    const desc = pfn * this.#guestPageSize;
    const avail = desc + 16 * q.size;
    const used = Math.ceil((avail + 6 + 2 * q.size) / align) * align;
    q.descTable = desc;
    q.availRing = avail;
    q.usedRing = used;
    q.ready = true;
  }

  #notify(offset: number, v: number): void {
    // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index (virtio 1.2 §4.2.3.3).
    const index = v & 0xffff;
    if (index >= this.queues.length || (v >>> 16) !== 0) {
      this.#error("InvalidNotify", offset, `notify for queue ${v}`);
      return;
    }
    if (!this.#active || (this.#status & DEVICE_NEEDS_RESET) !== 0) return;
    if (!this.queues[index].ready) return;
    try {
      this.device.processQueue(index);
    } catch (err) {
      this.#deviceError(VirtioError.from(err));
    }
  }

  #writeStatus(offset: number, v: number): void {
    if (v === 0) {
      this.reset();
      return;
    }
    const old = this.#status;
    // The driver never sets NEEDS_RESET; it is the device's bit.
    const requested = v & ~DEVICE_NEEDS_RESET;
    const keep = old & ~DEVICE_NEEDS_RESET;
    if ((requested & keep) !== keep) {
      this.#error("InvalidStatusTransition", offset, `status 0x${v.toString(16)} clears bits`);
      return;
    }
    const added = requested & ~keep;
    if (added & DEVICE_FAILED) {
      // The driver gave up (virtio 1.2 §2.1): stop serving until reset.
      this.#status |= DEVICE_FAILED;
      this.#deactivate();
      return;
    }
    if (added & ~(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK)) {
      this.#error("InvalidStatusTransition", offset, `unknown status bits 0x${v.toString(16)}`);
      return;
    }
    // virtio 1.2 §3.1.1: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, each needing the previous.
    const after = keep | added;
    const needs = (bit: number, prereq: number) =>
      (added & bit) === 0 || (after & prereq) === prereq;
    const modern = this.version === 2;
    if (
      !needs(DEVICE_DRIVER, DEVICE_ACKNOWLEDGE) ||
      !needs(DEVICE_FEATURES_OK, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER) ||
      !needs(
        DEVICE_DRIVER_OK,
        DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | (modern ? DEVICE_FEATURES_OK : 0),
      ) ||
      (old & DEVICE_FAILED) !== 0
    ) {
      this.#error(
        "InvalidStatusTransition",
        offset,
        `0x${old.toString(16)} -> 0x${v.toString(16)} skips a step`,
      );
      return;
    }
    if (added & DEVICE_FEATURES_OK) {
      const problem = this.#featuresProblem();
      if (problem !== undefined) {
        // Leave FEATURES_OK clear: the driver re-reads status and sees the refusal.
        this.#status = after & ~(DEVICE_FEATURES_OK | DEVICE_DRIVER_OK);
        this.#error("FeaturesRejected", offset, problem);
        return;
      }
    }
    this.#status = after | (old & DEVICE_NEEDS_RESET);
    if (added & DEVICE_DRIVER_OK) this.#activate(offset);
  }

  #featuresProblem(): string | undefined {
    const acked = this.#driverFeatures;
    let offered = 0n;
    for (let page = 0; page < 2; page++) {
      offered |= BigInt(this.#offeredPage(page)) << BigInt(32 * page);
    }
    const extra = acked & ~offered;
    if (extra !== 0n) {
      return `driver accepted features 0x${extra.toString(16)} the device did not offer`;
    }
    if (this.version === 2 && (acked & featureBit(VIRTIO_F_VERSION_1)) === 0n) {
      return "driver did not accept VIRTIO_F_VERSION_1";
    }
    return undefined;
  }

  #activate(offset: number): void {
    const queues: VirtioQueueConfig[] = [];
    this.queues.forEach((q, i) => {
      if (q.ready) queues.push(new VirtioQueueConfig(i, q, this.#queueNotifier));
    });
    const config = new VirtioDeviceConfig({
      memory: this.#memory,
      queues,
      deviceChangeNotifier: this.#configNotifier,
      ackedFeatures: this.device.ackedFeatures(),
      shmRegions: this.device.getSharedMemoryRegions?.(),
      onError: (err) => this.#deviceError(err),
    });
    try {
      this.device.activate(config);
      this.#active = true;
    } catch (err) {
      const msg = err instanceof ActivateError ? err.message : String(err);
      this.#needsReset();
      this.#error("ActivationFailed", offset, msg, err);
    }
  }

  #deviceError(err: VirtioError): void {
    if (err.needsReset) this.#needsReset();
    this.#error("DeviceError", MmioRegister.QueueNotify, err.message, err);
  }

  // virtio 1.2 §2.1.2: set NEEDS_RESET and, once DRIVER_OK is set, signal a config change.
  #needsReset(): void {
    if ((this.#status & DEVICE_NEEDS_RESET) !== 0) return;
    this.#status |= DEVICE_NEEDS_RESET;
    if ((this.#status & DEVICE_DRIVER_OK) !== 0) this.#configNotifier.notify();
  }

  #deactivate(): void {
    if (this.#active) {
      this.#active = false;
      this.device.reset();
    }
  }

  /** Reset device and queues (a driver write of 0 to Status, virtio 1.2 §2.4). */
  reset(): void {
    this.#active = false;
    this.device.reset();
    for (const q of this.queues) q.reset();
    this.#queueAlign.fill(VIRTIO_LEGACY_PAGE_SIZE);
    this.#queuePfn.fill(0);
    this.#status = 0;
    this.interruptStatus.value = 0;
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#driverFeatures = 0n;
    this.#queueSel = 0;
    this.#shmSel = 0;
  }

  #error(code: MmioErrorCode, offset: number, message: string, cause?: unknown): void {
    this.#onError(new MmioError(code, offset, message, { cause }));
  }
}
