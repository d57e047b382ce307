/**
 * Booting Linux on x86-64 without firmware, in pure TypeScript: the bzImage loader (the x86
 * boot protocol, `Documentation/arch/x86/boot.rst`), the "zero page" (`struct boot_params`)
 * with its e820 memory map, the kernel command line and the initramfs, plus the CPU state of the
 * 64-bit entry point: identity-mapped page tables, a flat GDT, and the register values.
 *
 * Nothing here needs KVM: it writes into a {@link GuestMemory} and returns plain values, so it
 * is unit-tested against real kernels without a VM.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { KvmRegs, KvmSegment, KvmSregs } from "./abi.ts";

/** Guest-physical addresses used by the loader (a conventional PC layout below 1 MiB). */
export const BootLayout = {
  /** The GDT (5 entries). */
  GDT: 0x500,
  /** An empty IDT (the kernel loads its own before enabling interrupts). */
  IDT: 0x520,
  /** `struct boot_params`, the "zero page"; RSI points here at entry. */
  ZERO_PAGE: 0x7000,
  /** Initial stack pointer. */
  STACK: 0x8ff0,
  /** Page-map level 4 table; CR3. */
  PML4: 0x9000,
  /** Page-directory-pointer table. */
  PDPT: 0xa000,
  /** Page directory: 512 × 2 MiB pages, identity-mapping the first 1 GiB. */
  PD: 0xb000,
  /** The kernel command line. */
  CMDLINE: 0x20000,
  /** Start of the extended BIOS data area: the end of low RAM in the e820 map. */
  EBDA: 0x9fc00,
  /** Start of the BIOS area, reserved up to 1 MiB (the ACPI tables live at its bottom). */
  BIOS: 0xe0000,
  /** Where the protected-mode kernel is loaded (`code32_start`). */
  KERNEL: 0x100000,
  /** End of the identity mapping made by the page tables (1 GiB). */
  IDENTITY_MAP_END: 0x40000000,
} as const;

/** GDT selectors of the 64-bit boot protocol (`__BOOT_CS`, `__BOOT_DS`) and our TSS. */
export const BootSelector = { CODE: 0x10, DATA: 0x18, TSS: 0x20 } as const;

/**
 * The GDT written at {@link BootLayout.GDT}: null, null, flat 64-bit code (`__BOOT_CS`),
 * flat data (`__BOOT_DS`), and a 64-bit busy TSS (VM entry needs a usable TR).
 */
export const BOOT_GDT: readonly bigint[] = [
  0n,
  0n,
  0x00af9b000000ffffn, // code: G, L, P, DPL 0, S, type 0xb (execute/read, accessed)
  0x00cf93000000ffffn, // data: G, D/B, P, DPL 0, S, type 0x3 (read/write, accessed)
  0x008f8b000000ffffn, // TSS:  G, P, type 0xb (64-bit busy TSS)
];

/** Offsets in `struct boot_params` (`arch/x86/include/uapi/asm/bootparam.h`). */
export const BootParamsOffset = {
  /** `acpi_rsdp_addr` (u64): where the RSDP is, so that the kernel need not scan for it. */
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  sentinel: 0x1ef,
  /** Start of `struct setup_header` (`hdr`). */
  setupHeader: 0x1f1,
  setupSects: 0x1f1,
  vidMode: 0x1fa,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  kernelVersion: 0x20e,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  code32Start: 0x214,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  prefAddress: 0x258,
  initSize: 0x260,
  /** End of the part of `boot_params` the setup header may cover. */
  setupHeaderMaxEnd: 0x290,
  e820Table: 0x2d0,
} as const;

/** Size of `struct boot_params`. */
export const BOOT_PARAMS_SIZE = 4096;
/** Maximum entries of `boot_params.e820_table`. */
export const E820_MAX_ENTRIES = 128;
/** "HdrS": the setup header magic at 0x202. */
export const HDRS_MAGIC = 0x53726448;
/** Oldest boot protocol accepted: 2.06 (`cmdline_size`). */
export const MIN_BOOT_PROTOCOL = 0x206;
/** `loadflags`: the protected-mode kernel is loaded at 0x100000. */
export const LOADED_HIGH = 0x01;
/** `loadflags`: `heap_end_ptr` is valid. */
export const CAN_USE_HEAP = 0x80;
/** `xloadflags`: the kernel has the 64-bit entry point at `code32_start + 0x200`. */
export const XLF_KERNEL_64 = 0x01;
/** `type_of_loader` for a boot loader without an assigned id. */
export const LOADER_TYPE_UNDEFINED = 0xff;

/** e820 range types. */
export const E820Type = { RAM: 1, RESERVED: 2, ACPI: 3, NVS: 4, UNUSABLE: 5 } as const;

/** One e820 range. */
export interface E820Entry {
  /** Guest-physical start. */
  addr: number;
  /** Length in bytes. */
  size: number;
  /** {@link E820Type}. */
  type: number;
}

/** Why an image cannot be booted. */
export type BootErrorCode =
  /** The file is too short to hold a setup header, or its parts exceed the file. */
  | "Truncated"
  /** No "HdrS" at 0x202 or no 0xAA55 boot flag: not a bzImage. */
  | "BadMagic"
  /** Boot protocol older than 2.06. */
  | "ProtocolTooOld"
  /** A zImage (not loaded high), or no 64-bit entry point. */
  | "Unsupported"
  /** The command line is longer than the kernel accepts. */
  | "CommandLineTooLong"
  /** Kernel, initramfs or tables do not fit in guest RAM. */
  | "NoRoom";

/** A kernel image the loader refuses, or a layout that does not fit. */
export class BootError extends Error {
  /** What is wrong. */
  readonly code: BootErrorCode;

  /**
   * Creates the error.
   *
   * @param code What is wrong.
   * @param message Details.
   */
  constructor(code: BootErrorCode, message: string) {
    super(message);
    this.name = "BootError";
    this.code = code;
  }
}

/** The fields of a bzImage setup header the loader uses. */
export interface BzImageHeader {
  /** Number of 512-byte setup sectors after the boot sector (0 means 4). */
  setupSects: number;
  /** Boot protocol version, such as 0x20f for 2.15. */
  protocol: number;
  /** `loadflags`. */
  loadflags: number;
  /** `xloadflags` (0 before protocol 2.12). */
  xloadflags: number;
  /** Highest address the initramfs may occupy (inclusive). */
  initrdAddrMax: number;
  /** Alignment the kernel needs if relocated. */
  kernelAlignment: number;
  /** Whether the kernel is relocatable. */
  relocatable: boolean;
  /** Maximum command line length, excluding the NUL. */
  cmdlineSize: number;
  /** Preferred load address (for a relocatable kernel). */
  prefAddress: number;
  /** Memory the kernel needs from its load address during decompression. */
  initSize: number;
  /** The kernel version string, if the image has one. */
  kernelVersion: string;
  /** End offset (exclusive) of the setup header in the image. */
  headerEnd: number;
}

/** A parsed bzImage. */
export interface BzImage {
  /** The header fields. */
  header: BzImageHeader;
  /** The raw setup header bytes, from 0x1f1 to {@link BzImageHeader.headerEnd}. */
  setupHeader: Uint8Array;
  /** The protected-mode kernel (aliases the image). */
  kernel: Uint8Array;
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * Parses and checks a bzImage (boot protocol ≥ 2.06, loaded high, with a 64-bit entry).
 *
 * @example Reject something that is not a kernel
 * ```ts
 * import assert from "node:assert/strict";
 * import { BootError, parseBzImage } from "./boot.ts";
 * assert.throws(
 *   () => parseBzImage(new Uint8Array(4096)),
 *   (e) => e instanceof BootError && e.code === "BadMagic",
 * );
 * ```
 *
 * @param image The whole bzImage file.
 * @returns The header and the protected-mode kernel.
 * @throws {BootError} When the image is not a bootable 64-bit bzImage.
 */
export function parseBzImage(image: Uint8Array): BzImage {
  const O = BootParamsOffset;
  if (image.byteLength < 0x264) {
    throw new BootError("Truncated", "Image too short for a setup header");
  }
  const v = dv(image);
  if (v.getUint32(O.header, true) !== HDRS_MAGIC || v.getUint16(O.bootFlag, true) !== 0xaa55) {
    throw new BootError("BadMagic", "Not a bzImage: no HdrS magic at 0x202 or no 0xAA55 boot flag");
  }
  const protocol = v.getUint16(O.version, true);
  if (protocol < MIN_BOOT_PROTOCOL) {
    throw new BootError(
      "ProtocolTooOld",
      `Boot protocol ${protocol >> 8}.${(protocol & 0xff).toString().padStart(2, "0")} is older ` +
        "than 2.06",
    );
  }
  const loadflags = v.getUint8(O.loadflags);
  if ((loadflags & LOADED_HIGH) === 0) {
    throw new BootError("Unsupported", "A zImage (not LOADED_HIGH) cannot be booted");
  }
  const xloadflags = protocol >= 0x20c ? v.getUint16(O.xloadflags, true) : 0;
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw new BootError("Unsupported", "The kernel has no 64-bit entry point (XLF_KERNEL_64)");
  }
  const headerEnd = Math.min(0x202 + v.getUint8(O.jump + 1), O.setupHeaderMaxEnd);
  let setupSects = v.getUint8(O.setupSects);
  if (setupSects === 0) setupSects = 4;
  const kernelStart = (setupSects + 1) * 512;
  if (kernelStart >= image.byteLength || headerEnd > image.byteLength) {
    throw new BootError("Truncated", `Setup (${kernelStart} bytes) exceeds the image`);
  }
  const protocolAtLeast = (p: number) => protocol >= p;
  const header: BzImageHeader = {
    setupSects,
    protocol,
    loadflags,
    xloadflags,
    initrdAddrMax: protocolAtLeast(0x203) ? v.getUint32(O.initrdAddrMax, true) : 0x37ffffff,
    kernelAlignment: protocolAtLeast(0x205) ? v.getUint32(O.kernelAlignment, true) : 0,
    relocatable: protocolAtLeast(0x205) && v.getUint8(O.relocatableKernel) !== 0,
    cmdlineSize: v.getUint32(O.cmdlineSize, true),
    prefAddress: protocolAtLeast(0x20a) ? Number(v.getBigUint64(O.prefAddress, true)) : 0x100000,
    initSize: protocolAtLeast(0x20a) ? v.getUint32(O.initSize, true) : 0,
    kernelVersion: readKernelVersion(image, v.getUint16(O.kernelVersion, true)),
    headerEnd,
  };
  return {
    header,
    setupHeader: image.subarray(O.setupHeader, headerEnd),
    kernel: image.subarray(kernelStart),
  };
}

function readKernelVersion(image: Uint8Array, ptr: number): string {
  if (ptr === 0) return "";
  const at = ptr + 0x200;
  if (at >= image.byteLength) return "";
  let end = at;
  while (end < image.byteLength && end < at + 256 && image[end] !== 0) end++;
  return new TextDecoder().decode(image.subarray(at, end));
}

/**
 * The e820 map of a guest with `ramSize` bytes of RAM from address 0: low RAM up to the EBDA,
 * the EBDA and BIOS area reserved, and RAM from 1 MiB to the end.
 *
 * @param ramSize Bytes of RAM (at least 2 MiB, at most 3 GiB: the MMIO gap starts there).
 * @returns The entries, in address order.
 * @throws {BootError} For a size outside that range.
 */
export function e820Map(ramSize: number): E820Entry[] {
  if (!Number.isSafeInteger(ramSize) || ramSize < 2 << 20 || ramSize > 0xc0000000) {
    throw new BootError("NoRoom", `RAM size ${ramSize} is outside 2 MiB..3 GiB`);
  }
  return [
    { addr: 0, size: BootLayout.EBDA, type: E820Type.RAM },
    { addr: BootLayout.EBDA, size: 0xa0000 - BootLayout.EBDA, type: E820Type.RESERVED },
    { addr: BootLayout.BIOS, size: BootLayout.KERNEL - BootLayout.BIOS, type: E820Type.RESERVED },
    { addr: BootLayout.KERNEL, size: ramSize - BootLayout.KERNEL, type: E820Type.RAM },
  ];
}

/** A virtio-mmio device as the kernel command line declares it. */
export interface MmioDeviceSpec {
  /** Guest-physical base of the register window. */
  addr: number;
  /** Window size in bytes (default 0x1000). */
  size?: number;
  /** Interrupt line (GSI). */
  irq: number;
}

/**
 * `virtio_mmio.device=<size>@<addr>:<irq>` arguments for `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`.
 *
 * @example
 * ```ts
 * import { virtioMmioCmdline } from "./boot.ts";
 * const s = virtioMmioCmdline([{ addr: 0xd0000000, irq: 5 }]);
 * if (s !== "virtio_mmio.device=4K@0xd0000000:5") throw new Error(s);
 * ```
 *
 * @param devices The devices.
 * @returns The arguments, space-separated.
 */
export function virtioMmioCmdline(devices: readonly MmioDeviceSpec[]): string {
  return devices.map(({ addr, size = 0x1000, irq }) => {
    const sz = size % 1024 === 0 ? `${size / 1024}K` : String(size);
    return `virtio_mmio.device=${sz}@0x${addr.toString(16)}:${irq}`;
  }).join(" ");
}

/** Options of {@link loadLinux}. */
export interface LoadLinuxOptions {
  /** The bzImage file. */
  kernel: Uint8Array;
  /** The initramfs (a cpio archive, possibly compressed), if any. */
  initrd?: Uint8Array;
  /** The kernel command line. */
  cmdline: string;
  /** Bytes of RAM from address 0 (default: the memory's total size). */
  ramSize?: number;
  /** Where the ACPI RSDP is, if the guest has ACPI tables (`boot_params.acpi_rsdp_addr`). */
  acpiRsdp?: number;
  /**
   * More ranges to declare reserved in the e820 map, above the RAM (e.g. the PCI ECAM window,
   * which Linux only uses when firmware reserved it).
   */
  reserved?: readonly { addr: number; size: number }[];
}

/** Where things ended up, and the entry state. */
export interface BootInfo {
  /** The parsed image. */
  image: BzImage;
  /** Entry point (`startup_64`): load address + 0x200. */
  entry: number;
  /** Address of the zero page (RSI at entry). */
  bootParams: number;
  /** Address of the command line. */
  cmdline: number;
  /** Initramfs address and size (0, 0 without one). */
  initrd: { addr: number; size: number };
  /** The e820 map written into the zero page. */
  e820: E820Entry[];
  /** CR3: the PML4 address. */
  cr3: number;
  /** Initial stack pointer. */
  stack: number;
}

/**
 * Writes the identity-mapping page tables (PML4 → PDPT → PD of 512 × 2 MiB pages: the first
 * 1 GiB) at {@link BootLayout.PML4}.
 *
 * @param memory Guest memory.
 */
export function writePageTables(memory: GuestMemory): void {
  const L = BootLayout;
  memory.fill(L.PML4, 0x3000, 0);
  memory.writeU64(L.PML4, BigInt(L.PDPT) | 0x3n); // present | writable
  memory.writeU64(L.PDPT, BigInt(L.PD) | 0x3n);
  for (let i = 0; i < 512; i++) {
    memory.writeU64(L.PD + i * 8, (BigInt(i) << 21n) | 0x83n); // present | writable | 2 MiB
  }
}

/**
 * Writes {@link BOOT_GDT} at {@link BootLayout.GDT} and an empty IDT at {@link BootLayout.IDT}.
 *
 * @param memory Guest memory.
 */
export function writeGdt(memory: GuestMemory): void {
  BOOT_GDT.forEach((d, i) => memory.writeU64(BootLayout.GDT + i * 8, d));
  memory.writeU64(BootLayout.IDT, 0n);
}

/**
 * Builds `struct boot_params` for an image: the image's setup header, then the loader fields,
 * the command line pointer, the initramfs and the e820 map.
 *
 * @param image The parsed image.
 * @param fields Where the command line, initramfs and RSDP are, and the e820 map.
 * @returns The 4096-byte zero page.
 * @throws {BootError} When the map has more than 128 entries.
 */
export function buildBootParams(
  image: BzImage,
  fields: {
    cmdline: number;
    initrd: { addr: number; size: number };
    e820: readonly E820Entry[];
    acpiRsdp?: number;
  },
): Uint8Array {
  const O = BootParamsOffset;
  const zp = new Uint8Array(BOOT_PARAMS_SIZE);
  const v = dv(zp);
  zp.set(image.setupHeader, O.setupHeader);
  v.setUint16(O.vidMode, 0xffff, true); // "normal" VGA: no video mode switch
  v.setUint8(O.typeOfLoader, LOADER_TYPE_UNDEFINED);
  v.setUint8(O.loadflags, image.header.loadflags & ~CAN_USE_HEAP);
  v.setUint32(O.code32Start, BootLayout.KERNEL, true);
  v.setUint32(O.cmdLinePtr, fields.cmdline, true);
  v.setUint32(O.extCmdLinePtr, 0, true);
  v.setUint32(O.ramdiskImage, fields.initrd.addr >>> 0, true);
  v.setUint32(O.ramdiskSize, fields.initrd.size >>> 0, true);
  v.setUint32(O.extRamdiskImage, Math.floor(fields.initrd.addr / 2 ** 32), true);
  v.setUint32(O.extRamdiskSize, Math.floor(fields.initrd.size / 2 ** 32), true);
  v.setBigUint64(O.acpiRsdpAddr, BigInt(fields.acpiRsdp ?? 0), true);
  if (fields.e820.length > E820_MAX_ENTRIES) {
    throw new BootError("NoRoom", `${fields.e820.length} e820 entries (at most 128)`);
  }
  v.setUint8(O.e820Entries, fields.e820.length);
  fields.e820.forEach((e, i) => {
    const at = O.e820Table + i * 20;
    v.setBigUint64(at, BigInt(e.addr), true);
    v.setBigUint64(at + 8, BigInt(e.size), true);
    v.setUint32(at + 16, e.type, true);
  });
  return zp;
}

/**
 * Loads a bzImage, its command line and initramfs into guest memory and writes the zero page,
 * page tables and GDT, ready for the 64-bit entry (see {@link longModeRegs} and
 * {@link longModeSregs}).
 *
 * The protected-mode kernel goes to 1 MiB; the initramfs to the highest page-aligned address
 * below the RAM end, `initrd_addr_max` and the end of the identity map, and above the memory the
 * kernel needs to decompress (`max(1 MiB, pref_address) + init_size`).
 *
 * @param memory Guest memory covering `[0, ramSize)`.
 * @param options Kernel, initramfs, command line and RAM size.
 * @returns Where everything is.
 * @throws {BootError} For an unbootable image, a too-long command line or too little RAM.
 */
export function loadLinux(memory: GuestMemory, options: LoadLinuxOptions): BootInfo {
  const L = BootLayout;
  const ramSize = options.ramSize ?? memory.totalSize;
  const image = parseBzImage(options.kernel);
  const { header } = image;
  const e820 = e820Map(ramSize);
  for (const r of options.reserved ?? []) {
    if (!Number.isSafeInteger(r.addr) || !Number.isSafeInteger(r.size) || r.addr < ramSize) {
      throw new BootError("NoRoom", `Reserved range 0x${r.addr.toString(16)} overlaps the RAM`);
    }
    e820.push({ addr: r.addr, size: r.size, type: E820Type.RESERVED });
  }

  const cmdline = new TextEncoder().encode(options.cmdline);
  if (cmdline.byteLength > header.cmdlineSize) {
    throw new BootError(
      "CommandLineTooLong",
      `Command line is ${cmdline.byteLength} bytes; the kernel accepts ${header.cmdlineSize}`,
    );
  }
  const kernelEnd = Math.max(L.KERNEL, header.prefAddress) +
    Math.max(header.initSize, image.kernel.byteLength);
  if (L.KERNEL + image.kernel.byteLength > ramSize || kernelEnd > ramSize) {
    throw new BootError("NoRoom", `The kernel needs RAM up to 0x${kernelEnd.toString(16)}`);
  }

  let initrd = { addr: 0, size: 0 };
  if (options.initrd !== undefined && options.initrd.byteLength > 0) {
    const size = options.initrd.byteLength;
    const top = Math.min(ramSize, header.initrdAddrMax + 1, L.IDENTITY_MAP_END);
    const addr = Math.floor((top - size) / 4096) * 4096;
    if (addr < kernelEnd) {
      throw new BootError(
        "NoRoom",
        `No room for a ${size}-byte initramfs between 0x${kernelEnd.toString(16)} and ` +
          `0x${top.toString(16)}`,
      );
    }
    memory.write(addr, options.initrd);
    initrd = { addr, size };
  }

  memory.write(L.KERNEL, image.kernel);
  memory.fill(L.CMDLINE, cmdline.byteLength + 1, 0);
  memory.write(L.CMDLINE, cmdline);
  memory.write(
    L.ZERO_PAGE,
    buildBootParams(image, { cmdline: L.CMDLINE, initrd, e820, acpiRsdp: options.acpiRsdp }),
  );
  writePageTables(memory);
  writeGdt(memory);
  return {
    image,
    entry: L.KERNEL + 0x200,
    bootParams: L.ZERO_PAGE,
    cmdline: L.CMDLINE,
    initrd,
    e820,
    cr3: L.PML4,
    stack: L.STACK,
  };
}

/** CR0.PE: protected mode. */
export const X86_CR0_PE = 0x1n;
/** CR0.PG: paging. */
export const X86_CR0_PG = 0x80000000n;
/** CR4.PAE: physical address extension (required for long mode). */
export const X86_CR4_PAE = 0x20n;
/** EFER.LME: long mode enable. */
export const EFER_LME = 0x100n;
/** EFER.LMA: long mode active. */
export const EFER_LMA = 0x400n;

/**
 * The general-purpose registers at the 64-bit entry: RIP = `startup_64`, RSI = zero page,
 * RFLAGS = 2 (interrupts off), a stack below the page tables.
 *
 * @param info What {@link loadLinux} returned.
 * @returns The registers for `KVM_SET_REGS`.
 */
export function longModeRegs(info: BootInfo): Partial<KvmRegs> {
  return {
    rip: BigInt(info.entry),
    rsi: BigInt(info.bootParams),
    rsp: BigInt(info.stack),
    rbp: BigInt(info.stack),
    rflags: 2n,
  };
}

function flatSegment(selector: number, code: boolean): KvmSegment {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector,
    type: code ? 0xb : 0x3,
    present: 1,
    dpl: 0,
    db: code ? 0 : 1,
    s: 1,
    l: code ? 1 : 0,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}

/**
 * The special registers at the 64-bit entry, derived from the vCPU's current ones: flat
 * `__BOOT_CS`/`__BOOT_DS` segments matching {@link BOOT_GDT}, a TSS, GDTR/IDTR, and long mode
 * (CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CR3 = PML4).
 *
 * @param base The vCPU's special registers (from `KVM_GET_SREGS`).
 * @param info What {@link loadLinux} returned.
 * @returns The special registers for `KVM_SET_SREGS`.
 */
export function longModeSregs(base: KvmSregs, info: BootInfo): KvmSregs {
  const code = flatSegment(BootSelector.CODE, true);
  const data = flatSegment(BootSelector.DATA, false);
  const tss: KvmSegment = { ...flatSegment(BootSelector.TSS, false), type: 0xb, s: 0, db: 0 };
  return {
    ...base,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: tss,
    gdt: { base: BigInt(BootLayout.GDT), limit: BOOT_GDT.length * 8 - 1 },
    idt: { base: BigInt(BootLayout.IDT), limit: 7 },
    cr0: base.cr0 | X86_CR0_PE | X86_CR0_PG,
    cr3: BigInt(info.cr3),
    cr4: base.cr4 | X86_CR4_PAE,
    efer: base.efer | EFER_LME | EFER_LMA,
  };
}
