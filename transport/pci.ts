/**
 * virtio over PCI (virtio 1.2 §4.1): the configuration space of one PCI function (type 0
 * header, the virtio structure capabilities, MSI-X) and its BARs — the modern structures
 * (common configuration, notifications, ISR, device configuration), the MSI-X table and
 * pending-bit array, the transitional legacy I/O BAR, and a shared memory BAR — translated
 * into calls on the {@linkcode TransportCore}.
 *
 * The VMM owns the bus: it routes configuration cycles (CF8/CFC or ECAM) to
 * {@linkcode PciTransport.configRead}/`configWrite` and accesses inside a BAR to
 * {@linkcode PciTransport.barRead}/`barWrite`, and it delivers interrupts: MSI-X messages
 * through `interrupts.msi` (KVM_SIGNAL_MSI or an irqfd route), the INTx level through
 * `interrupts.intx`. Everything the driver writes is validated; misuse is reported to
 * `onError` and never thrown into the VMM.
 *
 * BAR layout: BAR0 the legacy I/O interface (transitional devices only), BAR1 the MSI-X table
 * (at 0) and PBA (at 0x800), BAR2/3 the shared memory window (devices that have one), BAR4/5
 * the modern structures (common at 0x0000, ISR at 0x1000, device config at 0x2000,
 * notifications at 0x3000 with a multiplier of 4: queue `i` is notified at 0x3000 + 4·i).
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import {
  DEVICE_DRIVER_OK,
  featureBit,
  TYPE_BALLOON,
  TYPE_BLOCK,
  TYPE_CONSOLE,
  TYPE_NET,
  TYPE_RNG,
  VIRTIO_F_NOTIFICATION_DATA,
  VIRTIO_F_RING_RESET,
  VIRTIO_INTR_CONFIG,
  VIRTIO_INTR_VRING,
  type VirtioDevice,
  type VirtioSharedMemoryList,
} from "../devices/device.ts";
import { TransportCore, type TransportError, type TransportErrorCode } from "./core.ts";

/** PCI vendor id of every virtio device. */
export const PCI_VENDOR_ID_VIRTIO = 0x1af4;
/** Added to the virtio device type to form a modern PCI device id (virtio 1.2 §4.1.2). */
export const PCI_DEVICE_ID_MODERN_BASE = 0x1040;
/** The MSI-X vector value meaning "no interrupt" (virtio 1.2 §4.1.5.1.2). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** `cfg_type` of the virtio structure capabilities (virtio 1.2 §4.1.4). */
export const VirtioPciCapType = {
  COMMON_CFG: 1,
  NOTIFY_CFG: 2,
  ISR_CFG: 3,
  DEVICE_CFG: 4,
  PCI_CFG: 5,
  SHARED_MEMORY_CFG: 8,
} as const;

/** Offsets of the common configuration structure (virtio 1.2 §4.1.4.3). */
export const PciCommonCfg = {
  deviceFeatureSelect: 0x00,
  deviceFeature: 0x04,
  driverFeatureSelect: 0x08,
  driverFeature: 0x0c,
  configMsixVector: 0x10,
  numQueues: 0x12,
  deviceStatus: 0x14,
  configGeneration: 0x15,
  queueSelect: 0x16,
  queueSize: 0x18,
  queueMsixVector: 0x1a,
  queueEnable: 0x1c,
  queueNotifyOff: 0x1e,
  queueDescLo: 0x20,
  queueDescHi: 0x24,
  queueDriverLo: 0x28,
  queueDriverHi: 0x2c,
  queueDeviceLo: 0x30,
  queueDeviceHi: 0x34,
  queueNotifyData: 0x38,
  queueReset: 0x3a,
} as const;

/** Offsets of the legacy I/O BAR (virtio 1.2 §4.1.4.10). */
export const PciLegacyCfg = {
  hostFeatures: 0,
  guestFeatures: 4,
  queuePfn: 8,
  queueSize: 12,
  queueSelect: 14,
  queueNotify: 16,
  status: 18,
  isr: 19,
  /** With MSI-X enabled. */
  configVector: 20,
  /** With MSI-X enabled. */
  queueVector: 22,
} as const;

/** BAR of the legacy I/O interface. */
export const PCI_LEGACY_BAR = 0;
/** BAR of the MSI-X table and pending-bit array. */
export const PCI_MSIX_BAR = 1;
/** BAR of the shared memory window (64-bit, BARs 2 and 3). */
export const PCI_SHM_BAR = 2;
/** BAR of the modern virtio structures (64-bit, BARs 4 and 5). */
export const PCI_MODERN_BAR = 4;
/** Offsets of the structures inside the modern BAR. */
export const PciModernLayout = {
  common: 0x0000,
  isr: 0x1000,
  device: 0x2000,
  notify: 0x3000,
  /** `notify_off_multiplier`: queue `i` is notified at `notify + i * 4`. */
  notifyMultiplier: 4,
} as const;
/** Offset of the pending-bit array in the MSI-X BAR. */
export const PCI_MSIX_PBA_OFFSET = 0x800;
/** Most MSI-X vectors a device may have (virtio 1.2 §4.1.5.1.2). */
export const PCI_MAX_MSIX_VECTORS = 0x800;

const COMMON_SIZE = 0x40;
const LEGACY_HEADER = 20;
const CFG_SPACE_SIZE = 256;
const CAP_ID_MSIX = 0x11;
const CAP_ID_VNDR = 0x09;
const CMD_IO = 0x1;
const CMD_MEMORY = 0x2;
const CMD_BUS_MASTER = 0x4;
const CMD_INTX_DISABLE = 0x400;
const STATUS_INTERRUPT = 0x8;
const STATUS_CAP_LIST = 0x10;
const MSIX_ENABLE = 0x8000;
const MSIX_FUNCTION_MASK = 0x4000;

// Transitional PCI device ids (virtio 1.2 §4.1.2.1) by virtio device type.
const TRANSITIONAL_IDS: ReadonlyMap<number, number> = new Map([
  [TYPE_NET, 0x1000],
  [TYPE_BLOCK, 0x1001],
  [TYPE_BALLOON, 0x1002],
  [TYPE_CONSOLE, 0x1003],
  [TYPE_RNG, 0x1005],
]);

// PCI class codes (base, sub) by device type, as other VMMs report them.
const CLASS_CODES: ReadonlyMap<number, number> = new Map([
  [TYPE_NET, 0x0200], // network, ethernet
  [TYPE_BLOCK, 0x0100], // mass storage, SCSI
  [TYPE_CONSOLE, 0x0780], // communication, other
  [19, 0x0780], // vsock: communication, other
  [26, 0x0180], // virtio-fs: mass storage, other
  [27, 0x0180], // pmem: mass storage, other
]);

/** What a driver did wrong on the PCI function. */
export type PciErrorCode =
  /** An access of the wrong width, unaligned, or past the end of a structure. */
  | "InvalidAccess"
  /** A write of a read-only register, or an access to a register that does not exist. */
  | "InvalidRegister"
  /** An access to a BAR the function does not have, or with decoding disabled. */
  | "InvalidBar"
  | TransportErrorCode;

/** A driver-side misuse of the PCI function, or a device failure it caused. */
export class PciError extends Error {
  /** Which rule was broken. */
  readonly code: PciErrorCode;
  /** Where: `"config"` space or a BAR number. */
  readonly where: "config" | number;
  /** Offset inside the configuration space or the BAR. */
  readonly offset: number;

  /**
   * Create it.
   * @param code Which rule was broken.
   * @param where Configuration space or BAR number.
   * @param offset Offset.
   * @param message Details.
   * @param options Standard error options (`cause`).
   */
  constructor(
    code: PciErrorCode,
    where: "config" | number,
    offset: number,
    message: string,
    options?: ErrorOptions,
  ) {
    const at = where === "config" ? "config" : `BAR${where}`;
    super(`${code} at ${at}+0x${offset.toString(16)}: ${message}`, options);
    this.name = "PciError";
    this.code = code;
    this.where = where;
    this.offset = offset;
  }
}

/** One BAR of the function. */
export interface PciBarInfo {
  /** BAR number (0–5; a 64-bit BAR also takes the next number). */
  readonly index: number;
  /** I/O space, 32-bit memory, or 64-bit memory. */
  readonly kind: "io" | "mem32" | "mem64";
  /** Size in bytes (a power of two). */
  readonly size: number;
  /** Whether the memory is prefetchable. */
  readonly prefetchable: boolean;
  /**
   * The address the driver (or the VMM) put it at. While a driver sizes the upper half of a
   * 64-bit BAR it can be above 2^53 and so inexact: a VMM maps no BAR that high.
   */
  readonly address: number;
  /** Whether the function decodes it now (its space is enabled in the command register). */
  readonly enabled: boolean;
}

/** How the transport raises interrupts; the VMM implements it. */
export interface PciInterrupts {
  /**
   * Deliver MSI-X vector `vector` (its message address and data from the table).
   * @param vector Table entry.
   * @param address Message address.
   * @param data Message data.
   */
  msi?(vector: number, address: bigint, data: number): void;
  /**
   * Set the INTx line (level-triggered: asserted while the ISR is not zero).
   * @param level The new level.
   */
  intx?(level: boolean): void;
}

/** Options of {@linkcode PciTransport}. */
export interface PciTransportOptions {
  /** Also offer the legacy interface (I/O BAR0, transitional device id). Default false. */
  transitional?: boolean;
  /** MSI-X vectors (default: queues + 1, at most 0x800; 0 leaves MSI-X out). */
  msixVectors?: number;
  /** How interrupts reach the guest. */
  interrupts?: PciInterrupts;
  /** The device's shared memory window (from `setResource`), exposed in BAR2. */
  shmRegions?: VirtioSharedMemoryList;
  /** Called after the driver moved a BAR or toggled decoding (to re-route accesses). */
  onBarChanged?: (bar: PciBarInfo) => void;
  /** Called after an MSI-X table entry changed (to update an interrupt route). */
  onMsixChanged?: (vector: number) => void;
  /** Receives every driver misuse and device error; never throws into the VMM. */
  onError?: (err: PciError) => void;
}

interface Bar {
  index: number;
  kind: "io" | "mem32" | "mem64";
  size: number;
  prefetchable: boolean;
  // The two address registers as written (a 64-bit address may exceed 2^53 while the driver
  // sizes the upper register, so the halves are kept apart).
  lo: number;
  hi: number;
}

function barAddress(b: Bar): number {
  return b.hi * 0x1_0000_0000 + b.lo;
}

interface VendorCap {
  offset: number;
  type: number;
  bar: number;
  barOffset: number;
  length: number;
}

/**
 * One virtio PCI function.
 *
 * @example Find the common configuration structure as a driver does
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * import { PCI_VENDOR_ID_VIRTIO, PciTransport } from "./pci.ts";
 * const pci = new PciTransport(new RngDevice(), GuestMemory.create(1 << 20));
 * const id = new Uint8Array(4);
 * pci.configRead(0, id);
 * assert.equal(new DataView(id.buffer).getUint16(0, true), PCI_VENDOR_ID_VIRTIO);
 * assert.equal(new DataView(id.buffer).getUint16(2, true), 0x1044); // 0x1040 + entropy (4)
 * ```
 */
export class PciTransport {
  /** The device. */
  readonly device: VirtioDevice;
  /** Status, negotiation, queues and serving, shared with the other transports. */
  readonly core: TransportCore;
  /** Whether the legacy interface is offered. */
  readonly transitional: boolean;
  /** Number of MSI-X vectors (0: no MSI-X capability). */
  readonly msixVectors: number;
  readonly #cfg = new Uint8Array(CFG_SPACE_SIZE);
  readonly #cfgView = new DataView(this.#cfg.buffer);
  readonly #bars: (Bar | undefined)[] = [
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
  ];
  readonly #caps: VendorCap[] = [];
  readonly #interrupts: PciInterrupts;
  readonly #onBarChanged: (bar: PciBarInfo) => void;
  readonly #onMsixChanged: (vector: number) => void;
  readonly #onError: (err: PciError) => void;
  readonly #msixCap: number;
  readonly #pciCfgCap: number;
  readonly #msixTable: Uint8Array;
  readonly #msixView: DataView;
  readonly #pba: Uint8Array;
  readonly #queueVectors: Uint16Array;
  readonly #shm: VirtioSharedMemoryList | undefined;
  readonly #legacyBarSize: number;
  #command = 0;
  #intxLine = 0;
  #isr = 0;
  #intxLevel = false;
  #configVector = VIRTIO_MSI_NO_VECTOR;
  #deviceFeatureSelect = 0;
  #driverFeatureSelect = 0;
  #queueSelect = 0;
  #legacyPfn: Uint32Array;
  // The access being served, for errors the core reports.
  #where: "config" | number = "config";
  #offset = 0;

  /**
   * Lay out the function.
   * @param device The device.
   * @param memory Guest memory the queues live in.
   * @param options Legacy interface, MSI-X, interrupts, shared memory and hooks.
   * @throws {RangeError} When the options are out of range, or a transitional id does not
   *   exist for this device type.
   */
  constructor(device: VirtioDevice, memory: GuestMemory, options: PciTransportOptions = {}) {
    this.device = device;
    this.transitional = options.transitional ?? false;
    this.#interrupts = options.interrupts ?? {};
    this.#onBarChanged = options.onBarChanged ?? (() => {});
    this.#onMsixChanged = options.onMsixChanged ?? (() => {});
    this.#onError = options.onError ?? (() => {});
    this.#shm = options.shmRegions;
    const type = device.deviceType();
    if (this.transitional && !TRANSITIONAL_IDS.has(type)) {
      throw new RangeError(`Device type ${type} has no transitional PCI device id`);
    }
    this.core = new TransportCore(device, {
      memory,
      queueNotifier: (i) => ({ notify: () => this.#signalQueue(i) }),
      configNotifier: { notify: () => this.#signalConfig() },
      shmRegions: options.shmRegions,
      transportFeatures: featureBit(VIRTIO_F_RING_RESET) | featureBit(VIRTIO_F_NOTIFICATION_DATA),
      onError: (err) => this.#coreError(err),
    });
    const queues = this.core.queues.length;
    const vectors = options.msixVectors ?? queues + 1;
    if (!Number.isInteger(vectors) || vectors < 0 || vectors > PCI_MAX_MSIX_VECTORS) {
      throw new RangeError(`MSI-X vectors must be 0 to ${PCI_MAX_MSIX_VECTORS}, got ${vectors}`);
    }
    this.msixVectors = vectors;
    this.#msixTable = new Uint8Array(Math.max(vectors, 1) * 16);
    this.#msixView = new DataView(this.#msixTable.buffer);
    this.#pba = new Uint8Array(Math.ceil(Math.max(vectors, 1) / 64) * 8);
    this.#queueVectors = new Uint16Array(queues).fill(VIRTIO_MSI_NO_VECTOR);
    this.#legacyPfn = new Uint32Array(queues);
    this.#maskAllVectors();

    // BARs.
    let configLen = 0;
    while (configLen < 0x1000 && this.#deviceConfigReadable(configLen)) configLen += 4;
    this.#legacyBarSize = pow2(LEGACY_HEADER + 4 + configLen, 0x40);
    if (this.transitional) {
      this.#bars[PCI_LEGACY_BAR] = bar(PCI_LEGACY_BAR, "io", this.#legacyBarSize, false);
    }
    if (vectors > 0) this.#bars[PCI_MSIX_BAR] = bar(PCI_MSIX_BAR, "mem32", 0x1000, false);
    if (this.#shm !== undefined) {
      this.#bars[PCI_SHM_BAR] = bar(PCI_SHM_BAR, "mem64", pow2(this.#shm.len, 0x1000), true);
    }
    const notifyLen = Math.max(queues, 1) * PciModernLayout.notifyMultiplier;
    this.#bars[PCI_MODERN_BAR] = bar(
      PCI_MODERN_BAR,
      "mem64",
      pow2(PciModernLayout.notify + notifyLen, 0x4000),
      true,
    );

    // Header (PCI Local Bus 3.0 §6.1).
    const v = this.#cfgView;
    v.setUint16(0x00, PCI_VENDOR_ID_VIRTIO, true);
    v.setUint16(
      0x02,
      this.transitional ? TRANSITIONAL_IDS.get(type)! : PCI_DEVICE_ID_MODERN_BASE + type,
      true,
    );
    v.setUint16(0x06, STATUS_CAP_LIST, true);
    // virtio 1.2 §4.1.2.1: non-transitional devices have revision 1 and subsystem id ≥ 0x40;
    // a transitional device's subsystem id is its virtio device type.
    v.setUint8(0x08, this.transitional ? 0 : 1);
    const klass = CLASS_CODES.get(type) ?? 0xff00;
    v.setUint8(0x0a, klass & 0xff);
    v.setUint8(0x0b, klass >> 8);
    v.setUint8(0x0e, 0); // header type 0, single function
    v.setUint16(0x2c, PCI_VENDOR_ID_VIRTIO, true);
    v.setUint16(0x2e, this.transitional ? type : 0x1100, true);
    v.setUint8(0x3d, 1); // INTA#

    // Capabilities: MSI-X, then the virtio structures in order of preference.
    let at = 0x40;
    let prev = 0x34;
    const link = (offset: number) => {
      this.#cfg[prev] = offset;
      prev = offset + 1;
    };
    if (vectors > 0) {
      this.#msixCap = at;
      link(at);
      v.setUint8(at, CAP_ID_MSIX);
      v.setUint16(at + 2, vectors - 1, true);
      v.setUint32(at + 4, 0 | PCI_MSIX_BAR, true); // table at offset 0 of BAR1
      v.setUint32(at + 8, PCI_MSIX_PBA_OFFSET | PCI_MSIX_BAR, true);
      at += 12;
    } else {
      this.#msixCap = -1;
    }
    const vendor = (type: number, barIndex: number, offset: number, length: number, extra = 0) => {
      const len = 16 + extra;
      link(at);
      v.setUint8(at, CAP_ID_VNDR);
      v.setUint8(at + 2, len);
      v.setUint8(at + 3, type);
      v.setUint8(at + 4, barIndex);
      v.setUint32(at + 8, offset, true);
      v.setUint32(at + 12, length, true);
      this.#caps.push({ offset: at, type, bar: barIndex, barOffset: offset, length });
      const here = at;
      at += len;
      return here;
    };
    const M = PciModernLayout;
    vendor(VirtioPciCapType.COMMON_CFG, PCI_MODERN_BAR, M.common, COMMON_SIZE);
    const notify = vendor(VirtioPciCapType.NOTIFY_CFG, PCI_MODERN_BAR, M.notify, notifyLen, 4);
    v.setUint32(notify + 16, M.notifyMultiplier, true);
    vendor(VirtioPciCapType.ISR_CFG, PCI_MODERN_BAR, M.isr, 1);
    if (configLen > 0) vendor(VirtioPciCapType.DEVICE_CFG, PCI_MODERN_BAR, M.device, configLen);
    if (this.#shm !== undefined) {
      // virtio 1.2 §4.1.4.7: virtio_pci_cap64, `id` is the shmid.
      this.#shm.regionList.forEach((r, id) => {
        if (r.len === 0) return;
        const c = vendor(VirtioPciCapType.SHARED_MEMORY_CFG, PCI_SHM_BAR, r.offset, r.len, 8);
        v.setUint8(c + 5, id);
        v.setUint32(c + 8, r.offset % 0x1_0000_0000, true);
        v.setUint32(c + 12, r.len % 0x1_0000_0000, true);
        v.setUint32(c + 16, Math.floor(r.offset / 0x1_0000_0000), true);
        v.setUint32(c + 20, Math.floor(r.len / 0x1_0000_0000), true);
      });
    }
    this.#pciCfgCap = vendor(VirtioPciCapType.PCI_CFG, 0, 0, 0, 4);
  }

  // A device config space is readable up to its end; probe it without reporting errors.
  #deviceConfigReadable(offset: number): boolean {
    try {
      this.device.readConfig(offset, new Uint8Array(4));
      return true;
    } catch {
      return false;
    }
  }

  /** The queues, by index; owned by the transport core. */
  get queues(): readonly Virtqueue[] {
    return this.core.queues;
  }

  /** Whether MSI-X is enabled by the driver. */
  get msixEnabled(): boolean {
    return this.#msixCap >= 0 && (this.#msixControl() & MSIX_ENABLE) !== 0;
  }

  /** The ISR status (virtio 1.2 §4.1.4.5), without clearing it. */
  get isr(): number {
    return this.#isr;
  }

  /** The current INTx level. */
  get intxLevel(): boolean {
    return this.#intxLevel;
  }

  /**
   * The configuration registers whose accesses have side effects: the data field of the PCI
   * configuration access capability (virtio 1.2 §4.1.4.9), which reads and writes a BAR. Every
   * other register reads without side effects, so a VMM may answer reads from a copy it
   * refreshes after each configuration write and INTx change.
   */
  get configPassThrough(): { offset: number; length: number } {
    return { offset: this.#pciCfgCap + 16, length: 4 };
  }

  /** The BARs the function has. */
  bars(): PciBarInfo[] {
    const out: PciBarInfo[] = [];
    for (const b of this.#bars) if (b !== undefined) out.push(this.#barInfo(b));
    return out;
  }

  #barInfo(b: Bar): PciBarInfo {
    const enabled = (this.#command & (b.kind === "io" ? CMD_IO : CMD_MEMORY)) !== 0;
    const { index, kind, size, prefetchable } = b;
    return { index, kind, size, prefetchable, address: barAddress(b), enabled };
  }

  /**
   * Put BAR `index` at `address` (a VMM that assigns BARs itself, as firmware would).
   * @param index BAR number.
   * @param address A multiple of the BAR's size.
   * @throws {RangeError} When the BAR does not exist or the address is misaligned.
   */
  setBarAddress(index: number, address: number): void {
    const b = this.#bars[index];
    if (b === undefined) throw new RangeError(`No BAR ${index}`);
    if (!Number.isSafeInteger(address) || address < 0 || address % b.size !== 0) {
      throw new RangeError(
        `BAR${index} address 0x${address.toString(16)} is not aligned to its size`,
      );
    }
    if (b.kind !== "mem64" && address >= 0x1_0000_0000) {
      throw new RangeError(`BAR${index} is a 32-bit BAR`);
    }
    b.lo = address % 0x1_0000_0000;
    b.hi = Math.floor(address / 0x1_0000_0000);
    this.#onBarChanged(this.#barInfo(b));
  }

  /**
   * The BAR and offset a guest-physical (or I/O port) address falls in, among the BARs being
   * decoded.
   * @param address The address.
   * @param io Whether it is an I/O port.
   * @returns The BAR and the offset in it, or `undefined`.
   */
  barAt(address: number, io = false): { bar: number; offset: number } | undefined {
    for (const b of this.#bars) {
      if (b === undefined || (b.kind === "io") !== io) continue;
      if ((this.#command & (io ? CMD_IO : CMD_MEMORY)) === 0) continue;
      const base = barAddress(b);
      if (address >= base && address < base + b.size) {
        return { bar: b.index, offset: address - base };
      }
    }
    return undefined;
  }

  /**
   * Where queue `index` is notified: in the modern BAR at this offset (a 16-bit write of the
   * queue index). A VMM registers an ioeventfd there.
   * @param index Queue index.
   * @returns The BAR and offset.
   */
  notifyLocation(index: number): { bar: number; offset: number } {
    return {
      bar: PCI_MODERN_BAR,
      offset: PciModernLayout.notify + index * PciModernLayout.notifyMultiplier,
    };
  }

  /**
   * An MSI-X table entry.
   * @param vector Table entry.
   * @returns Message address, data and whether the entry is masked.
   * @throws {RangeError} For a vector outside the table.
   */
  msixEntry(vector: number): { address: bigint; data: number; masked: boolean } {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.msixVectors) {
      throw new RangeError(`No MSI-X vector ${vector}`);
    }
    const o = vector * 16;
    const v = this.#msixView;
    const address = BigInt(v.getUint32(o, true)) | (BigInt(v.getUint32(o + 4, true)) << 32n);
    return {
      address,
      data: v.getUint32(o + 8, true),
      masked: (v.getUint32(o + 12, true) & 1) !== 0,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Configuration space

  /**
   * A configuration read of `data.length` (1, 2 or 4) bytes at `offset`. Bytes past the
   * 256-byte space read as zero (no extended capabilities).
   * @param offset Offset in the configuration space.
   * @param data Filled with the value, little-endian.
   */
  configRead(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (!this.#sizeOk(offset, data.length, "config")) return;
    if (offset >= CFG_SPACE_SIZE) return;
    // The PCI configuration access window reads through to a BAR.
    const cap = this.#pciCfgCap;
    if (offset >= cap + 16 && offset < cap + 20) {
      this.#pciCfgAccess(false, data, offset - (cap + 16));
      return;
    }
    for (let i = 0; i < data.length; i++) data[i] = this.#cfgByte(offset + i);
  }

  #cfgByte(offset: number): number {
    const dword = offset & ~3;
    if (dword >= 0x10 && dword < 0x28) {
      return (this.#barRegister((dword - 0x10) >> 2) >>> (8 * (offset & 3))) & 0xff;
    }
    switch (dword) {
      case 0x04: {
        const status = STATUS_CAP_LIST | (this.#intxLevel ? STATUS_INTERRUPT : 0);
        return ((this.#command | (status << 16)) >>> (8 * (offset & 3))) & 0xff;
      }
      case 0x3c:
        return offset === 0x3c ? this.#intxLine : this.#cfg[offset];
    }
    return this.#cfg[offset];
  }

  #barRegister(index: number): number {
    const b = this.#bars[index];
    if (b === undefined) {
      // The upper half of a 64-bit BAR.
      const lower = this.#bars[index - 1];
      if (lower !== undefined && lower.kind === "mem64") {
        return lower.hi;
      }
      return 0;
    }
    const lo = b.lo;
    if (b.kind === "io") return (lo & ~(b.size - 1)) | 0x1;
    const flags = (b.kind === "mem64" ? 0x4 : 0) | (b.prefetchable ? 0x8 : 0);
    return ((lo & ~(b.size - 1)) | flags) >>> 0;
  }

  /**
   * A configuration write of `data.length` (1, 2 or 4) bytes at `offset`. Only the command
   * register, the BARs, the interrupt line, MSI-X's enable and mask bits and the PCI
   * configuration access window are writable; other writes are ignored (read-only registers
   * are not reported: drivers write whole dwords).
   * @param offset Offset in the configuration space.
   * @param data The value, little-endian.
   */
  configWrite(offset: number, data: Uint8Array): void {
    if (!this.#sizeOk(offset, data.length, "config")) return;
    if (offset >= CFG_SPACE_SIZE) return;
    const cap = this.#pciCfgCap;
    if (offset >= cap + 16 && offset < cap + 20) {
      this.#pciCfgAccess(true, data, offset - (cap + 16));
      return;
    }
    for (let i = 0; i < data.length; i++) this.#writeCfgByte(offset + i, data[i]);
    // Side effects once the whole access is in.
    const end = offset + data.length;
    if (offset < 0x06 && end > 0x04) this.#commandChanged();
    for (let i = 0; i < 6; i++) {
      const reg = 0x10 + 4 * i;
      if (offset < reg + 4 && end > reg) this.#barWritten(i);
    }
    if (this.#msixCap >= 0 && offset < this.#msixCap + 4 && end > this.#msixCap + 2) {
      this.#deliverPending();
      this.#updateIntx();
    }
  }

  #writeCfgByte(offset: number, value: number): void {
    const dword = offset & ~3;
    if (dword >= 0x10 && dword < 0x28) {
      this.#writeBarByte((dword - 0x10) >> 2, offset & 3, value);
      return;
    }
    if (offset === 0x04) {
      this.#command = (this.#command & 0xff00) | (value & (CMD_IO | CMD_MEMORY | CMD_BUS_MASTER));
      return;
    }
    if (offset === 0x05) {
      this.#command = (this.#command & 0xff) | ((value << 8) & CMD_INTX_DISABLE);
      return;
    }
    if (offset === 0x3c) {
      this.#intxLine = value;
      return;
    }
    if (offset === 0x0c || offset === 0x0d) return; // cache line size, latency timer: ignored
    const m = this.#msixCap;
    if (m >= 0 && offset === m + 3) {
      this.#cfg[offset] = value & ((MSIX_ENABLE | MSIX_FUNCTION_MASK) >> 8);
      return;
    }
    const c = this.#pciCfgCap;
    if (offset === c + 4 || (offset >= c + 8 && offset < c + 16)) {
      this.#cfg[offset] = value; // bar, offset and length of the access window
    }
  }

  #writeBarByte(index: number, byte: number, value: number): void {
    const b = this.#bars[index];
    if (b === undefined) {
      const lower = this.#bars[index - 1];
      if (lower === undefined || lower.kind !== "mem64") return;
      // Upper half of a 64-bit BAR: every bit is writable (BARs are smaller than 4 GiB).
      const shift = 8 * byte;
      lower.hi = ((lower.hi & ~(0xff << shift)) | (value << shift)) >>> 0;
      return;
    }
    const shift = 8 * byte;
    let lo = (((b.lo & ~(0xff << shift)) | (value << shift)) >>> 0) & ~(b.size - 1);
    if (b.kind === "io") lo &= 0xffff; // I/O space is 64 KiB on x86
    b.lo = lo >>> 0;
  }

  #barWritten(index: number): void {
    const b = this.#bars[index] ?? this.#bars[index - 1];
    if (b === undefined) return;
    this.#onBarChanged(this.#barInfo(b));
  }

  #commandChanged(): void {
    for (const b of this.#bars) if (b !== undefined) this.#onBarChanged(this.#barInfo(b));
    this.#updateIntx();
  }

  // virtio 1.2 §4.1.4.9: the VIRTIO_PCI_CAP_PCI_CFG window into a BAR.
  #pciCfgAccess(write: boolean, data: Uint8Array, byte: number): void {
    const c = this.#pciCfgCap;
    const v = this.#cfgView;
    const barIndex = v.getUint8(c + 4);
    const offset = v.getUint32(c + 8, true);
    const length = v.getUint32(c + 12, true);
    if (byte !== 0 || data.length !== length || ![1, 2, 4].includes(length)) {
      this.#error("InvalidAccess", "config", c + 16, `window access of ${data.length} bytes`);
      if (!write) data.fill(0);
      return;
    }
    const covered = this.#caps.some((k) =>
      k.type !== VirtioPciCapType.PCI_CFG && k.bar === barIndex && offset >= k.barOffset &&
      offset + length <= k.barOffset + k.length
    );
    if (!covered) {
      this.#error("InvalidAccess", "config", c + 8, `window outside the virtio structures`);
      if (!write) data.fill(0);
      return;
    }
    if (write) this.#barWrite(barIndex, offset, data);
    else this.#barRead(barIndex, offset, data);
  }

  // -------------------------------------------------------------------------------------------
  // BARs

  /**
   * A read of `data.length` bytes at `offset` in BAR `index`.
   * @param index BAR number.
   * @param offset Offset in the BAR.
   * @param data Filled with the value, little-endian.
   */
  barRead(index: number, offset: number, data: Uint8Array): void {
    data.fill(0);
    if (!this.#decoding(index, offset, data.length)) return;
    this.#barRead(index, offset, data);
  }

  /**
   * A write of `data.length` bytes at `offset` in BAR `index`.
   * @param index BAR number.
   * @param offset Offset in the BAR.
   * @param data The value, little-endian.
   */
  barWrite(index: number, offset: number, data: Uint8Array): void {
    if (!this.#decoding(index, offset, data.length)) return;
    this.#barWrite(index, offset, data);
  }

  #decoding(index: number, offset: number, len: number): boolean {
    const b = this.#bars[index];
    if (b === undefined) {
      this.#error("InvalidBar", index, offset, `no BAR ${index}`);
      return false;
    }
    if ((this.#command & (b.kind === "io" ? CMD_IO : CMD_MEMORY)) === 0) {
      this.#error("InvalidBar", index, offset, "decoding is disabled");
      return false;
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + len > b.size || len < 1) {
      this.#error("InvalidAccess", index, offset, `${len} bytes past the end of the BAR`);
      return false;
    }
    return true;
  }

  #barRead(index: number, offset: number, data: Uint8Array): void {
    data.fill(0);
    this.#where = index;
    this.#offset = offset;
    switch (index) {
      case PCI_MODERN_BAR:
        return this.#modernRead(offset, data);
      case PCI_MSIX_BAR:
        return this.#msixRead(offset, data);
      case PCI_LEGACY_BAR:
        if (this.transitional) return this.#legacyRead(offset, data);
        break;
      case PCI_SHM_BAR:
        // Device memory is mapped straight into the guest; accesses here are a VMM's business.
        break;
    }
    this.#error("InvalidBar", index, offset, "no register here");
  }

  #barWrite(index: number, offset: number, data: Uint8Array): void {
    this.#where = index;
    this.#offset = offset;
    switch (index) {
      case PCI_MODERN_BAR:
        return this.#modernWrite(offset, data);
      case PCI_MSIX_BAR:
        return this.#msixWrite(offset, data);
      case PCI_LEGACY_BAR:
        if (this.transitional) return this.#legacyWrite(offset, data);
        break;
    }
    this.#error("InvalidBar", index, offset, "no register here");
  }

  #sizeOk(offset: number, len: number, where: "config" | number): boolean {
    if ((len !== 1 && len !== 2 && len !== 4) || offset % len !== 0 || offset < 0) {
      this.#error("InvalidAccess", where, offset, `${len}-byte access`);
      return false;
    }
    return true;
  }

  // -------------------------------------------------------------------------------------------
  // Modern structures

  #modernRead(offset: number, data: Uint8Array): void {
    const M = PciModernLayout;
    if (offset < M.common + COMMON_SIZE) return this.#commonRead(offset - M.common, data);
    if (offset === M.isr && data.length === 1) {
      data[0] = this.#readIsr();
      return;
    }
    if (offset >= M.device && offset < M.device + 0x1000) {
      this.core.readConfig(offset - M.device, data);
      return;
    }
    if (offset >= M.notify) return; // notifications read as zero
    this.#error("InvalidRegister", PCI_MODERN_BAR, offset, "no register here");
  }

  #modernWrite(offset: number, data: Uint8Array): void {
    const M = PciModernLayout;
    if (offset < M.common + COMMON_SIZE) return this.#commonWrite(offset - M.common, data);
    if (offset >= M.device && offset < M.device + 0x1000) {
      this.core.writeConfig(offset - M.device, data);
      return;
    }
    if (offset >= M.notify) {
      const rel = offset - M.notify;
      const index = rel / M.notifyMultiplier;
      // virtio 1.2 §4.1.5.2: a 16-bit write of the queue index, or with NOTIFICATION_DATA a
      // 32-bit write with next_off and next_wrap in the upper half.
      const withData = this.core.negotiated(VIRTIO_F_NOTIFICATION_DATA);
      if (rel % M.notifyMultiplier !== 0 || data.length !== (withData ? 4 : 2)) {
        this.#error("InvalidAccess", PCI_MODERN_BAR, offset, `${data.length}-byte notification`);
        return;
      }
      const value = data[0] | (data[1] << 8);
      if (value !== index) {
        this.#error(
          "InvalidNotify",
          PCI_MODERN_BAR,
          offset,
          `queue ${value} at queue ${index}'s address`,
        );
        return;
      }
      this.core.notify(index, withData ? data[2] | (data[3] << 8) : undefined);
      return;
    }
    this.#error("InvalidRegister", PCI_MODERN_BAR, offset, "no register here");
  }

  // Natural width of each common configuration field (virtio 1.2 §4.1.3.1).
  #commonWidth(offset: number): number {
    const C = PciCommonCfg;
    if (offset < C.configMsixVector) return 4;
    if (offset === C.deviceStatus || offset === C.configGeneration) return 1;
    if (offset < C.queueDescLo) return 2;
    if (offset < C.queueNotifyData) return 4;
    if (offset <= C.queueReset) return 2;
    return 0;
  }

  #commonRead(offset: number, data: Uint8Array): void {
    const width = this.#commonWidth(offset);
    if (width === 0 || data.length !== width || offset % width !== 0) {
      this.#error(
        "InvalidAccess",
        PCI_MODERN_BAR,
        offset,
        `${data.length}-byte common config read`,
      );
      return;
    }
    const C = PciCommonCfg;
    const q = this.core.queues[this.#queueSelect];
    let v = 0;
    switch (offset) {
      case C.deviceFeatureSelect:
        v = this.#deviceFeatureSelect;
        break;
      case C.deviceFeature:
        v = this.core.offeredPage(this.#deviceFeatureSelect);
        break;
      case C.driverFeatureSelect:
        v = this.#driverFeatureSelect;
        break;
      case C.driverFeature: {
        // virtio 1.2 §4.1.4.3.1: the valid bits the driver wrote.
        const page = this.#driverFeatureSelect;
        if (page < 2) {
          const valid = this.core.driverFeatures & this.core.offeredFeatures();
          v = Number((valid >> BigInt(32 * page)) & 0xffffffffn);
        }
        break;
      }
      case C.configMsixVector:
        v = this.#configVector;
        break;
      case C.numQueues:
        v = this.core.queues.length;
        break;
      case C.deviceStatus:
        v = this.core.status & 0xff;
        break;
      case C.configGeneration:
        v = this.core.configGeneration & 0xff;
        break;
      case C.queueSelect:
        v = this.#queueSelect;
        break;
      case C.queueSize:
        v = q === undefined ? 0 : q.size; // 0: the queue does not exist
        break;
      case C.queueMsixVector:
        v = q === undefined ? VIRTIO_MSI_NO_VECTOR : this.#queueVectors[this.#queueSelect];
        break;
      case C.queueEnable:
        v = q?.ready ? 1 : 0;
        break;
      case C.queueNotifyOff:
        v = q === undefined ? 0 : this.#queueSelect;
        break;
      case C.queueDescLo:
      case C.queueDescHi:
      case C.queueDriverLo:
      case C.queueDriverHi:
      case C.queueDeviceLo:
      case C.queueDeviceHi: {
        if (q === undefined) break;
        const addr = offset < C.queueDriverLo
          ? q.descTable
          : offset < C.queueDeviceLo
          ? q.availRing
          : q.usedRing;
        v = (offset & 4) !== 0 ? Math.floor(addr / 0x1_0000_0000) : addr % 0x1_0000_0000;
        break;
      }
      case C.queueNotifyData:
      case C.queueReset: // a queue reset is complete by the time it is read
        v = 0;
        break;
    }
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    if (width === 4) view.setUint32(0, v >>> 0, true);
    else if (width === 2) view.setUint16(0, v, true);
    else view.setUint8(0, v);
  }

  #commonWrite(offset: number, data: Uint8Array): void {
    const width = this.#commonWidth(offset);
    if (width === 0 || data.length !== width || offset % width !== 0) {
      this.#error(
        "InvalidAccess",
        PCI_MODERN_BAR,
        offset,
        `${data.length}-byte common config write`,
      );
      return;
    }
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    const v = width === 4
      ? view.getUint32(0, true)
      : width === 2
      ? view.getUint16(0, true)
      : data[0];
    const C = PciCommonCfg;
    switch (offset) {
      case C.deviceFeatureSelect:
        this.#deviceFeatureSelect = v;
        return;
      case C.driverFeatureSelect:
        this.#driverFeatureSelect = v;
        return;
      case C.driverFeature:
        this.core.writeDriverFeatures(this.#driverFeatureSelect, v);
        return;
      case C.configMsixVector:
        this.#configVector = this.#validVector(v);
        return;
      case C.deviceStatus:
        this.#writeStatus(v, true);
        return;
      case C.queueSelect:
        this.#queueSelect = v;
        return;
      case C.queueMsixVector:
        if (this.core.queues[this.#queueSelect] === undefined) break;
        this.#queueVectors[this.#queueSelect] = this.#validVector(v);
        return;
      case C.queueSize: {
        const q = this.core.queueForSetup(this.#queueSelect);
        if (q !== undefined) q.size = v;
        return;
      }
      case C.queueEnable: {
        // virtio 1.2 §4.1.4.3.2: the driver never writes 0.
        if (v !== 1) {
          this.#error("InvalidQueueAccess", PCI_MODERN_BAR, offset, `queue_enable ${v}`);
          return;
        }
        // Before DRIVER_OK: ready; after a queue reset: served again (no device reset).
        this.core.enableQueue(this.#queueSelect);
        return;
      }
      case C.queueDescLo:
      case C.queueDescHi:
      case C.queueDriverLo:
      case C.queueDriverHi:
      case C.queueDeviceLo:
      case C.queueDeviceHi: {
        const q = this.core.queueForSetup(this.#queueSelect);
        if (q === undefined) return;
        const high = (offset & 4) !== 0;
        const lo = high ? undefined : v;
        const hi = high ? v : undefined;
        if (offset < C.queueDriverLo) q.setDescTableAddress(lo, hi);
        else if (offset < C.queueDeviceLo) q.setAvailRingAddress(lo, hi);
        else q.setUsedRingAddress(lo, hi);
        return;
      }
      case C.queueReset:
        // virtio 1.2 §4.1.4.3.1: 1 resets the selected queue; it reads 0 once done (at once).
        if (v !== 1) {
          this.#error("InvalidQueueAccess", PCI_MODERN_BAR, offset, `queue_reset ${v}`);
          return;
        }
        this.core.resetQueue(this.#queueSelect);
        return;
    }
    this.#error("InvalidRegister", PCI_MODERN_BAR, offset, "write of a read-only field");
  }

  // virtio 1.2 §4.1.5.1.2: a vector outside the table cannot be mapped; it reads NO_VECTOR.
  #validVector(v: number): number {
    return v < this.msixVectors ? v : VIRTIO_MSI_NO_VECTOR;
  }

  #writeStatus(v: number, modern: boolean): void {
    if (v === 0) {
      this.reset();
      return;
    }
    // A transitional device serves the interface the driver picked when it started.
    if (this.core.status === 0 && !this.core.setModern(modern)) return;
    if (this.core.modern !== modern) {
      this.#error(
        "InvalidRegister",
        this.#where,
        this.#offset,
        "status written through the other interface",
      );
      return;
    }
    this.core.setStatus(v);
  }

  // -------------------------------------------------------------------------------------------
  // Legacy interface (virtio 1.2 §4.1.4.10)

  #legacyConfigStart(): number {
    return this.msixEnabled ? LEGACY_HEADER + 4 : LEGACY_HEADER;
  }

  #legacyRead(offset: number, data: Uint8Array): void {
    const start = this.#legacyConfigStart();
    if (offset >= start) {
      this.core.readConfig(offset - start, data);
      return;
    }
    const L = PciLegacyCfg;
    const q = this.core.queues[this.#queueSelect];
    let v: number;
    let width: number;
    switch (offset) {
      case L.hostFeatures:
        [v, width] = [this.core.offeredPage(0), 4];
        break;
      case L.guestFeatures:
        [v, width] = [Number(this.core.driverFeatures & 0xffffffffn), 4];
        break;
      case L.queuePfn:
        [v, width] = [this.#legacyPfn[this.#queueSelect] ?? 0, 4];
        break;
      case L.queueSize:
        [v, width] = [q?.maxSize ?? 0, 2];
        break;
      case L.queueSelect:
        [v, width] = [this.#queueSelect, 2];
        break;
      case L.status:
        [v, width] = [this.core.status & 0xff, 1];
        break;
      case L.isr:
        if (data.length !== 1) [v, width] = [0, 1];
        else [v, width] = [this.#readIsr(), 1];
        break;
      case L.configVector:
        [v, width] = [this.#configVector, 2];
        break;
      case L.queueVector:
        [v, width] = [
          q === undefined ? VIRTIO_MSI_NO_VECTOR : this.#queueVectors[this.#queueSelect],
          2,
        ];
        break;
      default:
        this.#error("InvalidRegister", PCI_LEGACY_BAR, offset, "no legacy register here");
        return;
    }
    if (data.length !== width) {
      this.#error("InvalidAccess", PCI_LEGACY_BAR, offset, `${data.length}-byte legacy read`);
      return;
    }
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    if (width === 4) view.setUint32(0, v >>> 0, true);
    else if (width === 2) view.setUint16(0, v, true);
    else view.setUint8(0, v);
  }

  #legacyWrite(offset: number, data: Uint8Array): void {
    const start = this.#legacyConfigStart();
    if (offset >= start) {
      this.core.writeConfig(offset - start, data);
      return;
    }
    const L = PciLegacyCfg;
    const widths: Record<number, number> = {
      [L.guestFeatures]: 4,
      [L.queuePfn]: 4,
      [L.queueSelect]: 2,
      [L.queueNotify]: 2,
      [L.status]: 1,
      [L.configVector]: 2,
      [L.queueVector]: 2,
    };
    const width = widths[offset];
    if (width === undefined) {
      this.#error(
        "InvalidRegister",
        PCI_LEGACY_BAR,
        offset,
        "write of a read-only legacy register",
      );
      return;
    }
    if (data.length !== width) {
      this.#error("InvalidAccess", PCI_LEGACY_BAR, offset, `${data.length}-byte legacy write`);
      return;
    }
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    const v = width === 4
      ? view.getUint32(0, true)
      : width === 2
      ? view.getUint16(0, true)
      : data[0];
    switch (offset) {
      case L.guestFeatures:
        // Only bits 0–31 exist for a legacy driver (virtio 1.2 §4.1.4.10).
        this.core.writeDriverFeatures(0, v);
        return;
      case L.queuePfn:
        return this.#writeLegacyPfn(v);
      case L.queueSelect:
        this.#queueSelect = v;
        return;
      case L.queueNotify:
        this.core.notify(v);
        return;
      case L.status:
        this.#writeStatus(v, false);
        return;
      case L.configVector:
        if (!this.msixEnabled) break;
        this.#configVector = this.#validVector(v);
        return;
      case L.queueVector:
        if (!this.msixEnabled || this.core.queues[this.#queueSelect] === undefined) break;
        this.#queueVectors[this.#queueSelect] = this.#validVector(v);
        return;
    }
    this.#error("InvalidRegister", PCI_LEGACY_BAR, offset, "no legacy register here");
  }

  // Legacy queue layout (virtio 1.2 §2.7.2 legacy note) with a 4096-byte alignment.
  #writeLegacyPfn(pfn: number): void {
    const i = this.#queueSelect;
    const q = this.core.queues[i];
    if (q === undefined) {
      this.#error(
        "InvalidQueueAccess",
        PCI_LEGACY_BAR,
        PciLegacyCfg.queuePfn,
        `queue ${i} does not exist`,
      );
      return;
    }
    if ((this.core.status & DEVICE_DRIVER_OK) !== 0) {
      this.#error(
        "InvalidQueueAccess",
        PCI_LEGACY_BAR,
        PciLegacyCfg.queuePfn,
        "queue address after DRIVER_OK",
      );
      return;
    }
    this.#legacyPfn[i] = pfn;
    if (pfn === 0) {
      q.ready = false;
      return;
    }
    q.size = q.maxSize;
    const desc = pfn * 4096;
    const avail = desc + 16 * q.size;
    const used = Math.ceil((avail + 6 + 2 * q.size) / 4096) * 4096;
    q.descTable = desc;
    q.availRing = avail;
    q.usedRing = used;
    q.ready = true;
  }

  // -------------------------------------------------------------------------------------------
  // Interrupts

  #readIsr(): number {
    const v = this.#isr;
    this.#isr = 0; // virtio 1.2 §4.1.4.5: reading resets it and de-asserts INTx
    this.#updateIntx();
    return v;
  }

  #signalQueue(index: number): void {
    if (this.msixEnabled) {
      const v = this.#queueVectors[index];
      if (v !== VIRTIO_MSI_NO_VECTOR) this.#fireVector(v);
      return;
    }
    this.#isr |= VIRTIO_INTR_VRING;
    this.#updateIntx();
  }

  #signalConfig(): void {
    if (this.msixEnabled) {
      if (this.#configVector !== VIRTIO_MSI_NO_VECTOR) this.#fireVector(this.#configVector);
      return;
    }
    this.#isr |= VIRTIO_INTR_CONFIG;
    this.#updateIntx();
  }

  #updateIntx(): void {
    const level = this.#isr !== 0 && !this.msixEnabled && (this.#command & CMD_INTX_DISABLE) === 0;
    if (level === this.#intxLevel) return;
    this.#intxLevel = level;
    this.#interrupts.intx?.(level);
  }

  #msixControl(): number {
    return this.#cfgView.getUint16(this.#msixCap + 2, true);
  }

  #vectorMasked(vector: number): boolean {
    if ((this.#msixControl() & MSIX_FUNCTION_MASK) !== 0) return true;
    return (this.#msixView.getUint32(vector * 16 + 12, true) & 1) !== 0;
  }

  #fireVector(vector: number): void {
    if (this.#vectorMasked(vector)) {
      this.#pba[vector >> 3] |= 1 << (vector & 7); // pending until unmasked
      return;
    }
    const e = this.msixEntry(vector);
    this.#interrupts.msi?.(vector, e.address, e.data);
  }

  #deliverPending(): void {
    if (!this.msixEnabled) return;
    for (let v = 0; v < this.msixVectors; v++) {
      if ((this.#pba[v >> 3] & (1 << (v & 7))) === 0 || this.#vectorMasked(v)) continue;
      this.#pba[v >> 3] &= ~(1 << (v & 7));
      const e = this.msixEntry(v);
      this.#interrupts.msi?.(v, e.address, e.data);
    }
  }

  #maskAllVectors(): void {
    this.#msixTable.fill(0);
    for (let v = 0; v < this.msixVectors; v++) this.#msixView.setUint32(v * 16 + 12, 1, true);
    this.#pba.fill(0);
  }

  #msixRead(offset: number, data: Uint8Array): void {
    if (data.length !== 4 && data.length !== 8) {
      this.#error("InvalidAccess", PCI_MSIX_BAR, offset, `${data.length}-byte MSI-X access`);
      return;
    }
    if (offset < this.msixVectors * 16) {
      data.set(this.#msixTable.subarray(offset, offset + data.length));
      return;
    }
    const p = offset - PCI_MSIX_PBA_OFFSET;
    if (p >= 0 && p + data.length <= this.#pba.length) {
      data.set(this.#pba.subarray(p, p + data.length));
      return;
    }
    this.#error("InvalidRegister", PCI_MSIX_BAR, offset, "outside the MSI-X table and PBA");
  }

  #msixWrite(offset: number, data: Uint8Array): void {
    if ((data.length !== 4 && data.length !== 8) || offset % data.length !== 0) {
      this.#error("InvalidAccess", PCI_MSIX_BAR, offset, `${data.length}-byte MSI-X access`);
      return;
    }
    if (offset >= this.msixVectors * 16) {
      this.#error("InvalidRegister", PCI_MSIX_BAR, offset, "write outside the MSI-X table");
      return;
    }
    const vector = offset >> 4;
    const field = offset & 15;
    const bytes = field === 12 ? new Uint8Array([data[0] & 1, 0, 0, 0]) : data;
    this.#msixTable.set(bytes.subarray(0, data.length), offset);
    this.#onMsixChanged(vector);
    if (field + data.length > 12) this.#deliverPending();
  }

  // -------------------------------------------------------------------------------------------

  /**
   * Reset the virtio device and the function's virtio state (the driver wrote 0 to the device
   * status): queues, vectors, the ISR. The PCI configuration (BARs, command, MSI-X enable)
   * stays, as on real hardware.
   */
  reset(): void {
    this.core.reset();
    this.#configVector = VIRTIO_MSI_NO_VECTOR;
    this.#queueVectors.fill(VIRTIO_MSI_NO_VECTOR);
    this.#legacyPfn.fill(0);
    this.#deviceFeatureSelect = 0;
    this.#driverFeatureSelect = 0;
    this.#queueSelect = 0;
    this.#isr = 0;
    this.#updateIntx();
  }

  #coreError(err: TransportError): void {
    const message = err.message.slice(err.code.length + 2);
    this.#onError(new PciError(err.code, this.#where, this.#offset, message, { cause: err.cause }));
  }

  #error(code: PciErrorCode, where: "config" | number, offset: number, message: string): void {
    this.#onError(new PciError(code, where, offset, message));
  }
}

function bar(index: number, kind: Bar["kind"], size: number, prefetchable: boolean): Bar {
  return { index, kind, size, prefetchable, lo: 0, hi: 0 };
}

function pow2(n: number, min: number): number {
  let p = min;
  while (p < n) p *= 2;
  return p;
}
