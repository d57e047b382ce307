/**
 * The virtio-mmio transport (virtio 1.2 §4.2): the register file a driver
 * reads and writes, the device status state machine and feature negotiation.
 * Version 2 (modern) and the legacy version 1 layout (§4.2.4) are supported.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import {
  createDeviceNotifier,
  createQueueNotifier,
  DEVICE_DRIVER_OK,
  featureBit,
  type InterruptNotifier,
  InterruptStatus,
  type InterruptTrigger,
  VIRTIO_F_NOTIFICATION_DATA,
  VIRTIO_F_RING_RESET,
  VIRTIO_LEGACY_PAGE_SIZE,
  type VirtioDevice,
  type VirtioSharedMemoryList,
} from "../devices/device.ts";
import { TransportCore, type TransportError, type TransportErrorCode } from "./core.ts";

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

/**
 * What a driver did wrong on the register file: the transport core's codes
 * ({@linkcode TransportErrorCode}) and two of the register file's own.
 */
export type MmioErrorCode =
  /** A control register accessed with a width other than 32 bits, or unaligned. */
  | "InvalidAccess"
  /** A read of a write-only or unknown register, or a write of a read-only one. */
  | "InvalidRegister"
  | TransportErrorCode;

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
  /** The device's shared memory window (from `setResource`), for the SHM registers. */
  shmRegions?: VirtioSharedMemoryList;
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
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * import { MmioTransport, MmioRegister } from "./mmio.ts";
 * const t = new MmioTransport(new RngDevice(), GuestMemory.create(1 << 20));
 * assert.equal(t.readU32(MmioRegister.DeviceId), 4);
 * ```
 */
export class MmioTransport {
  /** The device behind this window. */
  readonly device: VirtioDevice;
  /** The status machine, negotiation, queues and serving shared with the other transports. */
  readonly core: TransportCore;
  /** The interrupt status register. */
  readonly interruptStatus: InterruptStatus = new InterruptStatus();
  /** Transport version (1 legacy, 2 modern). */
  readonly version: 1 | 2;
  readonly #vendorId: number;
  readonly #onError: (err: MmioError) => void;
  readonly #shm: VirtioSharedMemoryList | undefined;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #queueSel = 0;
  #shmSel = 0;
  #guestPageSize = VIRTIO_LEGACY_PAGE_SIZE;
  #queueAlign: number[];
  #queuePfn: number[];
  // The register being served, for errors the core reports.
  #offset = 0;
  readonly #buf = new Uint8Array(4);
  readonly #bufView = new DataView(this.#buf.buffer);

  /**
   * Create it.
   * @param device The device.
   * @param memory Guest memory the queues live in.
   * @param options Version, vendor id, interrupt line, shared memory and error hook.
   */
  constructor(device: VirtioDevice, memory: GuestMemory, options: MmioTransportOptions = {}) {
    this.device = device;
    this.version = options.version ?? 2;
    this.#vendorId = options.vendorId ?? MMIO_DEFAULT_VENDOR_ID;
    this.#onError = options.onError ?? (() => {});
    this.#shm = options.shmRegions;
    const trigger = options.interrupt ?? (() => {});
    const queueNotifier: InterruptNotifier = createQueueNotifier(trigger, this.interruptStatus);
    this.core = new TransportCore(device, {
      memory,
      modern: this.version === 2,
      transportFeatures: featureBit(VIRTIO_F_RING_RESET) | featureBit(VIRTIO_F_NOTIFICATION_DATA),
      queueNotifier: () => queueNotifier,
      configNotifier: createDeviceNotifier(trigger, this.interruptStatus),
      shmRegions: options.shmRegions,
      onError: (err) => this.#coreError(err),
    });
    this.#queueAlign = this.core.queues.map(() => VIRTIO_LEGACY_PAGE_SIZE);
    this.#queuePfn = this.core.queues.map(() => 0);
  }

  /** The queues, by index; owned by the transport core. */
  get queues(): readonly Virtqueue[] {
    return this.core.queues;
  }

  /** The device status register. */
  get status(): number {
    return this.core.status;
  }

  /** Whether the device has been activated (DRIVER_OK accepted). */
  get isActive(): boolean {
    return this.core.isActive;
  }

  /** The ConfigGeneration register. */
  get configGeneration(): number {
    return this.core.configGeneration;
  }

  /** Signal a device configuration change to the driver (bumps ConfigGeneration). */
  notifyConfigChange(): void {
    this.core.configChanged();
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
    this.#offset = offset;
    if (offset >= MMIO_CONFIG_OFFSET) {
      this.core.readConfig(offset - MMIO_CONFIG_OFFSET, data);
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
    this.#offset = offset;
    if (offset >= MMIO_CONFIG_OFFSET) {
      this.core.writeConfig(offset - MMIO_CONFIG_OFFSET, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.#error("InvalidAccess", offset, `${data.length}-byte write of a control register`);
      return;
    }
    const v = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
    this.#writeRegister(offset, v);
  }

  #readRegister(offset: number): number | undefined {
    const R = MmioRegister;
    const legacy = this.version === 1;
    const q = this.core.queues[this.#queueSel];
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
        return this.core.offeredPage(this.#deviceFeaturesSel);
      case R.QueueNumMax:
        return q?.maxSize ?? 0;
      case R.QueueReady:
        return legacy ? undefined : q?.ready ? 1 : 0;
      case R.QueuePfn:
        return legacy ? (this.#queuePfn[this.#queueSel] ?? 0) : undefined;
      case R.InterruptStatus:
        return this.interruptStatus.value;
      case R.Status:
        return this.core.status;
      case R.ShmLenLow:
      case R.ShmLenHigh:
      case R.ShmBaseLow:
      case R.ShmBaseHigh:
        return legacy ? undefined : this.#shmRegister(offset);
      case R.QueueReset:
        return legacy ? undefined : 0;
      case R.ConfigGeneration:
        return legacy ? undefined : this.core.configGeneration;
      default:
        return undefined;
    }
  }

  #shmRegister(offset: number): number {
    const list = this.#shm;
    const region = list?.regionList[this.#shmSel];
    // virtio 1.2 §4.2.2: a region that does not exist reads as length -1.
    if (list === undefined || region === undefined) return 0xffffffff;
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
        this.core.writeDriverFeatures(this.#driverFeaturesSel, v);
        return;
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
      case R.QueueNum: {
        const q = this.core.queueForSetup(this.#queueSel);
        if (q !== undefined) q.size = v;
        return;
      }
      case R.QueueAlign: {
        if (!legacy) break;
        if (this.core.queueForSetup(this.#queueSel) === undefined) return;
        if (v === 0 || (v & (v - 1)) !== 0) {
          this.#error("InvalidQueueAccess", offset, `queue align ${v} is not a power of two`);
          return;
        }
        this.#queueAlign[this.#queueSel] = v;
        return;
      }
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
      case R.QueueDeviceHigh: {
        if (legacy) break;
        const q = this.core.queueForSetup(this.#queueSel);
        if (q === undefined) return;
        const high = (offset & 4) !== 0;
        const lo = high ? undefined : v;
        const hi = high ? v : undefined;
        if (offset < R.QueueDriverLow) q.setDescTableAddress(lo, hi);
        else if (offset < R.QueueDeviceLow) q.setAvailRingAddress(lo, hi);
        else q.setUsedRingAddress(lo, hi);
        return;
      }
      case R.QueueNotify:
        // virtio 1.2 §4.2.3.3: the queue index, and with VIRTIO_F_NOTIFICATION_DATA next_off
        // and next_wrap in the upper half.
        if (this.core.negotiated(VIRTIO_F_NOTIFICATION_DATA)) {
          this.core.notify(v & 0xffff, v >>> 16);
          return;
        }
        if ((v >>> 16) !== 0) {
          this.#error("InvalidNotify", offset, `notify for queue ${v}`);
          return;
        }
        this.core.notify(v);
        return;
      case R.InterruptAck:
        this.interruptStatus.ack(v);
        return;
      case R.Status:
        // 0 resets the register file too (virtio 1.2 §4.2.2: InterruptStatus, selectors).
        if (v === 0) this.reset();
        else this.core.setStatus(v);
        return;
      case R.ShmSel:
        if (legacy) break;
        this.#shmSel = v;
        return;
      case R.QueueReset:
        if (legacy) break;
        // virtio 1.2 §4.2.2.2: 1 resets the selected queue; done by the time it is read back.
        if (v !== 1) {
          this.#error("InvalidQueueAccess", offset, `QueueReset ${v}`);
          return;
        }
        this.core.resetQueue(this.#queueSel);
        return;
    }
    this.#error("InvalidRegister", offset, "write of a read-only or unknown register");
  }

  #writeQueueReady(offset: number, v: number): void {
    const q = this.core.queues[this.#queueSel];
    const live = (this.core.status & DEVICE_DRIVER_OK) !== 0;
    if (q === undefined) {
      this.#error("InvalidQueueAccess", offset, `queue ${this.#queueSel} does not exist`);
      return;
    }
    if (v === 0) {
      // Stopping a queue while the device runs (virtio 1.2 §4.2.3.2): allowed only before DRIVER_OK.
      if (live && q.ready) {
        this.#error("InvalidQueueAccess", offset, "QueueReady cleared while DRIVER_OK");
        return;
      }
      q.ready = false;
      return;
    }
    if (live && !this.core.negotiated(VIRTIO_F_RING_RESET)) {
      this.#error("InvalidQueueAccess", offset, "QueueReady set after DRIVER_OK");
      return;
    }
    if (!live) {
      q.ready = true;
      return;
    }
    // After a queue reset (VIRTIO_F_RING_RESET): served again, without a device reset.
    this.core.enableQueue(this.#queueSel);
  }

  // Legacy layout (virtio 1.2 §2.7.2 legacy note): descriptors at PFN * page size,
  // the available ring right after them, the used ring at the next QueueAlign boundary.
  #writeLegacyPfn(offset: number, pfn: number): void {
    const i = this.#queueSel;
    const q = this.core.queues[i];
    if (q === undefined) {
      this.#error("InvalidQueueAccess", offset, `queue ${i} does not exist`);
      return;
    }
    if ((this.core.status & DEVICE_DRIVER_OK) !== 0) {
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

  /** Reset device and queues (a driver write of 0 to Status, virtio 1.2 §2.4). */
  reset(): void {
    this.core.reset();
    this.#queueAlign.fill(VIRTIO_LEGACY_PAGE_SIZE);
    this.#queuePfn.fill(0);
    this.interruptStatus.value = 0;
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#queueSel = 0;
    this.#shmSel = 0;
  }

  #coreError(err: TransportError): void {
    if (err.code === "ActivationFailed" || err.code === "DeviceError") {
      // These concern the device, not the register being written.
      const offset = err.code === "DeviceError" ? MmioRegister.QueueNotify : this.#offset;
      this.#onError(new MmioError(err.code, offset, stripCode(err), { cause: err.cause }));
      return;
    }
    this.#onError(new MmioError(err.code, this.#offset, stripCode(err), { cause: err.cause }));
  }

  #error(code: MmioErrorCode, offset: number, message: string, cause?: unknown): void {
    this.#onError(new MmioError(code, offset, message, { cause }));
  }
}

function stripCode(err: TransportError): string {
  return err.message.slice(err.code.length + 2);
}
