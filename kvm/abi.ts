/**
 * The KVM user-space ABI on x86-64 (`<linux/kvm.h>`, `<asm/kvm.h>`): ioctl numbers computed
 * with the `_IO`/`_IOR`/`_IOW`/`_IOWR` encoding, exit reasons, and the byte layout of every
 * structure this package passes to the kernel. Structures are built in `Uint8Array`s through
 * little-endian `DataView`s; the sizes and offsets here are checked against the C headers by
 * `tests/kvm/abi_test.ts` when a C compiler is present.
 *
 * @module
 */

const IOC_NRBITS = 8;
const IOC_TYPEBITS = 8;
const IOC_SIZEBITS = 14;
const IOC_NRSHIFT = 0;
const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS;

/** ioctl direction: no data. */
export const IOC_NONE = 0;
/** ioctl direction: user space writes, the kernel reads. */
export const IOC_WRITE = 1;
/** ioctl direction: the kernel writes, user space reads. */
export const IOC_READ = 2;

/**
 * Encodes an ioctl request number as Linux's generic `_IOC` macro does.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { _IOC, IOC_NONE } from "./abi.ts";
 * assert.equal(_IOC(IOC_NONE, 0xae, 0x80, 0), 0xae80);
 * ```
 *
 * @param dir Direction bits: {@link IOC_NONE}, {@link IOC_READ}, {@link IOC_WRITE} or both.
 * @param type The driver's magic byte (`0xAE` for KVM).
 * @param nr The command number.
 * @param size The size of the argument structure in bytes (14 bits).
 * @returns The request number (an unsigned 32-bit integer).
 * @throws {RangeError} If a field does not fit its bits.
 */
export function _IOC(dir: number, type: number, nr: number, size: number): number {
  if (dir < 0 || dir > 3 || type < 0 || type > 0xff || nr < 0 || nr > 0xff) {
    throw new RangeError(`Invalid ioctl fields: dir ${dir}, type ${type}, nr ${nr}`);
  }
  if (!Number.isInteger(size) || size < 0 || size >= 1 << IOC_SIZEBITS) {
    throw new RangeError(`Invalid ioctl size: ${size}`);
  }
  return ((dir << IOC_DIRSHIFT) | (size << IOC_SIZESHIFT) | (type << IOC_TYPESHIFT) |
    (nr << IOC_NRSHIFT)) >>> 0;
}

/**
 * `_IO(type, nr)`: an ioctl without an argument structure.
 *
 * @param type The magic byte.
 * @param nr The command number.
 * @returns The request number.
 */
export function _IO(type: number, nr: number): number {
  return _IOC(IOC_NONE, type, nr, 0);
}

/**
 * `_IOR(type, nr, size)`: the kernel writes a structure of `size` bytes.
 *
 * @param type The magic byte.
 * @param nr The command number.
 * @param size The structure size.
 * @returns The request number.
 */
export function _IOR(type: number, nr: number, size: number): number {
  return _IOC(IOC_READ, type, nr, size);
}

/**
 * `_IOW(type, nr, size)`: the kernel reads a structure of `size` bytes.
 *
 * @param type The magic byte.
 * @param nr The command number.
 * @param size The structure size.
 * @returns The request number.
 */
export function _IOW(type: number, nr: number, size: number): number {
  return _IOC(IOC_WRITE, type, nr, size);
}

/**
 * `_IOWR(type, nr, size)`: the structure goes both ways.
 *
 * @param type The magic byte.
 * @param nr The command number.
 * @param size The structure size.
 * @returns The request number.
 */
export function _IOWR(type: number, nr: number, size: number): number {
  return _IOC(IOC_READ | IOC_WRITE, type, nr, size);
}

/** The KVM ioctl magic byte. */
export const KVMIO = 0xae;
/** The only KVM API version there is (`KVM_GET_API_VERSION` must return it). */
export const KVM_API_VERSION = 12;

/** Sizes in bytes of the KVM structures used here (x86-64). */
export const KvmSize = {
  /** `struct kvm_userspace_memory_region` */
  userspaceMemoryRegion: 32,
  /** `struct kvm_irq_level` */
  irqLevel: 8,
  /** `struct kvm_irqfd` */
  irqfd: 32,
  /** `struct kvm_ioeventfd` */
  ioeventfd: 64,
  /** `struct kvm_pit_config` */
  pitConfig: 64,
  /** `struct kvm_regs` */
  regs: 144,
  /** `struct kvm_segment` */
  segment: 24,
  /** `struct kvm_dtable` */
  dtable: 16,
  /** `struct kvm_sregs` */
  sregs: 312,
  /** `struct kvm_cpuid2` header (entries follow) */
  cpuid2: 8,
  /** `struct kvm_cpuid_entry2` */
  cpuidEntry2: 40,
  /** `struct kvm_lapic_state` */
  lapicState: 1024,
  /** `struct kvm_signal_mask` header (`len`; the sigset follows) */
  signalMask: 4,
  /** `__u64` (the argument of `KVM_SET_IDENTITY_MAP_ADDR`) */
  u64: 8,
  /** `struct kvm_irq_routing` header (`nr`, `flags`; the entries follow) */
  irqRouting: 8,
  /** `struct kvm_irq_routing_entry` */
  irqRoutingEntry: 48,
} as const;

/** KVM ioctl request numbers (system, VM and vCPU ioctls), x86-64. */
export const KvmIoctl: Readonly<
  Record<
    | "GET_API_VERSION"
    | "CREATE_VM"
    | "CHECK_EXTENSION"
    | "GET_VCPU_MMAP_SIZE"
    | "GET_SUPPORTED_CPUID"
    | "CREATE_VCPU"
    | "SET_USER_MEMORY_REGION"
    | "SET_TSS_ADDR"
    | "SET_IDENTITY_MAP_ADDR"
    | "CREATE_IRQCHIP"
    | "IRQ_LINE"
    | "IRQFD"
    | "CREATE_PIT2"
    | "IOEVENTFD"
    | "RUN"
    | "GET_REGS"
    | "SET_REGS"
    | "GET_SREGS"
    | "SET_SREGS"
    | "GET_LAPIC"
    | "SET_LAPIC"
    | "SET_CPUID2"
    | "SET_SIGNAL_MASK"
    | "SET_GSI_ROUTING",
    number
  >
> = {
  GET_API_VERSION: _IO(KVMIO, 0x00),
  CREATE_VM: _IO(KVMIO, 0x01),
  CHECK_EXTENSION: _IO(KVMIO, 0x03),
  GET_VCPU_MMAP_SIZE: _IO(KVMIO, 0x04),
  GET_SUPPORTED_CPUID: _IOWR(KVMIO, 0x05, KvmSize.cpuid2),
  CREATE_VCPU: _IO(KVMIO, 0x41),
  SET_USER_MEMORY_REGION: _IOW(KVMIO, 0x46, KvmSize.userspaceMemoryRegion),
  SET_TSS_ADDR: _IO(KVMIO, 0x47),
  SET_IDENTITY_MAP_ADDR: _IOW(KVMIO, 0x48, KvmSize.u64),
  CREATE_IRQCHIP: _IO(KVMIO, 0x60),
  IRQ_LINE: _IOW(KVMIO, 0x61, KvmSize.irqLevel),
  IRQFD: _IOW(KVMIO, 0x76, KvmSize.irqfd),
  CREATE_PIT2: _IOW(KVMIO, 0x77, KvmSize.pitConfig),
  IOEVENTFD: _IOW(KVMIO, 0x79, KvmSize.ioeventfd),
  RUN: _IO(KVMIO, 0x80),
  GET_REGS: _IOR(KVMIO, 0x81, KvmSize.regs),
  SET_REGS: _IOW(KVMIO, 0x82, KvmSize.regs),
  GET_SREGS: _IOR(KVMIO, 0x83, KvmSize.sregs),
  SET_SREGS: _IOW(KVMIO, 0x84, KvmSize.sregs),
  GET_LAPIC: _IOR(KVMIO, 0x8e, KvmSize.lapicState),
  SET_LAPIC: _IOW(KVMIO, 0x8f, KvmSize.lapicState),
  SET_CPUID2: _IOW(KVMIO, 0x90, KvmSize.cpuid2),
  SET_SIGNAL_MASK: _IOW(KVMIO, 0x8b, KvmSize.signalMask),
  SET_GSI_ROUTING: _IOW(KVMIO, 0x6a, KvmSize.irqRouting),
} as const;

/** KVM capabilities queried with `KVM_CHECK_EXTENSION`. */
export const KvmCap = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_MEMSLOTS: 10,
  PIT2: 33,
  SET_IDENTITY_MAP_ADDR: 37,
  IOEVENTFD: 36,
  IRQFD: 32,
  IRQ_ROUTING: 25,
  IMMEDIATE_EXIT: 136,
  TSC_DEADLINE_TIMER: 72,
} as const;

/** `kvm_run.exit_reason` values. */
export const KvmExit = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

/** `kvm_run.io.direction` for an `in` instruction. */
export const KVM_EXIT_IO_IN = 0;
/** `kvm_run.io.direction` for an `out` instruction. */
export const KVM_EXIT_IO_OUT = 1;

/** `kvm_run.system_event.type` values. */
export const KvmSystemEvent = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;

/** `kvm_ioeventfd.flags`: only signal when the written value equals `datamatch`. */
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
/** `kvm_ioeventfd.flags`: the address is a port, not guest-physical memory. */
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
/** `kvm_ioeventfd.flags`: remove the registration. */
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2;
/** `kvm_irqfd.flags`: remove the registration. */
export const KVM_IRQFD_FLAG_DEASSIGN = 1 << 0;
/** `kvm_irq_routing_entry.type`: a pin of an in-kernel interrupt controller. */
export const KVM_IRQ_ROUTING_IRQCHIP = 1;
/** `kvm_irq_routing_entry.type`: an MSI message. */
export const KVM_IRQ_ROUTING_MSI = 2;
/** `kvm_irq_routing_irqchip.irqchip` values: the two 8259s and the I/O APIC. */
export const KvmIrqchip = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;
/** `kvm_pit_config.flags`: the PIT speaker port is a dummy. */
export const KVM_PIT_SPEAKER_DUMMY = 1;

/** Byte offsets inside `struct kvm_run` (x86-64). */
export const KvmRunOffset = {
  requestInterruptWindow: 0,
  immediateExit: 1,
  exitReason: 8,
  readyForInterruptInjection: 12,
  ifFlag: 13,
  flags: 14,
  cr8: 16,
  apicBase: 24,
  /** Start of the exit-specific union. */
  union: 32,
  /** `io.direction` (u8) */
  ioDirection: 32,
  /** `io.size` (u8) */
  ioSize: 33,
  /** `io.port` (u16) */
  ioPort: 34,
  /** `io.count` (u32) */
  ioCount: 36,
  /** `io.data_offset` (u64): offset of the data from the start of `kvm_run` */
  ioDataOffset: 40,
  /** `mmio.phys_addr` (u64) */
  mmioPhysAddr: 32,
  /** `mmio.data` (u8[8]) */
  mmioData: 40,
  /** `mmio.len` (u32) */
  mmioLen: 48,
  /** `mmio.is_write` (u8) */
  mmioIsWrite: 52,
  /** `fail_entry.hardware_entry_failure_reason` (u64) */
  failEntryReason: 32,
  /** `fail_entry.cpu` (u32) */
  failEntryCpu: 40,
  /** `internal.suberror` (u32) */
  internalSuberror: 32,
  /** `internal.ndata` (u32) */
  internalNdata: 36,
  /** `internal.data` (u64[16]) */
  internalData: 40,
  /** `system_event.type` (u32) */
  systemEventType: 32,
  /** `ex.exception` (u32) */
  exException: 32,
  /** `ex.error_code` (u32) */
  exErrorCode: 36,
} as const;

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * `struct kvm_userspace_memory_region`.
 *
 * @param slot The memory slot number.
 * @param guestPhysAddr Guest-physical address of the slot.
 * @param size Size in bytes (a multiple of the page size).
 * @param userspaceAddr Host virtual address of the backing memory.
 * @param flags `KVM_MEM_*` flags.
 * @returns The 32-byte structure.
 */
export function encodeMemoryRegion(
  slot: number,
  guestPhysAddr: number,
  size: number,
  userspaceAddr: bigint,
  flags = 0,
): Uint8Array {
  const b = new Uint8Array(KvmSize.userspaceMemoryRegion);
  const v = view(b);
  v.setUint32(0, slot, true);
  v.setUint32(4, flags, true);
  v.setBigUint64(8, BigInt(guestPhysAddr), true);
  v.setBigUint64(16, BigInt(size), true);
  v.setBigUint64(24, userspaceAddr, true);
  return b;
}

/**
 * `struct kvm_irq_level`.
 *
 * @param irq The GSI.
 * @param level 1 to raise, 0 to lower.
 * @returns The 8-byte structure.
 */
export function encodeIrqLevel(irq: number, level: number): Uint8Array {
  const b = new Uint8Array(KvmSize.irqLevel);
  const v = view(b);
  v.setUint32(0, irq, true);
  v.setUint32(4, level, true);
  return b;
}

/**
 * `struct kvm_irqfd`.
 *
 * @param fd The eventfd whose writes inject the interrupt.
 * @param gsi The GSI to inject.
 * @param flags `KVM_IRQFD_FLAG_*`.
 * @returns The 32-byte structure.
 */
export function encodeIrqfd(fd: number, gsi: number, flags = 0): Uint8Array {
  const b = new Uint8Array(KvmSize.irqfd);
  const v = view(b);
  v.setUint32(0, fd, true);
  v.setUint32(4, gsi, true);
  v.setUint32(8, flags, true);
  return b;
}

/**
 * `struct kvm_ioeventfd`.
 *
 * @param addr Guest-physical address (or port with {@link KVM_IOEVENTFD_FLAG_PIO}).
 * @param len Access width that matches: 0 (any), 1, 2, 4 or 8.
 * @param fd The eventfd to signal.
 * @param datamatch Value to match when `flags` has {@link KVM_IOEVENTFD_FLAG_DATAMATCH}.
 * @param flags `KVM_IOEVENTFD_FLAG_*`.
 * @returns The 64-byte structure.
 */
export function encodeIoeventfd(
  addr: number,
  len: number,
  fd: number,
  datamatch: bigint | undefined,
  flags = 0,
): Uint8Array {
  const b = new Uint8Array(KvmSize.ioeventfd);
  const v = view(b);
  v.setBigUint64(0, datamatch ?? 0n, true);
  v.setBigUint64(8, BigInt(addr), true);
  v.setUint32(16, len, true);
  v.setInt32(20, fd, true);
  v.setUint32(24, flags | (datamatch === undefined ? 0 : KVM_IOEVENTFD_FLAG_DATAMATCH), true);
  return b;
}

/** One GSI route of `KVM_SET_GSI_ROUTING`. */
export type GsiRoute =
  | {
    /** The GSI (what an irqfd or `KVM_IRQ_LINE` names). */
    gsi: number;
    /** A pin of an in-kernel interrupt controller. */
    kind: "irqchip";
    /** {@link KvmIrqchip} value. */
    irqchip: number;
    /** The pin. */
    pin: number;
  }
  | {
    /** The GSI. */
    gsi: number;
    /** An MSI message. */
    kind: "msi";
    /** Message address (64 bits). */
    address: bigint;
    /** Message data. */
    data: number;
  };

/**
 * `struct kvm_irq_routing` with its entries: the whole routing table `KVM_SET_GSI_ROUTING`
 * replaces.
 *
 * @param routes The routes (at most 4096, KVM_MAX_IRQ_ROUTES).
 * @returns The structure: an 8-byte header and 48 bytes per entry.
 * @throws {RangeError} For too many routes or a field out of range.
 */
export function encodeGsiRouting(routes: readonly GsiRoute[]): Uint8Array {
  if (routes.length > 4096) throw new RangeError(`${routes.length} GSI routes (at most 4096)`);
  const b = new Uint8Array(KvmSize.irqRouting + routes.length * KvmSize.irqRoutingEntry);
  const v = view(b);
  v.setUint32(0, routes.length, true);
  routes.forEach((r, i) => {
    const at = KvmSize.irqRouting + i * KvmSize.irqRoutingEntry;
    if (!Number.isInteger(r.gsi) || r.gsi < 0 || r.gsi > 0xffffffff) {
      throw new RangeError(`GSI ${r.gsi}`);
    }
    v.setUint32(at, r.gsi, true);
    if (r.kind === "irqchip") {
      v.setUint32(at + 4, KVM_IRQ_ROUTING_IRQCHIP, true);
      v.setUint32(at + 16, r.irqchip, true);
      v.setUint32(at + 20, r.pin, true);
    } else {
      v.setUint32(at + 4, KVM_IRQ_ROUTING_MSI, true);
      v.setUint32(at + 16, Number(r.address & 0xffffffffn), true);
      v.setUint32(at + 20, Number((r.address >> 32n) & 0xffffffffn), true);
      v.setUint32(at + 24, r.data >>> 0, true);
    }
  });
  return b;
}

/**
 * `struct kvm_pit_config`.
 *
 * @param flags `KVM_PIT_SPEAKER_DUMMY` or 0.
 * @returns The 64-byte structure.
 */
export function encodePitConfig(flags = 0): Uint8Array {
  const b = new Uint8Array(KvmSize.pitConfig);
  view(b).setUint32(0, flags, true);
  return b;
}

/**
 * `struct kvm_signal_mask` with the kernel's 64-bit signal set (bit `n - 1` blocks signal `n`):
 * the blocked signals while `KVM_RUN` runs.
 *
 * @param blocked The signal set.
 * @returns The bytes for `KVM_SET_SIGNAL_MASK`.
 */
export function encodeSignalMask(blocked: bigint): Uint8Array {
  const b = new Uint8Array(KvmSize.signalMask + 8);
  view(b).setUint32(0, 8, true);
  view(b).setBigUint64(4, BigInt.asUintN(64, blocked), true);
  return b;
}

/** The general-purpose registers (`struct kvm_regs`), as bigints. */
export interface KvmRegs {
  /** RAX */ rax: bigint;
  /** RBX */ rbx: bigint;
  /** RCX */ rcx: bigint;
  /** RDX */ rdx: bigint;
  /** RSI */ rsi: bigint;
  /** RDI */ rdi: bigint;
  /** RSP */ rsp: bigint;
  /** RBP */ rbp: bigint;
  /** R8 */ r8: bigint;
  /** R9 */ r9: bigint;
  /** R10 */ r10: bigint;
  /** R11 */ r11: bigint;
  /** R12 */ r12: bigint;
  /** R13 */ r13: bigint;
  /** R14 */ r14: bigint;
  /** R15 */ r15: bigint;
  /** RIP */ rip: bigint;
  /** RFLAGS */ rflags: bigint;
}

/** Field order of `struct kvm_regs`. */
export const REGS_ORDER: readonly (keyof KvmRegs)[] = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
  "rflags",
];

/**
 * Encodes `struct kvm_regs`.
 *
 * @param regs The registers; missing ones are 0.
 * @returns The 144-byte structure.
 */
export function encodeRegs(regs: Partial<KvmRegs>): Uint8Array {
  const b = new Uint8Array(KvmSize.regs);
  const v = view(b);
  REGS_ORDER.forEach((name, i) => v.setBigUint64(i * 8, regs[name] ?? 0n, true));
  return b;
}

/**
 * Decodes `struct kvm_regs`.
 *
 * @param b The 144-byte structure.
 * @returns The registers.
 */
export function decodeRegs(b: Uint8Array): KvmRegs {
  const v = view(b);
  const out = {} as KvmRegs;
  REGS_ORDER.forEach((name, i) => out[name] = v.getBigUint64(i * 8, true));
  return out;
}

/** A segment register (`struct kvm_segment`). */
export interface KvmSegment {
  /** Base address. */ base: bigint;
  /** Limit (in bytes, or 4 KiB units with `g`). */ limit: number;
  /** Selector. */ selector: number;
  /** Descriptor type (4 bits). */ type: number;
  /** Present bit. */ present: number;
  /** Descriptor privilege level. */ dpl: number;
  /** Default operand size (32-bit). */ db: number;
  /** Code/data (1) or system (0) descriptor. */ s: number;
  /** 64-bit code segment. */ l: number;
  /** Granularity (limit in 4 KiB units). */ g: number;
  /** Available bit. */ avl: number;
  /** Unusable (a null selector). */ unusable: number;
}

/** Descriptor table register (`struct kvm_dtable`). */
export interface KvmDtable {
  /** Base address. */ base: bigint;
  /** Limit (size - 1). */ limit: number;
}

/** Special registers (`struct kvm_sregs`). */
export interface KvmSregs {
  /** CS */ cs: KvmSegment;
  /** DS */ ds: KvmSegment;
  /** ES */ es: KvmSegment;
  /** FS */ fs: KvmSegment;
  /** GS */ gs: KvmSegment;
  /** SS */ ss: KvmSegment;
  /** Task register. */ tr: KvmSegment;
  /** LDT register. */ ldt: KvmSegment;
  /** GDTR */ gdt: KvmDtable;
  /** IDTR */ idt: KvmDtable;
  /** CR0 */ cr0: bigint;
  /** CR2 */ cr2: bigint;
  /** CR3 */ cr3: bigint;
  /** CR4 */ cr4: bigint;
  /** CR8 */ cr8: bigint;
  /** EFER MSR */ efer: bigint;
  /** IA32_APIC_BASE MSR */ apicBase: bigint;
  /** Pending interrupt bitmap (4 × u64). */ interruptBitmap: bigint[];
}

const SEGMENT_ORDER = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
/** Offset of `gdt` in `struct kvm_sregs`. */
const SREGS_GDT = 8 * KvmSize.segment;
const SREGS_CR0 = SREGS_GDT + 2 * KvmSize.dtable;

function encodeSegment(v: DataView, at: number, s: KvmSegment): void {
  v.setBigUint64(at, s.base, true);
  v.setUint32(at + 8, s.limit >>> 0, true);
  v.setUint16(at + 12, s.selector, true);
  const bytes = [s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable, 0];
  bytes.forEach((x, i) => v.setUint8(at + 14 + i, x));
}

function decodeSegment(v: DataView, at: number): KvmSegment {
  const u8 = (i: number) => v.getUint8(at + 14 + i);
  return {
    base: v.getBigUint64(at, true),
    limit: v.getUint32(at + 8, true),
    selector: v.getUint16(at + 12, true),
    type: u8(0),
    present: u8(1),
    dpl: u8(2),
    db: u8(3),
    s: u8(4),
    l: u8(5),
    g: u8(6),
    avl: u8(7),
    unusable: u8(8),
  };
}

/**
 * Encodes `struct kvm_sregs`.
 *
 * @param s The special registers.
 * @returns The 312-byte structure.
 */
export function encodeSregs(s: KvmSregs): Uint8Array {
  const b = new Uint8Array(KvmSize.sregs);
  const v = view(b);
  SEGMENT_ORDER.forEach((name, i) => encodeSegment(v, i * KvmSize.segment, s[name]));
  for (const [i, t] of [s.gdt, s.idt].entries()) {
    v.setBigUint64(SREGS_GDT + i * KvmSize.dtable, t.base, true);
    v.setUint16(SREGS_GDT + i * KvmSize.dtable + 8, t.limit, true);
  }
  [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apicBase].forEach((x, i) =>
    v.setBigUint64(SREGS_CR0 + i * 8, x, true)
  );
  for (let i = 0; i < 4; i++) {
    v.setBigUint64(SREGS_CR0 + 56 + i * 8, s.interruptBitmap[i] ?? 0n, true);
  }
  return b;
}

/**
 * Decodes `struct kvm_sregs`.
 *
 * @param b The 312-byte structure.
 * @returns The special registers.
 */
export function decodeSregs(b: Uint8Array): KvmSregs {
  const v = view(b);
  const seg = (i: number) => decodeSegment(v, i * KvmSize.segment);
  const dt = (i: number): KvmDtable => ({
    base: v.getBigUint64(SREGS_GDT + i * KvmSize.dtable, true),
    limit: v.getUint16(SREGS_GDT + i * KvmSize.dtable + 8, true),
  });
  const cr = (i: number) => v.getBigUint64(SREGS_CR0 + i * 8, true);
  return {
    cs: seg(0),
    ds: seg(1),
    es: seg(2),
    fs: seg(3),
    gs: seg(4),
    ss: seg(5),
    tr: seg(6),
    ldt: seg(7),
    gdt: dt(0),
    idt: dt(1),
    cr0: cr(0),
    cr2: cr(1),
    cr3: cr(2),
    cr4: cr(3),
    cr8: cr(4),
    efer: cr(5),
    apicBase: cr(6),
    interruptBitmap: [0, 1, 2, 3].map((i) => v.getBigUint64(SREGS_CR0 + 56 + i * 8, true)),
  };
}

/** One CPUID leaf (`struct kvm_cpuid_entry2`). */
export interface CpuidEntry {
  /** EAX input (leaf). */ function: number;
  /** ECX input (sub-leaf). */ index: number;
  /** `KVM_CPUID_FLAG_*`. */ flags: number;
  /** EAX output. */ eax: number;
  /** EBX output. */ ebx: number;
  /** ECX output. */ ecx: number;
  /** EDX output. */ edx: number;
}

/**
 * Encodes `struct kvm_cpuid2` with room for `capacity` entries (at least `entries.length`).
 *
 * @param entries The leaves.
 * @param capacity Entry slots to allocate (for `KVM_GET_SUPPORTED_CPUID`).
 * @returns The structure: an 8-byte header and 40 bytes per slot.
 */
export function encodeCpuid2(
  entries: readonly CpuidEntry[],
  capacity = entries.length,
): Uint8Array {
  const n = Math.max(capacity, entries.length);
  const b = new Uint8Array(KvmSize.cpuid2 + n * KvmSize.cpuidEntry2);
  const v = view(b);
  v.setUint32(0, n, true);
  entries.forEach((e, i) => {
    const at = KvmSize.cpuid2 + i * KvmSize.cpuidEntry2;
    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].forEach((x, j) =>
      v.setUint32(at + j * 4, x >>> 0, true)
    );
  });
  return b;
}

/**
 * Decodes `struct kvm_cpuid2`: `nent` entries.
 *
 * @param b The structure.
 * @returns The leaves.
 */
export function decodeCpuid2(b: Uint8Array): CpuidEntry[] {
  const v = view(b);
  const n = v.getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = KvmSize.cpuid2 + i * KvmSize.cpuidEntry2;
    const u = (j: number) => v.getUint32(at + j * 4, true);
    out.push({
      function: u(0),
      index: u(1),
      flags: u(2),
      eax: u(3),
      ebx: u(4),
      ecx: u(5),
      edx: u(6),
    });
  }
  return out;
}
