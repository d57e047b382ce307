/**
 * The PCI side of the machine, without KVM: a host bridge at 00:00.0, bus 0 with one function
 * per device slot, configuration mechanism #1 (the address latch at port 0xCF8 and the data
 * window at 0xCFC–0xCFF; PCI Local Bus 3.0 §3.2.2.3.2), the memory-mapped configuration space
 * (ECAM, PCI Express Base 4.0 §7.2.2), the address windows BARs are placed in, and the INTx
 * routing the ACPI `_PRT` declares. Pure TypeScript, tested without a VM; `vmm.ts` wires it to
 * KVM.
 *
 * Every access comes from the guest: widths, alignment and offsets are checked here, absent
 * devices read as all ones (how an empty slot answers), and misuse is reported to `onError` as a
 * {@link PciBusError}, never thrown.
 *
 * @module
 */

/** Port of the configuration address register (mechanism #1). */
export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
/** First port of the configuration data window (mechanism #1). */
export const PCI_CONFIG_DATA_PORT = 0xcfc;
/** Configuration space of one function in ECAM: 4 KiB. */
export const PCI_FUNCTION_CONFIG_SIZE = 0x1000;
/** Devices on a bus. */
export const PCI_SLOTS = 32;
/** Vendor id of the host bridge (Red Hat, as QEMU's generic PCIe host bridge). */
export const PCI_HOST_BRIDGE_VENDOR = 0x1b36;
/** Device id of the host bridge. */
export const PCI_HOST_BRIDGE_DEVICE = 0x0008;

/** Enable bit of the configuration address register. */
const CONF1_ENABLE = 0x8000_0000;
/** The defined bits of the configuration address register (enable, bus, devfn, register). */
const CONF1_MASK = 0x80ff_fffc;

/**
 * Where the machine's PCI resources go (guest-physical addresses and ports). The defaults keep
 * clear of RAM (at most 3 GiB, from 0), the I/O APIC (0xFEC00000), the local APIC (0xFEE00000)
 * and KVM's TSS and identity-map pages (0xFFFBC000).
 */
export interface PciLayout {
  /** Base of the ECAM window (bus 0 at its start). */
  ecamBase: number;
  /** Buses the ECAM window covers, from 0 (1 MiB each). */
  buses: number;
  /** Window for 32-bit memory BARs. */
  mmio32: { base: number; size: number };
  /** Window for 64-bit memory BARs (above 4 GiB). */
  mmio64: { base: number; size: number };
  /** Window for I/O BARs (ports). */
  io: { base: number; size: number };
  /** First GSI of the INTx lines; eight lines follow (I/O APIC pins 16–23). */
  intxFirstGsi: number;
}

/** The default {@link PciLayout}. */
export const DEFAULT_PCI_LAYOUT: PciLayout = Object.freeze({
  ecamBase: 0xe000_0000,
  buses: 1,
  mmio32: Object.freeze({ base: 0xc000_0000, size: 0x2000_0000 }),
  mmio64: Object.freeze({ base: 0x1_0000_0000, size: 0x1_0000_0000 }),
  io: Object.freeze({ base: 0x1000, size: 0xf000 }),
  intxFirstGsi: 16,
});

/** INTx lines the machine has (GSIs `intxFirstGsi` to `intxFirstGsi + 7`). */
export const PCI_INTX_LINES = 8;

/**
 * The GSI a slot's interrupt pin is wired to, as the ACPI `_PRT` says: pins rotate over the
 * eight lines with the slot number (the usual swizzle), so that INTA of neighbouring slots do
 * not share a line.
 *
 * @param slot Device number (0–31).
 * @param pin 0 for INTA to 3 for INTD.
 * @param firstGsi The first INTx GSI ({@link PciLayout.intxFirstGsi}).
 * @returns The GSI.
 */
export function intxGsi(slot: number, pin: number, firstGsi: number): number {
  return firstGsi + ((slot + pin) % PCI_INTX_LINES);
}

/** What was wrong with a configuration access. */
export type PciBusErrorCode =
  /** A width other than 1, 2 or 4 bytes, an access crossing its register, or outside the window. */
  "InvalidAccess";

/** A malformed configuration access by the guest (it is refused; reads see all ones). */
export class PciBusError extends Error {
  /** What was wrong. */
  readonly code: PciBusErrorCode;
  /** The ECAM-style offset (`bus << 20 | device << 15 | function << 12 | register`). */
  readonly offset: number;

  /**
   * Creates the error.
   *
   * @param code What was wrong.
   * @param offset The ECAM-style offset.
   * @param message Details.
   */
  constructor(code: PciBusErrorCode, offset: number, message: string) {
    super(`${code} at config 0x${offset.toString(16)}: ${message}`);
    this.name = "PciBusError";
    this.code = code;
    this.offset = offset;
  }
}

/** A function on the bus: its configuration space (a `PciTransport` is one). */
export interface PciFunction {
  /**
   * A configuration read of `data.length` (1, 2 or 4) naturally aligned bytes.
   * @param offset Register offset (0–4095).
   * @param data Filled with the value, little-endian.
   */
  configRead(offset: number, data: Uint8Array): void;
  /**
   * A configuration write of `data.length` (1, 2 or 4) naturally aligned bytes.
   * @param offset Register offset (0–4095).
   * @param data The value, little-endian.
   */
  configWrite(offset: number, data: Uint8Array): void;
  /**
   * Registers whose accesses have side effects (a copy of the space must not answer them);
   * none when absent.
   */
  readonly configPassThrough?: { offset: number; length: number };
}

/**
 * The host bridge at 00:00.0 (class 06/00): identifies the root complex and nothing else; its
 * command register and the rest of its header are read-only (it has no BARs).
 */
export class PciHostBridge implements PciFunction {
  readonly #cfg = new Uint8Array(256);

  /** Lays out the header. */
  constructor() {
    const v = new DataView(this.#cfg.buffer);
    v.setUint16(0x00, PCI_HOST_BRIDGE_VENDOR, true);
    v.setUint16(0x02, PCI_HOST_BRIDGE_DEVICE, true);
    v.setUint16(0x04, 0x0006, true); // memory space and bus master, as firmware leaves them
    v.setUint8(0x0b, 0x06); // base class: bridge
    v.setUint8(0x0a, 0x00); // subclass: host bridge
    v.setUint8(0x0e, 0x00); // header type 0, single function
    v.setUint16(0x2c, PCI_HOST_BRIDGE_VENDOR, true);
    v.setUint16(0x2e, 0x1100, true);
  }

  /**
   * Reads the header; the rest of the space reads as zero.
   * @param offset Register offset.
   * @param data Filled with the value.
   */
  configRead(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o < this.#cfg.length ? this.#cfg[o] : 0;
    }
  }

  /** Writes are ignored (nothing in a host bridge header needs to change here). */
  configWrite(): void {}
}

/** Options of {@link PciBus}. */
export interface PciBusOptions {
  /** Buses the machine decodes (default 1: only bus 0 exists). */
  buses?: number;
  /** Receives malformed accesses (default: ignore). */
  onError?: (err: PciBusError) => void;
}

/**
 * Bus 0: the host bridge in slot 0 and one single-function device per other slot, reached by
 * ECAM-style offsets (`bus << 20 | device << 15 | function << 12 | register`), which both
 * configuration mechanisms produce.
 *
 * @example A host bridge at 00:00.0, an empty slot reading all ones
 * ```ts
 * import assert from "node:assert/strict";
 * import { PciBus } from "./pci.ts";
 * const bus = new PciBus();
 * const id = new Uint8Array(4);
 * bus.configRead(0, id);
 * assert.deepEqual([...id], [0x36, 0x1b, 0x08, 0x00]);
 * bus.configRead(3 << 15, id);
 * assert.deepEqual([...id], [0xff, 0xff, 0xff, 0xff]);
 * ```
 */
export class PciBus {
  readonly #slots: (PciFunction | undefined)[] = new Array(PCI_SLOTS).fill(undefined);
  readonly #buses: number;
  readonly #onError: (err: PciBusError) => void;

  /**
   * Creates bus 0 with its host bridge.
   * @param options Bus count and error sink.
   */
  constructor(options: PciBusOptions = {}) {
    this.#buses = options.buses ?? 1;
    this.#onError = options.onError ?? (() => {});
    this.#slots[0] = new PciHostBridge();
  }

  /**
   * Puts a device in a slot (function 0).
   * @param slot 1–31 (0 is the host bridge).
   * @param fn The function.
   * @throws {RangeError} For a slot outside 1–31 or one already taken.
   */
  attach(slot: number, fn: PciFunction): void {
    if (!Number.isInteger(slot) || slot < 1 || slot >= PCI_SLOTS) {
      throw new RangeError(`PCI slot ${slot}: 1 to ${PCI_SLOTS - 1} are possible`);
    }
    if (this.#slots[slot] !== undefined) throw new RangeError(`PCI slot ${slot} is taken`);
    this.#slots[slot] = fn;
  }

  /**
   * The function in a slot of bus 0.
   * @param slot 0–31.
   * @returns The function, or undefined for an empty slot.
   */
  functionAt(slot: number): PciFunction | undefined {
    return this.#slots[slot];
  }

  /**
   * The function at an ECAM-style offset, and the register offset in it.
   * @param offset ECAM-style offset.
   * @returns The function and register, or undefined for an absent bus, device or function.
   */
  #target(offset: number): { fn: PciFunction; reg: number } | undefined {
    const bus = Math.floor(offset / 0x10_0000);
    const devfn = (offset >>> 12) & 0xff;
    if (bus >= this.#buses || (devfn & 7) !== 0) return undefined;
    const fn = this.#slots[devfn >> 3];
    return fn === undefined ? undefined : { fn, reg: offset & 0xfff };
  }

  #valid(offset: number, len: number): boolean {
    if (
      (len !== 1 && len !== 2 && len !== 4) || !Number.isSafeInteger(offset) || offset < 0 ||
      offset % len !== 0
    ) {
      this.#onError(new PciBusError("InvalidAccess", offset, `${len}-byte access`));
      return false;
    }
    return true;
  }

  /**
   * A configuration read. Absent buses, devices and functions read as all ones.
   * @param offset ECAM-style offset, aligned to the width.
   * @param data 1, 2 or 4 bytes, filled little-endian.
   */
  configRead(offset: number, data: Uint8Array): void {
    data.fill(0xff);
    if (!this.#valid(offset, data.length)) return;
    const t = this.#target(offset);
    if (t !== undefined) t.fn.configRead(t.reg, data);
  }

  /**
   * A configuration write. Writes to absent functions are dropped.
   * @param offset ECAM-style offset, aligned to the width.
   * @param data 1, 2 or 4 bytes, little-endian.
   */
  configWrite(offset: number, data: Uint8Array): void {
    if (!this.#valid(offset, data.length)) return;
    const t = this.#target(offset);
    if (t !== undefined) t.fn.configWrite(t.reg, data);
  }

  /**
   * An access inside the ECAM window: one register of one function per naturally aligned
   * access of 1, 2 or 4 bytes (wider or crossing accesses are refused; reads see all ones).
   * @param offset Offset from the window's base.
   * @param write True for a write.
   * @param data The value or where it goes.
   */
  ecamAccess(offset: number, write: boolean, data: Uint8Array): void {
    if (offset >= this.#buses * 0x10_0000) {
      if (!write) data.fill(0xff);
      this.#onError(new PciBusError("InvalidAccess", offset, "outside the ECAM window"));
      return;
    }
    if (write) this.configWrite(offset, data);
    else this.configRead(offset, data);
  }
}

/**
 * Configuration mechanism #1 as a vCPU sees it: the 32-bit address latch at 0xCF8 and the
 * data window at 0xCFC–0xCFF, turned into ECAM-style offsets. The latch is one machine-wide
 * register; give every vCPU thread the same shared `Int32Array` so that they see one latch.
 *
 * Only a 32-bit access at 0xCF8 reaches the latch (byte accesses at 0xCF8–0xCFB belong to
 * other chipset registers and are ignored; reads of them return all ones). A data access goes
 * to the function the latch names, at the latch's register plus the port's byte; with the
 * enable bit clear, or for a width that crosses the window, reads return all ones and writes
 * are dropped.
 *
 * @example What Linux's type 1 probe and a vendor id read do
 * ```ts
 * import assert from "node:assert/strict";
 * import { Conf1Ports } from "./pci.ts";
 * const ports = new Conf1Ports();
 * const seen: number[] = [];
 * const config = (offset: number, _write: boolean, data: Uint8Array) => {
 *   seen.push(offset);
 *   data.fill(0xab);
 * };
 * ports.access(0xcf8, true, new Uint8Array([0, 0, 0, 0x80]), config);
 * const back = new Uint8Array(4);
 * ports.access(0xcf8, false, back, config);
 * assert.deepEqual([...back], [0, 0, 0, 0x80]);
 * ports.access(0xcf8, true, new Uint8Array([0x08, 0x18, 0, 0x80]), config); // 00:03.0 reg 8
 * ports.access(0xcfe, false, new Uint8Array(2), config);
 * assert.deepEqual(seen, [(3 << 15) | 0x0a]);
 * ```
 */
export class Conf1Ports {
  readonly #latch: Int32Array;

  /**
   * Creates the ports over a latch.
   * @param latch One `Int32` shared by every vCPU thread (default: a private one).
   */
  constructor(latch: Int32Array = new Int32Array(1)) {
    this.#latch = latch;
  }

  /**
   * Whether a port belongs to this mechanism (0xCF8–0xCFF).
   * @param port The port.
   * @returns True for 0xCF8–0xCFF.
   */
  static owns(port: number): boolean {
    return port >= PCI_CONFIG_ADDRESS_PORT && port < PCI_CONFIG_DATA_PORT + 4;
  }

  /** The latch's value. */
  get address(): number {
    return Atomics.load(this.#latch, 0) >>> 0;
  }

  /**
   * Serves one port access of `data.length` bytes.
   * @param port 0xCF8–0xCFF.
   * @param write True for `out`.
   * @param data The value or where it goes, little-endian.
   * @param config Performs a data access at an ECAM-style offset.
   */
  access(
    port: number,
    write: boolean,
    data: Uint8Array,
    config: (offset: number, write: boolean, data: Uint8Array) => void,
  ): void {
    const len = data.length;
    if (port < PCI_CONFIG_DATA_PORT) {
      if (port !== PCI_CONFIG_ADDRESS_PORT || len !== 4) {
        if (!write) data.fill(0xff);
        return;
      }
      const v = new DataView(data.buffer, data.byteOffset, 4);
      if (write) Atomics.store(this.#latch, 0, (v.getUint32(0, true) & CONF1_MASK) | 0);
      else v.setUint32(0, this.address, true);
      return;
    }
    const byte = port - PCI_CONFIG_DATA_PORT;
    const address = this.address;
    if (
      (address & CONF1_ENABLE) === 0 || (len !== 1 && len !== 2 && len !== 4) ||
      byte % len !== 0 || byte + len > 4
    ) {
      if (!write) data.fill(0xff);
      return;
    }
    // Bits 23:16 bus, 15:11 device, 10:8 function, 7:2 register: ECAM puts them at 20, 15, 12.
    const bus = (address >>> 16) & 0xff;
    const devfn = (address >>> 8) & 0xff;
    const offset = bus * 0x10_0000 + devfn * 0x1000 + (address & 0xfc) + byte;
    config(offset, write, data);
  }
}

// Per slot: 64 dwords of configuration space, then its state and pass-through range.
const SHADOW_DWORDS = 64;
const SHADOW_STRIDE = SHADOW_DWORDS + 2;
const SHADOW_UNKNOWN = 0; // never filled: ask the owner
const SHADOW_PRESENT = 1;
const SHADOW_EMPTY = 2;

/** Bytes of shared memory a {@link ConfigShadow} needs. */
export const CONFIG_SHADOW_SIZE: number = PCI_SLOTS * SHADOW_STRIDE * 4;

/**
 * A copy of the standard configuration space (256 bytes) of every slot of bus 0, in memory
 * shared with the vCPU threads, so that configuration reads (most of what a guest does while it
 * enumerates and probes) are answered where the exit happens instead of by a round trip to the
 * thread that owns the devices. The owner refreshes a slot after every configuration write to it
 * and whenever the function's state shows in its space (the INTx status bit); empty slots and
 * functions 1–7 read as all ones; reads of a function's pass-through registers, of other buses,
 * of extended space and of slots never filled are not answered here. Dwords are stored and
 * loaded with `Atomics`: a read never sees half an update.
 *
 * @example The owner fills slot 0; a vCPU thread reads the vendor id
 * ```ts
 * import assert from "node:assert/strict";
 * import { CONFIG_SHADOW_SIZE, ConfigShadow, PciBus } from "./pci.ts";
 * const sab = new SharedArrayBuffer(CONFIG_SHADOW_SIZE);
 * const bus = new PciBus();
 * new ConfigShadow(sab).refresh(0, bus.functionAt(0));
 * const vendor = new Uint8Array(2);
 * assert.equal(new ConfigShadow(sab).read(0, vendor), true);
 * assert.deepEqual([...vendor], [0x36, 0x1b]);
 * ```
 */
export class ConfigShadow {
  readonly #i32: Int32Array;
  readonly #dword = new Uint8Array(4);

  /**
   * Views the shared copy.
   * @param sab {@link CONFIG_SHADOW_SIZE} bytes shared by the owner and the vCPU threads.
   */
  constructor(sab: SharedArrayBuffer) {
    this.#i32 = new Int32Array(sab, 0, PCI_SLOTS * SHADOW_STRIDE);
  }

  /**
   * Owner side: copies a slot's configuration space (or marks the slot empty).
   * @param slot 0–31.
   * @param fn The function there, or undefined.
   * @param dwords Only these dword indexes (default: all 64).
   */
  refresh(slot: number, fn: PciFunction | undefined, dwords?: readonly number[]): void {
    const base = slot * SHADOW_STRIDE;
    if (fn === undefined) {
      Atomics.store(this.#i32, base + SHADOW_DWORDS, SHADOW_EMPTY);
      return;
    }
    const pass = fn.configPassThrough;
    const view = new DataView(this.#dword.buffer);
    const one = (d: number) => {
      const o = d * 4;
      if (pass !== undefined && o < pass.offset + pass.length && pass.offset < o + 4) return;
      fn.configRead(o, this.#dword);
      Atomics.store(this.#i32, base + d, view.getInt32(0, true));
    };
    if (dwords === undefined) { for (let d = 0; d < SHADOW_DWORDS; d++) one(d); }
    else for (const d of dwords) one(d);
    const p = pass === undefined ? 0 : ((pass.length & 0xffff) << 16) | (pass.offset & 0xffff);
    Atomics.store(this.#i32, base + SHADOW_DWORDS + 1, p);
    Atomics.store(this.#i32, base + SHADOW_DWORDS, SHADOW_PRESENT);
  }

  /**
   * vCPU side: answers a configuration read from the copy, if it can.
   * @param offset ECAM-style offset, aligned to the width (as {@link Conf1Ports} produces).
   * @param data 1, 2 or 4 bytes to fill.
   * @returns False when the read must go to the owner (another bus, extended space, a
   *   pass-through register, or a slot the owner never filled).
   */
  read(offset: number, data: Uint8Array): boolean {
    if (offset >= 0x10_0000 || offset < 0) return false;
    const reg = offset & 0xfff;
    if (reg + data.length > 256) return false;
    const slot = (offset >>> 15) & 31;
    const base = slot * SHADOW_STRIDE;
    const state = Atomics.load(this.#i32, base + SHADOW_DWORDS);
    if (state === SHADOW_UNKNOWN) return false;
    // An empty slot, or functions 1–7 (every device here is single-function).
    if (state === SHADOW_EMPTY || (offset & 0x7000) !== 0) {
      data.fill(0xff);
      return true;
    }
    const p = Atomics.load(this.#i32, base + SHADOW_DWORDS + 1);
    const passOffset = p & 0xffff;
    const passLength = p >>> 16;
    if (passLength > 0 && reg < passOffset + passLength && passOffset < reg + data.length) {
      return false;
    }
    const v = Atomics.load(this.#i32, base + (reg >> 2)) >>> (8 * (reg & 3));
    for (let i = 0; i < data.length; i++) data[i] = (v >>> (8 * i)) & 0xff;
    return true;
  }
}

/**
 * Places BARs in the machine's windows, as firmware does: each BAR aligned to its size, one
 * after the other from the window's base.
 */
export class BarAllocator {
  readonly #next: Record<"io" | "mem32" | "mem64", number>;
  readonly #end: Record<"io" | "mem32" | "mem64", number>;

  /**
   * Starts every window at its base.
   * @param layout The windows.
   */
  constructor(layout: PciLayout) {
    this.#next = { io: layout.io.base, mem32: layout.mmio32.base, mem64: layout.mmio64.base };
    this.#end = {
      io: layout.io.base + layout.io.size,
      mem32: layout.mmio32.base + layout.mmio32.size,
      mem64: layout.mmio64.base + layout.mmio64.size,
    };
  }

  /**
   * The address of the next BAR of this kind and size.
   * @param kind The BAR's kind (a 64-bit BAR goes to the 64-bit window).
   * @param size Its size (a power of two).
   * @returns Its address.
   * @throws {RangeError} When the window is full or the size is not a power of two.
   */
  allocate(kind: "io" | "mem32" | "mem64", size: number): number {
    if (!Number.isSafeInteger(size) || size <= 0 || 2 ** Math.round(Math.log2(size)) !== size) {
      throw new RangeError(`BAR size ${size} is not a power of two`);
    }
    const at = Math.ceil(this.#next[kind] / size) * size;
    if (at + size > this.#end[kind]) {
      throw new RangeError(`The ${kind} window has no room for a ${size}-byte BAR`);
    }
    this.#next[kind] = at + size;
    return at;
  }
}

/**
 * The INTx lines as the devices drive them: a line is high while any device wired to it holds
 * its pin asserted (level-triggered, shared lines OR-ed), and only changes are passed on.
 */
export class IntxLines {
  readonly #asserted = new Map<number, Set<number>>();
  readonly #set: (gsi: number, level: boolean) => void;

  /**
   * Creates the lines, all low.
   * @param set Drives a line (e.g. `KVM_IRQ_LINE`).
   */
  constructor(set: (gsi: number, level: boolean) => void) {
    this.#set = set;
  }

  /**
   * One device's pin changed.
   * @param gsi The line it is wired to.
   * @param source Which device (any distinct number).
   * @param level Its pin's new level.
   */
  drive(gsi: number, source: number, level: boolean): void {
    let set = this.#asserted.get(gsi);
    if (set === undefined) this.#asserted.set(gsi, set = new Set());
    const before = set.size > 0;
    if (level) set.add(source);
    else set.delete(source);
    const after = set.size > 0;
    if (before !== after) this.#set(gsi, after);
  }

  /**
   * Whether a line is high.
   * @param gsi The line.
   * @returns Its level.
   */
  level(gsi: number): boolean {
    return (this.#asserted.get(gsi)?.size ?? 0) > 0;
  }
}
