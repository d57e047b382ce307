/**
 * ACPI tables for a firmware-less x86-64 guest, in pure TypeScript: RSDP, XSDT, a hardware-reduced
 * FADT, a MADT listing the vCPUs and the I/O APIC, and a DSDT declaring COM1 and each virtio-mmio
 * device (`_HID "LNRO0005"`, the id Linux's `virtio_mmio` driver matches through ACPI) with its
 * register window and interrupt. This is how a stock distribution kernel, which has
 * `CONFIG_VIRTIO_MMIO` but not `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, finds our devices and CPUs.
 * With PCI, the DSDT declares the host bridge `\_SB.PCI0` (PNP0A08, compatible with PNP0A03: its
 * bus range, I/O and memory windows, and the `_PRT` wiring each slot's INTx pins to I/O APIC
 * GSIs) and a motherboard resource (PNP0C02) reserving the ECAM window, which an MCFG table
 * describes (PCI Firmware 3.2 §4.1.2).
 *
 * References: ACPI 6.5 §5.2 (tables), §6.4 (resource descriptors), §20 (AML encoding).
 * Everything here writes into a {@link GuestMemory} and returns plain values; the tables are
 * unit-tested by parsing them back.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { MmioDeviceSpec } from "./boot.ts";
import { intxGsi, PCI_SLOTS, type PciLayout } from "./pci.ts";

/** Guest-physical region of the tables (the PC BIOS area, where Linux also scans for the RSDP). */
export const AcpiLayout = {
  /** The RSDP (16-byte aligned, inside 0xE0000–0xFFFFF). */
  RSDP: 0xe0000,
  /** End of the region the tables may use (exclusive). */
  END: 0x100000,
} as const;

/** Local APIC base (the architectural default). */
export const LAPIC_ADDRESS = 0xfee00000;
/** I/O APIC base (the architectural default; KVM's in-kernel I/O APIC sits here). */
export const IOAPIC_ADDRESS = 0xfec00000;

/**
 * The I/O ports of the hardware-reduced ACPI registers the FADT declares (ACPI 6.5 §4.8.3.7,
 * §4.8.3.6): writing `SLP_EN | SLP_TYP` to the sleep control register enters a sleep state (S5 is
 * power off); writing {@link ACPI_RESET_VALUE} to the reset register resets the machine.
 */
export const AcpiPort = {
  SLEEP_CONTROL: 0x600,
  SLEEP_STATUS: 0x601,
  RESET: 0x602,
} as const;
/** The value the guest writes to {@link AcpiPort.RESET} to reset. */
export const ACPI_RESET_VALUE = 0x01;
/** Sleep control register: SLP_EN (bit 5). */
export const ACPI_SLP_EN = 0x20;
/** Sleep control register: the SLP_TYP field (bits 4:2). */
export const ACPI_SLP_TYP_SHIFT = 2;
/** The SLP_TYP of S5 (soft off) this DSDT's `\_S5` package declares. */
export const ACPI_S5_SLP_TYP = 5;

/** FADT flags (ACPI 6.5 Table 5.10). */
const FADT_PWR_BUTTON = 1 << 4;
const FADT_SLP_BUTTON = 1 << 5;
const FADT_RESET_REG_SUP = 1 << 10;
const FADT_HW_REDUCED_ACPI = 1 << 20;
/** IA-PC boot architecture flags (ACPI 6.5 Table 5.11): no 8042, no VGA, no CMOS RTC. */
const IAPC_VGA_NOT_PRESENT = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5;
/** Generic Address Structure: system I/O space. */
const GAS_SYSTEM_IO = 1;
/** GAS access size: byte. */
const GAS_BYTE_ACCESS = 1;

const HEADER_SIZE = 36;
const OEM_ID = "VIRTTS";
const OEM_TABLE_ID = "VIRTIOTS";
const CREATOR_ID = "VTTS";

/** Options of {@link writeAcpiTables}. */
export interface AcpiOptions {
  /** Number of vCPUs; their APIC ids are 0 to `cpus - 1` (at most 255). */
  cpus: number;
  /** The virtio-mmio devices to declare in the DSDT (none when they are on the command line). */
  virtioMmio: readonly MmioDeviceSpec[];
  /** The PCI host bridge's resources: declares `\_SB.PCI0` and writes an MCFG table. */
  pci?: PciLayout;
}

/** A table as written. */
export interface AcpiTable {
  /** The 4-character signature (`"RSD PTR "` for the RSDP). */
  signature: string;
  /** Guest-physical address. */
  addr: number;
  /** Length in bytes. */
  length: number;
}

/** Where {@link writeAcpiTables} put things. */
export interface AcpiInfo {
  /** The RSDP address (for `boot_params.acpi_rsdp_addr`). */
  rsdp: number;
  /** Every table, RSDP first. */
  tables: AcpiTable[];
}

/**
 * The 8-bit sum that makes a table's bytes add up to 0 modulo 256.
 *
 * @param bytes The table with its checksum byte set to 0.
 * @returns The checksum byte.
 */
export function acpiChecksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

function ascii(v: DataView, offset: number, text: string, width: number): void {
  for (let i = 0; i < width; i++) {
    v.setUint8(offset + i, i < text.length ? text.charCodeAt(i) : 0x20);
  }
}

/** A table with its standard header (ACPI 6.5 §5.2.6); the checksum is set by {@link seal}. */
function table(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const t = new Uint8Array(HEADER_SIZE + body.byteLength);
  const v = new DataView(t.buffer);
  ascii(v, 0, signature, 4);
  v.setUint32(4, t.byteLength, true);
  v.setUint8(8, revision);
  ascii(v, 10, OEM_ID, 6);
  ascii(v, 16, OEM_TABLE_ID, 8);
  v.setUint32(24, 1, true); // OEM revision
  ascii(v, 28, CREATOR_ID, 4);
  v.setUint32(32, 1, true); // creator revision
  t.set(body, HEADER_SIZE);
  return seal(t, 9);
}

function seal(t: Uint8Array, checksumOffset: number): Uint8Array {
  t[checksumOffset] = 0;
  t[checksumOffset] = acpiChecksum(t);
  return t;
}

/** Generic Address Structure of one byte-wide I/O port (ACPI 6.5 §5.2.3.2). */
function ioGas(v: DataView, offset: number, port: number): void {
  v.setUint8(offset, GAS_SYSTEM_IO);
  v.setUint8(offset + 1, 8); // register bit width
  v.setUint8(offset + 2, 0); // bit offset
  v.setUint8(offset + 3, GAS_BYTE_ACCESS);
  v.setBigUint64(offset + 4, BigInt(port), true);
}

/**
 * The FADT body (revision 6.5, 276 bytes with the header): hardware-reduced, with the sleep
 * control/status and reset registers of {@link AcpiPort} and the DSDT address.
 */
function fadt(dsdt: number): Uint8Array {
  const t = new Uint8Array(276 - HEADER_SIZE);
  const v = new DataView(t.buffer);
  const at = (o: number) => o - HEADER_SIZE;
  v.setUint32(at(40), dsdt, true); // DSDT (32-bit)
  v.setUint16(at(109), IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT, true);
  v.setUint32(
    at(112),
    FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP | FADT_PWR_BUTTON | FADT_SLP_BUTTON,
    true,
  );
  ioGas(v, at(116), AcpiPort.RESET);
  v.setUint8(at(128), ACPI_RESET_VALUE);
  v.setUint8(at(131), 5); // FADT minor version: 6.5
  v.setBigUint64(at(140), BigInt(dsdt), true); // X_DSDT
  ioGas(v, at(244), AcpiPort.SLEEP_CONTROL);
  ioGas(v, at(256), AcpiPort.SLEEP_STATUS);
  ascii(v, at(268), "VIRTIOTS", 8); // hypervisor vendor identity
  return t;
}

/** The MADT body: LAPIC address, then one Processor Local APIC per vCPU and the I/O APIC. */
function madt(cpus: number): Uint8Array {
  const t = new Uint8Array(8 + cpus * 8 + 12);
  const v = new DataView(t.buffer);
  v.setUint32(0, LAPIC_ADDRESS, true);
  v.setUint32(4, 0, true); // no PCAT_COMPAT: the 8259s are not part of this machine's ACPI view
  let o = 8;
  for (let id = 0; id < cpus; id++) {
    v.setUint8(o, 0); // Processor Local APIC (ACPI 6.5 §5.2.12.2)
    v.setUint8(o + 1, 8);
    v.setUint8(o + 2, id); // ACPI processor UID
    v.setUint8(o + 3, id); // APIC id
    v.setUint32(o + 4, 1, true); // enabled
    o += 8;
  }
  v.setUint8(o, 1); // I/O APIC (§5.2.12.3)
  v.setUint8(o + 1, 12);
  v.setUint8(o + 2, 0); // its id: what KVM's I/O APIC ID register holds after reset
  v.setUint32(o + 4, IOAPIC_ADDRESS, true);
  v.setUint32(o + 8, 0, true); // global system interrupt base
  return t;
}

// ---- AML (ACPI 6.5 §20.2) ----------------------------------------------------------------------

/** A PkgLength followed by its contents: the length counts its own encoding (§20.2.4). */
function pkg(contents: number[]): number[] {
  const n = contents.length;
  if (n + 1 < 0x40) return [n + 1, ...contents];
  for (let extra = 1; extra <= 3; extra++) {
    const total = n + 1 + extra;
    if (total < 1 << (4 + 8 * extra)) {
      const head = (extra << 6) | (total & 0x0f);
      const tail: number[] = [];
      for (let i = 0; i < extra; i++) tail.push((total >> (4 + 8 * i)) & 0xff);
      return [head, ...tail, ...contents];
    }
  }
  throw new RangeError(`AML package of ${n} bytes is too large`);
}

function nameSeg(name: string): number[] {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(name)) throw new RangeError(`Bad AML name segment ${name}`);
  return [...name.padEnd(4, "_")].map((c) => c.charCodeAt(0));
}

/** A name: `\` then segments separated by `.` (root-relative), or one segment. */
function nameString(name: string): number[] {
  const root = name.startsWith("\\");
  const segs = (root ? name.slice(1) : name).split(".").filter((s) => s);
  const prefix = root ? [0x5c] : [];
  if (segs.length === 1) return [...prefix, ...nameSeg(segs[0])];
  if (segs.length === 2) return [...prefix, 0x2e, ...nameSeg(segs[0]), ...nameSeg(segs[1])];
  return [...prefix, 0x2f, segs.length, ...segs.flatMap(nameSeg)];
}

function amlInteger(n: number): number[] {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`AML integer ${n}`);
  if (n === 0) return [0x00]; // ZeroOp
  if (n === 1) return [0x01]; // OneOp
  if (n <= 0xff) return [0x0a, n]; // BytePrefix
  if (n <= 0xffff) return [0x0b, n & 0xff, n >> 8]; // WordPrefix
  return [0x0c, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24]; // DWordPrefix
}

function amlString(s: string): number[] {
  return [0x0d, ...[...s].map((c) => c.charCodeAt(0) & 0x7f), 0x00];
}

/**
 * A compressed EISA id as AML encodes `EisaId("PNP0501")`: three letters of 5 bits and four hex
 * digits, stored big-endian.
 */
export function eisaId(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new RangeError(`Bad EISA id ${id}`);
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const v = ((c(0) << 26) | (c(1) << 21) | (c(2) << 16) | parseInt(id.slice(3), 16)) >>> 0;
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

function amlName(name: string, value: number[]): number[] {
  return [0x08, ...nameString(name), ...value]; // NameOp
}

function amlScope(name: string, terms: number[]): number[] {
  return [0x10, ...pkg([...nameString(name), ...terms])]; // ScopeOp
}

function amlDevice(name: string, terms: number[]): number[] {
  return [0x5b, 0x82, ...pkg([...nameString(name), ...terms])]; // DeviceOp
}

function amlPackage(elements: number[][]): number[] {
  return [0x12, ...pkg([elements.length, ...elements.flat()])]; // PackageOp
}

/** A ResourceTemplate: a Buffer holding the descriptors and an End Tag (§6.4.2.9). */
function resourceTemplate(descriptors: number[][]): number[] {
  const bytes = [...descriptors.flat(), 0x79, 0x00];
  return [0x11, ...pkg([...amlInteger(bytes.length), ...bytes])]; // BufferOp
}

const u16 = (n: number) => [n & 0xff, (n >> 8) & 0xff];
const u32 = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24];

/** I/O port descriptor, 16-bit decode (§6.4.2.5). */
function ioPorts(base: number, length: number): number[] {
  return [0x47, 0x01, ...u16(base), ...u16(base), 0x01, length];
}

/** General flags of an address space descriptor: producer, positive decode, min and max fixed. */
const ADDRESS_FIXED_PRODUCER = 0x0c;
const u64 = (n: number) => [...u32(n % 0x1_0000_0000), ...u32(Math.floor(n / 0x1_0000_0000))];

/** Word address space descriptor (§6.4.3.5.3): `type` 1 I/O, 2 bus numbers. */
function wordAddress(type: number, typeFlags: number, min: number, length: number): number[] {
  return [
    0x88,
    ...u16(13),
    type,
    ADDRESS_FIXED_PRODUCER,
    typeFlags,
    ...u16(0), // granularity
    ...u16(min),
    ...u16(min + length - 1),
    ...u16(0), // translation offset
    ...u16(length),
  ];
}

/** DWord memory descriptor (§6.4.3.5.2): read/write, non-cacheable. */
function dwordMemory(min: number, length: number): number[] {
  return [
    0x87,
    ...u16(23),
    0, // memory
    ADDRESS_FIXED_PRODUCER,
    0x01, // read/write, non-cacheable
    ...u32(0),
    ...u32(min),
    ...u32(min + length - 1),
    ...u32(0),
    ...u32(length),
  ];
}

/** QWord memory descriptor (§6.4.3.5.1): read/write, prefetchable. */
function qwordMemory(min: number, length: number): number[] {
  return [
    0x8a,
    ...u16(43),
    0, // memory
    ADDRESS_FIXED_PRODUCER,
    0x07, // read/write, prefetchable
    ...u64(0),
    ...u64(min),
    ...u64(min + length - 1),
    ...u64(0),
    ...u64(length),
  ];
}

/**
 * The PCI host bridge (`\_SB.PCI0`) and the motherboard resource reserving its ECAM window.
 * `_PRT` maps pin `p` of slot `s` to GSI `intxFirstGsi + (s + p) % 8` (PCI Firmware 3.2
 * §4.6.1: an entry with a zero Source names the GSI directly; such lines are level-triggered,
 * active low).
 */
function pciHostBridgeAml(pci: PciLayout): number[] {
  const crs = resourceTemplate([
    wordAddress(2, 0, 0, pci.buses),
    ioPorts(0xcf8, 8),
    wordAddress(1, 0x03, pci.io.base, pci.io.size),
    dwordMemory(pci.mmio32.base, pci.mmio32.size),
    qwordMemory(pci.mmio64.base, pci.mmio64.size),
  ]);
  const prt: number[][] = [];
  for (let slot = 1; slot < PCI_SLOTS; slot++) {
    for (let pin = 0; pin < 4; pin++) {
      prt.push(amlPackage([
        amlInteger(slot * 0x10000 + 0xffff),
        amlInteger(pin),
        [0x00], // Source: none (GSI)
        amlInteger(intxGsi(slot, pin, pci.intxFirstGsi)),
      ]));
    }
  }
  const pci0 = amlDevice("PCI0", [
    ...amlName("_HID", amlInteger(eisaId("PNP0A08"))),
    ...amlName("_CID", amlInteger(eisaId("PNP0A03"))),
    ...amlName("_SEG", amlInteger(0)),
    ...amlName("_BBN", amlInteger(0)),
    ...amlName("_UID", amlInteger(0)),
    ...amlName("_CRS", crs),
    ...amlName("_PRT", amlPackage(prt)),
  ]);
  const mbrd = amlDevice("MBRD", [
    ...amlName("_HID", amlInteger(eisaId("PNP0C02"))),
    ...amlName("_UID", amlInteger(0)),
    ...amlName("_CRS", resourceTemplate([memory32Fixed(pci.ecamBase, pci.buses * 0x10_0000)])),
  ]);
  return [...pci0, ...mbrd];
}

/** The MCFG body (PCI Firmware 3.2 §4.1.2): 8 reserved bytes and one ECAM allocation. */
function mcfg(pci: PciLayout): Uint8Array {
  const t = new Uint8Array(8 + 16);
  const v = new DataView(t.buffer);
  v.setBigUint64(8, BigInt(pci.ecamBase), true);
  v.setUint16(16, 0, true); // segment group
  v.setUint8(18, 0); // start bus
  v.setUint8(19, pci.buses - 1); // end bus
  return t;
}

/** IRQ descriptor without flags: edge, active high (§6.4.2.1). */
function irqNoFlags(irq: number): number[] {
  return [0x22, ...u16(1 << irq)];
}

/** 32-bit fixed memory range descriptor, read/write (§6.4.3.4). */
function memory32Fixed(base: number, length: number): number[] {
  return [0x86, ...u16(9), 0x01, ...u32(base), ...u32(length)];
}

/** Extended interrupt descriptor: consumer, edge-triggered, active high, exclusive (§6.4.3.6). */
function edgeInterrupt(gsi: number): number[] {
  return [0x89, ...u16(6), 0x03, 1, ...u32(gsi)];
}

/**
 * The DSDT's AML: `\_SB.COM1` (PNP0501 at 0x3f8, IRQ 4), one `\_SB.Vnnn` per virtio-mmio device
 * (LNRO0005 with its window and edge-triggered interrupt: our interrupts come from irqfd, which
 * pulses the line) and `\_S5` for power off.
 *
 * @param devices The virtio-mmio devices.
 * @param pci The PCI host bridge's resources, to declare `\_SB.PCI0` and `\_SB.MBRD`.
 * @returns The AML bytes (the DSDT body).
 */
export function dsdtAml(devices: readonly MmioDeviceSpec[], pci?: PciLayout): Uint8Array {
  const com1 = amlDevice("COM1", [
    ...amlName("_HID", amlInteger(eisaId("PNP0501"))),
    ...amlName("_UID", amlInteger(1)),
    ...amlName("_CRS", resourceTemplate([ioPorts(0x3f8, 8), irqNoFlags(4)])),
  ]);
  const virtio = devices.map(({ addr, size = 0x1000, irq }, i) =>
    amlDevice(`V${i.toString(16).toUpperCase().padStart(3, "0")}`, [
      ...amlName("_HID", amlString("LNRO0005")),
      ...amlName("_UID", amlInteger(i)),
      ...amlName("_CRS", resourceTemplate([memory32Fixed(addr, size), edgeInterrupt(irq)])),
    ])
  );
  const s5 = amlName("\\_S5", amlPackage([amlInteger(ACPI_S5_SLP_TYP), [0], [0], [0]]));
  const host = pci === undefined ? [] : pciHostBridgeAml(pci);
  return Uint8Array.from([...amlScope("\\_SB", [...com1, ...virtio.flat(), ...host]), ...s5]);
}

/**
 * Writes RSDP, XSDT, FADT, MADT, DSDT (and MCFG with PCI) at {@link AcpiLayout.RSDP}.
 *
 * @example Two vCPUs and one device
 * ```ts
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { writeAcpiTables } from "./acpi.ts";
 * const memory = GuestMemory.create(2 << 20);
 * const info = writeAcpiTables(memory, { cpus: 2, virtioMmio: [{ addr: 0xd0000000, irq: 5 }] });
 * if (info.tables.map((t) => t.signature).join() !== "RSD PTR ,XSDT,FACP,APIC,DSDT") {
 *   throw new Error("unexpected tables");
 * }
 * ```
 *
 * @param memory Guest memory covering {@link AcpiLayout} (RAM from 0 up to at least 1 MiB).
 * @param options vCPUs and devices.
 * @returns The RSDP address and where each table went.
 * @throws {RangeError} For a CPU count outside 1–254, a PCI bus count outside 1–256, or tables
 *   that outgrow the region.
 */
export function writeAcpiTables(memory: GuestMemory, options: AcpiOptions): AcpiInfo {
  const { cpus, pci } = options;
  if (pci !== undefined && (!Number.isInteger(pci.buses) || pci.buses < 1 || pci.buses > 256)) {
    throw new RangeError(`${pci.buses} PCI buses: 1 to 256 are possible`);
  }
  // xAPIC ids are 8 bits and 0xff is the broadcast id.
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) {
    throw new RangeError(`${cpus} vCPUs: 1 to 254 are possible`);
  }
  const align = (n: number) => Math.ceil(n / 16) * 16;
  const rsdpAddr = AcpiLayout.RSDP;
  const xsdtAddr = align(rsdpAddr + 36);
  const fadtAddr = align(xsdtAddr + HEADER_SIZE + 3 * 8);
  const madtAddr = align(fadtAddr + 276);
  const madtTable = table("APIC", 5, madt(cpus));
  const dsdtAddr = align(madtAddr + madtTable.byteLength);
  const dsdtTable = table("DSDT", 2, dsdtAml(options.virtioMmio, pci));
  const mcfgAddr = align(dsdtAddr + dsdtTable.byteLength);
  const mcfgTable = pci === undefined ? undefined : table("MCFG", 1, mcfg(pci));
  const end = mcfgTable === undefined
    ? dsdtAddr + dsdtTable.byteLength
    : mcfgAddr + mcfgTable.byteLength;
  if (end > AcpiLayout.END) {
    throw new RangeError("The ACPI tables do not fit below 1 MiB");
  }
  const fadtTable = table("FACP", 6, fadt(dsdtAddr));
  const pointers = [fadtAddr, madtAddr, ...(mcfgTable === undefined ? [] : [mcfgAddr])];
  const xsdtBody = new Uint8Array(8 * pointers.length);
  const xv = new DataView(xsdtBody.buffer);
  pointers.forEach((p, i) => xv.setBigUint64(8 * i, BigInt(p), true));
  const xsdtTable = table("XSDT", 1, xsdtBody);

  // RSDP (ACPI 6.5 §5.2.5.3): revision 2, 36 bytes; the first checksum covers the first 20.
  const rsdp = new Uint8Array(36);
  const rv = new DataView(rsdp.buffer);
  ascii(rv, 0, "RSD PTR ", 8);
  ascii(rv, 9, OEM_ID, 6);
  rv.setUint8(15, 2);
  rv.setUint32(20, 36, true);
  rv.setBigUint64(24, BigInt(xsdtAddr), true);
  rv.setUint8(8, acpiChecksum(rsdp.subarray(0, 20)));
  seal(rsdp, 32);

  const placed: [string, number, Uint8Array][] = [
    ["RSD PTR ", rsdpAddr, rsdp],
    ["XSDT", xsdtAddr, xsdtTable],
    ["FACP", fadtAddr, fadtTable],
    ["APIC", madtAddr, madtTable],
    ["DSDT", dsdtAddr, dsdtTable],
  ];
  if (mcfgTable !== undefined) placed.push(["MCFG", mcfgAddr, mcfgTable]);
  memory.fill(rsdpAddr, end - rsdpAddr, 0);
  for (const [, addr, bytes] of placed) memory.write(addr, bytes);
  return {
    rsdp: rsdpAddr,
    tables: placed.map(([signature, addr, bytes]) => ({ signature, addr, length: bytes.length })),
  };
}
