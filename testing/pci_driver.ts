/**
 * A guest driver for virtio PCI functions, in TypeScript: what firmware and Linux's
 * `virtio_pci` do — size and place the BARs, walk the capability list, enable MSI-X, and
 * initialise the device through the modern common configuration structure or the legacy
 * I/O interface — against a {@linkcode PciTransport}, for tests without a VM.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import { VIRTIO_F_EVENT_IDX } from "../queue/split.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
  featureBit,
  VIRTIO_F_NOTIFICATION_DATA,
  VIRTIO_F_RING_PACKED,
} from "../devices/device.ts";
import {
  PCI_VENDOR_ID_VIRTIO,
  PciCommonCfg,
  PciLegacyCfg,
  type PciTransport,
  VirtioPciCapType,
} from "../transport/pci.ts";
import { DRIVER_OPT_IN_FEATURES, DriverQueue } from "./queue_driver.ts";

/** A virtio structure found on the capability list. */
export interface PciStructure {
  /** BAR number. */
  bar: number;
  /** Offset in the BAR. */
  offset: number;
  /** Length. */
  length: number;
  /** The capability's `id` byte (the shmid of a shared memory region). */
  id: number;
  /** Offset of the capability in configuration space. */
  capOffset: number;
}

/** Options of {@linkcode PciDriver.init}. */
export interface PciDriverInitOptions {
  /** Features to accept, masked to the offer (default: all offered). */
  features?: bigint;
  /** How many queues to set up (default: all). */
  queues?: number;
  /** Size of each queue (default: the device maximum, at most 256). */
  queueSize?: number;
  /** Guest address of the first queue's rings (default 0x10000); queues follow every 64 KiB. */
  ringBase?: number;
  /** Use MSI-X with one vector per queue and one for configuration changes (default true). */
  msix?: boolean;
  /** Use the legacy I/O interface (transitional devices; default false). */
  legacy?: boolean;
}

/** The MSI-X message address every vector gets (the x86 local APIC window). */
export const PCI_DRIVER_MSI_ADDRESS = 0xfee00000n;

/** The driver side of one virtio PCI function. */
export class PciDriver {
  /** The function. */
  readonly transport: PciTransport;
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** The queues set up by `init`. */
  queues: DriverQueue[] = [];
  /** Features negotiated by `init`. */
  features: bigint = 0n;
  /** The virtio structures found by `probe`, by `cfg_type` (first of each type). */
  readonly structures: Map<number, PciStructure> = new Map();
  /** Every shared memory structure found by `probe`. */
  readonly sharedMemory: PciStructure[] = [];
  /** `notify_off_multiplier` found by `probe`. */
  notifyMultiplier: number = 0;
  /** Offset of the MSI-X capability, or -1. */
  msixCap: number = -1;
  /** MSI-X table size found by `probe`. */
  msixTableSize: number = 0;
  #legacy = false;
  readonly #buf = new Uint8Array(8);
  readonly #view = new DataView(this.#buf.buffer);

  /**
   * Create it.
   * @param transport The PCI function.
   * @param memory Guest memory the queues go in.
   */
  constructor(transport: PciTransport, memory: GuestMemory) {
    this.transport = transport;
    this.memory = memory;
  }

  /**
   * Read configuration space.
   * @param offset Offset.
   * @param width 1, 2 or 4.
   * @returns The value.
   */
  cfgRead(offset: number, width: 1 | 2 | 4): number {
    const b = this.#buf.subarray(0, width);
    this.transport.configRead(offset, b);
    return width === 4
      ? this.#view.getUint32(0, true)
      : width === 2
      ? this.#view.getUint16(0, true)
      : b[0];
  }

  /**
   * Write configuration space.
   * @param offset Offset.
   * @param width 1, 2 or 4.
   * @param value The value.
   */
  cfgWrite(offset: number, width: 1 | 2 | 4, value: number): void {
    const b = this.#buf.subarray(0, width);
    if (width === 4) this.#view.setUint32(0, value >>> 0, true);
    else if (width === 2) this.#view.setUint16(0, value, true);
    else b[0] = value;
    this.transport.configWrite(offset, b);
  }

  /**
   * Read a BAR.
   * @param bar BAR number.
   * @param offset Offset.
   * @param width 1, 2 or 4.
   * @returns The value.
   */
  barRead(bar: number, offset: number, width: 1 | 2 | 4): number {
    const b = this.#buf.subarray(0, width);
    this.transport.barRead(bar, offset, b);
    return width === 4
      ? this.#view.getUint32(0, true)
      : width === 2
      ? this.#view.getUint16(0, true)
      : b[0];
  }

  /**
   * Write a BAR.
   * @param bar BAR number.
   * @param offset Offset.
   * @param width 1, 2 or 4.
   * @param value The value.
   */
  barWrite(bar: number, offset: number, width: 1 | 2 | 4, value: number): void {
    const b = this.#buf.subarray(0, width);
    if (width === 4) this.#view.setUint32(0, value >>> 0, true);
    else if (width === 2) this.#view.setUint16(0, value, true);
    else b[0] = value;
    this.transport.barWrite(bar, offset, b);
  }

  /**
   * Size every BAR as firmware does (write all ones, read back the mask), place them from
   * `memBase` and `ioBase` upwards, and enable I/O and memory decoding and bus mastering.
   * @param memBase First address for memory BARs.
   * @param ioBase First I/O port for I/O BARs.
   * @returns Each BAR's size and address.
   */
  assignBars(
    memBase = 0xe000_0000,
    ioBase = 0xc000,
  ): { bar: number; size: number; address: number }[] {
    const out: { bar: number; size: number; address: number }[] = [];
    let mem = memBase;
    let io = ioBase;
    for (let i = 0; i < 6; i++) {
      const reg = 0x10 + 4 * i;
      const orig = this.cfgRead(reg, 4);
      this.cfgWrite(reg, 4, 0xffffffff);
      const mask = this.cfgRead(reg, 4);
      this.cfgWrite(reg, 4, orig);
      if (mask === 0) continue;
      if (mask & 1) {
        const size = (~(mask & ~0x3) + 1) & 0xffff;
        io = Math.ceil(io / size) * size;
        this.cfgWrite(reg, 4, io);
        out.push({ bar: i, size, address: io });
        io += size;
        continue;
      }
      const is64 = ((mask >> 1) & 3) === 2;
      const size = (~(mask & ~0xf) >>> 0) + 1;
      mem = Math.ceil(mem / size) * size;
      this.cfgWrite(reg, 4, mem % 0x1_0000_0000);
      if (is64) {
        this.cfgWrite(reg + 4, 4, Math.floor(mem / 0x1_0000_0000));
        i++;
      }
      out.push({ bar: is64 ? i - 1 : i, size, address: mem });
      mem += size;
    }
    this.cfgWrite(0x04, 2, this.cfgRead(0x04, 2) | 0x7);
    return out;
  }

  /**
   * Check the ids and walk the capability list (virtio 1.2 §4.1.4): the first structure of
   * each type, every shared memory region, the notify multiplier and MSI-X.
   * @throws {Error} When the function is not a virtio device or lacks a required structure.
   */
  probe(): void {
    if (this.cfgRead(0x00, 2) !== PCI_VENDOR_ID_VIRTIO) throw new Error("Not a virtio device");
    if ((this.cfgRead(0x06, 2) & 0x10) === 0) throw new Error("No capability list");
    let at = this.cfgRead(0x34, 1);
    for (let guard = 0; at !== 0 && guard < 48; guard++) {
      const id = this.cfgRead(at, 1);
      if (id === 0x11) {
        this.msixCap = at;
        this.msixTableSize = (this.cfgRead(at + 2, 2) & 0x7ff) + 1;
      } else if (id === 0x09) {
        const type = this.cfgRead(at + 3, 1);
        const s: PciStructure = {
          bar: this.cfgRead(at + 4, 1),
          id: this.cfgRead(at + 5, 1),
          offset: this.cfgRead(at + 8, 4),
          length: this.cfgRead(at + 12, 4),
          capOffset: at,
        };
        if (type === VirtioPciCapType.SHARED_MEMORY_CFG) {
          s.offset += this.cfgRead(at + 16, 4) * 0x1_0000_0000;
          s.length += this.cfgRead(at + 20, 4) * 0x1_0000_0000;
          this.sharedMemory.push(s);
        } else if (!this.structures.has(type)) {
          this.structures.set(type, s);
          if (type === VirtioPciCapType.NOTIFY_CFG) {
            this.notifyMultiplier = this.cfgRead(at + 16, 4);
          }
        }
      }
      at = this.cfgRead(at + 1, 1);
    }
    for (
      const t of [
        VirtioPciCapType.COMMON_CFG,
        VirtioPciCapType.NOTIFY_CFG,
        VirtioPciCapType.ISR_CFG,
      ]
    ) {
      if (!this.structures.has(t)) throw new Error(`No virtio structure of type ${t}`);
    }
  }

  #common(): PciStructure {
    return this.structures.get(VirtioPciCapType.COMMON_CFG)!;
  }

  /**
   * Read a common configuration field.
   * @param field Offset (`PciCommonCfg`).
   * @param width Its width.
   * @returns The value.
   */
  common(field: number, width: 1 | 2 | 4): number {
    const c = this.#common();
    return this.barRead(c.bar, c.offset + field, width);
  }

  /**
   * Write a common configuration field.
   * @param field Offset (`PciCommonCfg`).
   * @param width Its width.
   * @param value The value.
   */
  setCommon(field: number, width: 1 | 2 | 4, value: number): void {
    const c = this.#common();
    this.barWrite(c.bar, c.offset + field, width, value);
  }

  /**
   * Enable MSI-X: program vector `v` with address {@linkcode PCI_DRIVER_MSI_ADDRESS} and data
   * `v`, unmask every vector, then set the enable bit.
   */
  enableMsix(): void {
    if (this.msixCap < 0) throw new Error("No MSI-X capability");
    const tableReg = this.cfgRead(this.msixCap + 4, 4);
    const bar = tableReg & 7;
    const base = tableReg & ~7;
    for (let v = 0; v < this.msixTableSize; v++) {
      this.barWrite(bar, base + 16 * v, 4, Number(PCI_DRIVER_MSI_ADDRESS & 0xffffffffn));
      this.barWrite(bar, base + 16 * v + 4, 4, 0);
      this.barWrite(bar, base + 16 * v + 8, 4, v);
      this.barWrite(bar, base + 16 * v + 12, 4, 0);
    }
    const ctrl = this.cfgRead(this.msixCap + 2, 2);
    this.cfgWrite(this.msixCap + 2, 2, (ctrl | 0x8000) & ~0x4000);
  }

  /**
   * Mask or unmask one MSI-X vector.
   * @param vector Table entry.
   * @param masked Mask it.
   */
  maskVector(vector: number, masked: boolean): void {
    const tableReg = this.cfgRead(this.msixCap + 4, 4);
    this.barWrite(tableReg & 7, (tableReg & ~7) + 16 * vector + 12, 4, masked ? 1 : 0);
  }

  /** The device's offered features (both pages). */
  deviceFeatures(): bigint {
    let f = 0n;
    for (let page = 0; page < 2; page++) {
      this.setCommon(PciCommonCfg.deviceFeatureSelect, 4, page);
      f |= BigInt(this.common(PciCommonCfg.deviceFeature, 4)) << BigInt(32 * page);
    }
    return f;
  }

  /**
   * Initialise the device: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (modern),
   * queues (with one MSI-X vector each when MSI-X is on), DRIVER_OK.
   * @param options Features, queues, MSI-X, legacy interface.
   * @returns The driver queues.
   * @throws {Error} When the device refuses the features or a queue does not exist.
   */
  init(options: PciDriverInitOptions = {}): DriverQueue[] {
    if (this.structures.size === 0) this.probe();
    this.#legacy = options.legacy ?? false;
    const msix = (options.msix ?? true) && this.msixCap >= 0;
    if (msix) this.enableMsix();
    return this.#legacy ? this.#initLegacy(options, msix) : this.#initModern(options, msix);
  }

  #initModern(options: PciDriverInitOptions, msix: boolean): DriverQueue[] {
    const C = PciCommonCfg;
    this.setCommon(C.deviceStatus, 1, 0);
    this.setCommon(C.deviceStatus, 1, DEVICE_ACKNOWLEDGE);
    this.setCommon(C.deviceStatus, 1, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
    // The rings laid out here are split rings; other opt-in features only when asked for.
    this.features = this.deviceFeatures() &
      (options.features ?? ((1n << 64n) - 1n) & ~DRIVER_OPT_IN_FEATURES) &
      ~featureBit(VIRTIO_F_RING_PACKED);
    for (let page = 0; page < 2; page++) {
      this.setCommon(C.driverFeatureSelect, 4, page);
      this.setCommon(
        C.driverFeature,
        4,
        Number((this.features >> BigInt(32 * page)) & 0xffffffffn),
      );
    }
    const ok = DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK;
    this.setCommon(C.deviceStatus, 1, ok);
    if ((this.common(C.deviceStatus, 1) & DEVICE_FEATURES_OK) === 0) {
      throw new Error("Device refused the features");
    }
    if (msix) this.setCommon(C.configMsixVector, 2, 0);
    const count = options.queues ?? this.common(C.numQueues, 2);
    const queues: DriverQueue[] = [];
    for (let i = 0; i < count; i++) {
      this.setCommon(C.queueSelect, 2, i);
      const max = this.common(C.queueSize, 2);
      if (max === 0) throw new Error(`Queue ${i} is not available`);
      const dq = this.#queue(options, i, Math.min(options.queueSize ?? 256, max), 4);
      this.setCommon(C.queueSize, 2, dq.size);
      this.setCommon(C.queueDescLo, 4, dq.descTable);
      this.setCommon(C.queueDescHi, 4, 0);
      this.setCommon(C.queueDriverLo, 4, dq.availRing);
      this.setCommon(C.queueDriverHi, 4, 0);
      this.setCommon(C.queueDeviceLo, 4, dq.usedRing);
      this.setCommon(C.queueDeviceHi, 4, 0);
      if (msix) this.setCommon(C.queueMsixVector, 2, i + 1);
      this.setCommon(C.queueEnable, 2, 1);
      queues.push(dq);
    }
    this.setCommon(C.deviceStatus, 1, ok | DEVICE_DRIVER_OK);
    this.queues = queues;
    return queues;
  }

  #initLegacy(options: PciDriverInitOptions, msix: boolean): DriverQueue[] {
    const L = PciLegacyCfg;
    const io = (off: number, w: 1 | 2 | 4) => this.barRead(0, off, w);
    const setIo = (off: number, w: 1 | 2 | 4, v: number) => this.barWrite(0, off, w, v);
    setIo(L.status, 1, 0);
    setIo(L.status, 1, DEVICE_ACKNOWLEDGE);
    setIo(L.status, 1, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
    this.features = BigInt(io(L.hostFeatures, 4)) & (options.features ?? 0xffffffffn);
    setIo(L.guestFeatures, 4, Number(this.features));
    if (msix) setIo(L.configVector, 2, 0);
    const count = options.queues ?? this.transport.queues.length;
    const queues: DriverQueue[] = [];
    for (let i = 0; i < count; i++) {
      setIo(L.queueSelect, 2, i);
      const size = io(L.queueSize, 2);
      if (size === 0) throw new Error(`Queue ${i} is not available`);
      const dq = this.#queue(options, i, size, 4096);
      if (msix) setIo(L.queueVector, 2, i + 1);
      setIo(L.queuePfn, 4, dq.descTable / 4096);
      queues.push(dq);
    }
    setIo(L.status, 1, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_DRIVER_OK);
    this.queues = queues;
    return queues;
  }

  #queue(options: PciDriverInitOptions, i: number, size: number, usedAlign: number): DriverQueue {
    const ringBase = options.ringBase ?? 0x10000;
    const base = ringBase + 0x10000 * i;
    const bufferBase = ringBase + 0x10000 * 16 + 0x100000 * i;
    return new DriverQueue(this.memory, {
      size,
      ringBase: base,
      usedAlign,
      bufferBase,
      bufferEnd: Math.min(bufferBase + 0x100000, this.memory.findRegion(bufferBase)!.end),
      eventIdx: (this.features & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n,
    });
  }

  /**
   * Notify the device of new buffers on queue `index` if it asked for it (a 16-bit write of
   * the queue index at its notify address, or the legacy Queue Notify register).
   * @param index Queue index.
   * @param force Notify even when the device suppressed notifications.
   * @returns Whether a notification was written.
   */
  kick(index: number, force = false): boolean {
    if (!this.queues[index].kickNeeded() && !force) return false;
    if (this.#legacy) {
      this.barWrite(0, PciLegacyCfg.queueNotify, 2, index);
      return true;
    }
    this.setCommon(PciCommonCfg.queueSelect, 2, index);
    const off = this.common(PciCommonCfg.queueNotifyOff, 2);
    const n = this.structures.get(VirtioPciCapType.NOTIFY_CFG)!;
    const at = n.offset + off * this.notifyMultiplier;
    if ((this.features & featureBit(VIRTIO_F_NOTIFICATION_DATA)) !== 0n) {
      // virtio 1.2 §4.1.5.2: a 32-bit notification with next_off/next_wrap in the upper half.
      const next = this.queues[index].availIdx & 0xffff;
      this.barWrite(n.bar, at, 4, (index | (next << 16)) >>> 0);
    } else {
      this.barWrite(n.bar, at, 2, index);
    }
    return true;
  }

  /**
   * Read (and so clear) the ISR status, as an INTx handler does.
   * @returns The bits that were set.
   */
  readIsr(): number {
    if (this.#legacy) return this.barRead(0, PciLegacyCfg.isr, 1);
    const s = this.structures.get(VirtioPciCapType.ISR_CFG)!;
    return this.barRead(s.bar, s.offset, 1);
  }

  /**
   * Read device configuration space.
   * @param offset Offset.
   * @param len Bytes (1, 2 or 4 at a time are used).
   * @returns The bytes.
   */
  readConfig(offset: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    const legacyStart = this.transport.msixEnabled ? 24 : 20;
    for (let i = 0; i < len; i++) {
      out[i] = this.#legacy
        ? this.barRead(0, legacyStart + offset + i, 1)
        : this.#deviceRead(offset + i);
    }
    return out;
  }

  #deviceRead(offset: number): number {
    const d = this.structures.get(VirtioPciCapType.DEVICE_CFG);
    if (d === undefined) throw new Error("No device configuration structure");
    return this.barRead(d.bar, d.offset + offset, 1);
  }
}
