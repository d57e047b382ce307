/**
 * Thin typed wrappers over the KVM ioctls: the system handle ({@link Kvm}), a VM ({@link Vm})
 * and a vCPU ({@link Vcpu}). Each method is one ioctl with its structure built by `abi.ts`;
 * failures throw `SysError` from `sys/` (or {@link KvmError} for a semantic problem).
 *
 * @module
 */

import { close, ioctl, O_CLOEXEC, O_RDWR, open, SysError } from "../sys/mod.ts";
import { backend, lastErrno, libc } from "../sys/libc.ts";
import {
  type CpuidEntry,
  decodeCpuid2,
  decodeRegs,
  decodeSregs,
  encodeCpuid2,
  encodeGsiRouting,
  encodeIoeventfd,
  encodeIrqfd,
  encodeIrqLevel,
  encodeMemoryRegion,
  encodePitConfig,
  encodeRegs,
  encodeSregs,
  type GsiRoute,
  KVM_API_VERSION,
  KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQFD_FLAG_DEASSIGN,
  KVM_PIT_SPEAKER_DUMMY,
  KvmIoctl,
  KvmIrqchip,
  type KvmRegs,
  KvmSize,
  type KvmSregs,
} from "./abi.ts";

/** The message tests print when they skip for lack of KVM. */
export const NO_KVM_REASON = "skipped: /dev/kvm not present";

/** KVM is missing, too old, or lacks a capability this VMM needs. */
export class KvmError extends Error {
  /**
   * Creates the error.
   *
   * @param message What is wrong.
   * @param options Standard error options (`cause`).
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KvmError";
  }
}

const E2BIG = 7;
const EINTR = 4;
const EAGAIN = 11;

/**
 * `KVM_RUN` without the EINTR retry of `sys/` `ioctl`: an interrupted run must return to the
 * loop so that it can look at its stop flag.
 *
 * @param vcpuFd The vCPU file descriptor.
 * @returns 0 after an exit, or the errno when KVM_RUN was interrupted (EINTR, EAGAIN).
 * @throws {SysError} For any other failure.
 */
export function kvmRun(vcpuFd: number): number {
  const r = libc().ioctl(vcpuFd, BigInt(KvmIoctl.RUN), 0n);
  if (r >= 0) return 0;
  const errno = lastErrno();
  if (errno === EINTR || errno === EAGAIN) return errno;
  throw new SysError("ioctl(KVM_RUN)", errno);
}

/** The `/dev/kvm` system handle. */
export class Kvm {
  /** The file descriptor of `/dev/kvm`. */
  readonly fd: number;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * Opens `/dev/kvm` and checks the API version (12).
   *
   * @param path The device node (default `/dev/kvm`).
   * @returns The handle.
   * @throws {SysError} When the device cannot be opened.
   * @throws {KvmError} For another API version.
   */
  static open(path = "/dev/kvm"): Kvm {
    backend();
    const fd = open(path, O_RDWR | O_CLOEXEC);
    const kvm = new Kvm(fd);
    const version = kvm.apiVersion();
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new KvmError(`KVM API version ${version}, expected ${KVM_API_VERSION}`);
    }
    return kvm;
  }

  /**
   * `KVM_GET_API_VERSION`.
   *
   * @returns The version (12).
   */
  apiVersion(): number {
    return ioctl(this.fd, KvmIoctl.GET_API_VERSION);
  }

  /**
   * `KVM_CHECK_EXTENSION`.
   *
   * @param cap A `KvmCap` value.
   * @returns 0 if unsupported, else a capability-specific positive value.
   */
  checkExtension(cap: number): number {
    return ioctl(this.fd, KvmIoctl.CHECK_EXTENSION, cap);
  }

  /**
   * `KVM_GET_VCPU_MMAP_SIZE`: the size of the `kvm_run` mapping of each vCPU.
   *
   * @returns The size in bytes.
   */
  vcpuMmapSize(): number {
    return ioctl(this.fd, KvmIoctl.GET_VCPU_MMAP_SIZE);
  }

  /**
   * `KVM_GET_SUPPORTED_CPUID`, growing the buffer on E2BIG.
   *
   * @returns The CPUID leaves KVM can expose.
   * @throws {SysError} When the ioctl fails otherwise.
   */
  supportedCpuid(): CpuidEntry[] {
    for (let capacity = 128; capacity <= 4096; capacity *= 2) {
      const buf = encodeCpuid2([], capacity);
      try {
        ioctl(this.fd, KvmIoctl.GET_SUPPORTED_CPUID, buf);
      } catch (e) {
        if (e instanceof SysError && e.errno === E2BIG) continue;
        throw e;
      }
      return decodeCpuid2(buf);
    }
    throw new KvmError("KVM_GET_SUPPORTED_CPUID wants more than 4096 entries");
  }

  /**
   * `KVM_CREATE_VM` (default machine type).
   *
   * @returns The VM.
   */
  createVm(): Vm {
    return new Vm(ioctl(this.fd, KvmIoctl.CREATE_VM, 0));
  }

  /** Closes `/dev/kvm` (VMs stay alive). */
  close(): void {
    close(this.fd);
  }
}

/** A KVM virtual machine. */
export class Vm {
  /** The VM file descriptor. */
  readonly fd: number;

  /**
   * Wraps a VM file descriptor (the object owns it).
   *
   * @param fd A VM file descriptor from `KVM_CREATE_VM`.
   */
  constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * `KVM_SET_TSS_ADDR`: three pages of guest-physical space Intel VMX needs (below 4 GiB, not
   * RAM).
   *
   * @param addr The address.
   */
  setTssAddr(addr: number): void {
    ioctl(this.fd, KvmIoctl.SET_TSS_ADDR, addr);
  }

  /**
   * `KVM_SET_IDENTITY_MAP_ADDR`: one page for VMX's real-mode identity map. Before any vCPU.
   *
   * @param addr The address.
   */
  setIdentityMapAddr(addr: number): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(addr), true);
    ioctl(this.fd, KvmIoctl.SET_IDENTITY_MAP_ADDR, b);
  }

  /** `KVM_CREATE_IRQCHIP`: in-kernel PIC, IOAPIC and local APICs. */
  createIrqchip(): void {
    ioctl(this.fd, KvmIoctl.CREATE_IRQCHIP);
  }

  /** `KVM_CREATE_PIT2`: the in-kernel i8254 timer (with a dummy speaker port). */
  createPit2(): void {
    ioctl(this.fd, KvmIoctl.CREATE_PIT2, encodePitConfig(KVM_PIT_SPEAKER_DUMMY));
  }

  /**
   * `KVM_SET_USER_MEMORY_REGION`: back guest-physical memory with host memory.
   *
   * @param slot The slot number.
   * @param guestPhysAddr Guest-physical start.
   * @param size Size in bytes (0 deletes the slot).
   * @param hostAddr Host virtual address (e.g. `Mapping.address`).
   * @param flags `KVM_MEM_*` flags (default 0).
   */
  setUserMemoryRegion(
    slot: number,
    guestPhysAddr: number,
    size: number,
    hostAddr: bigint,
    flags = 0,
  ): void {
    ioctl(
      this.fd,
      KvmIoctl.SET_USER_MEMORY_REGION,
      encodeMemoryRegion(slot, guestPhysAddr, size, hostAddr, flags),
    );
  }

  /**
   * `KVM_IRQ_LINE`: set the level of an interrupt line of the in-kernel irqchip.
   *
   * @param irq The GSI.
   * @param level The new level.
   */
  irqLine(irq: number, level: boolean): void {
    ioctl(this.fd, KvmIoctl.IRQ_LINE, encodeIrqLevel(irq, level ? 1 : 0));
  }

  /**
   * `KVM_IRQFD`: each write to `eventFd` injects `gsi`.
   *
   * @param eventFd The eventfd descriptor.
   * @param gsi The interrupt line.
   * @param deassign Remove the registration instead.
   */
  irqfd(eventFd: number, gsi: number, deassign = false): void {
    ioctl(
      this.fd,
      KvmIoctl.IRQFD,
      encodeIrqfd(eventFd, gsi, deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0),
    );
  }

  /**
   * `KVM_IOEVENTFD`: a guest write of `len` bytes at `addr` (equal to `datamatch` if given)
   * signals `eventFd` inside the kernel instead of exiting to user space.
   *
   * @param addr Guest-physical address, or an I/O port with `options.pio`.
   * @param len Access width (1, 2, 4 or 8).
   * @param eventFd The eventfd descriptor.
   * @param datamatch The value to match, or undefined for any value.
   * @param options `deassign`: remove the registration instead; `pio`: `addr` is a port.
   */
  ioeventfd(
    addr: number,
    len: number,
    eventFd: number,
    datamatch?: bigint,
    options: { deassign?: boolean; pio?: boolean } = {},
  ): void {
    const flags = (options.deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0) |
      (options.pio ? KVM_IOEVENTFD_FLAG_PIO : 0);
    ioctl(this.fd, KvmIoctl.IOEVENTFD, encodeIoeventfd(addr, len, eventFd, datamatch, flags));
  }

  /**
   * `KVM_SET_GSI_ROUTING`: replaces the whole GSI routing table (include the in-kernel
   * irqchip's pins, {@link defaultIrqchipRoutes}, or they stop working).
   *
   * @param routes Every route.
   */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    ioctl(this.fd, KvmIoctl.SET_GSI_ROUTING, encodeGsiRouting(routes));
  }

  /**
   * `KVM_CREATE_VCPU`.
   *
   * @param id The vCPU (APIC) id.
   * @returns The vCPU.
   */
  createVcpu(id: number): Vcpu {
    return new Vcpu(ioctl(this.fd, KvmIoctl.CREATE_VCPU, id));
  }

  /** Closes the VM file descriptor. */
  close(): void {
    close(this.fd);
  }
}

/**
 * The routes `KVM_CREATE_IRQCHIP` sets up, which `KVM_SET_GSI_ROUTING` replaces: GSIs 0–15 on
 * both the 8259s (0–7 master, 8–15 slave) and the I/O APIC, GSIs 16–23 on the I/O APIC only.
 *
 * @returns The routes.
 */
export function defaultIrqchipRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < 24; gsi++) {
    if (gsi < 16) {
      routes.push({
        gsi,
        kind: "irqchip",
        irqchip: gsi < 8 ? KvmIrqchip.PIC_MASTER : KvmIrqchip.PIC_SLAVE,
        pin: gsi % 8,
      });
    }
    routes.push({ gsi, kind: "irqchip", irqchip: KvmIrqchip.IOAPIC, pin: gsi });
  }
  return routes;
}

/** Offset of the LVT LINT0 register in `struct kvm_lapic_state`. */
export const APIC_LVT0 = 0x350;
/** Offset of the LVT LINT1 register. */
export const APIC_LVT1 = 0x360;
/** LVT delivery mode ExtINT (the 8259 PIC's output). */
export const APIC_MODE_EXTINT = 0x7;
/** LVT delivery mode NMI. */
export const APIC_MODE_NMI = 0x4;

/**
 * An LVT value with delivery mode `mode`, unmasked.
 *
 * @param value The current LVT register.
 * @param mode The delivery mode (3 bits).
 * @returns The new value.
 */
export function lvtWithMode(value: number, mode: number): number {
  return ((value & ~0x700 & ~0x10000) | (mode << 8)) >>> 0;
}

/** A virtual CPU. */
export class Vcpu {
  /** The vCPU file descriptor. */
  readonly fd: number;

  /**
   * Wraps a vCPU file descriptor (the object owns it).
   *
   * @param fd A vCPU file descriptor from `KVM_CREATE_VCPU`.
   */
  constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * `KVM_GET_REGS`.
   *
   * @returns The general-purpose registers.
   */
  getRegs(): KvmRegs {
    const b = new Uint8Array(KvmSize.regs);
    ioctl(this.fd, KvmIoctl.GET_REGS, b);
    return decodeRegs(b);
  }

  /**
   * `KVM_SET_REGS`.
   *
   * @param regs The registers (missing ones become 0).
   */
  setRegs(regs: Partial<KvmRegs>): void {
    ioctl(this.fd, KvmIoctl.SET_REGS, encodeRegs(regs));
  }

  /**
   * `KVM_GET_SREGS`.
   *
   * @returns The special registers.
   */
  getSregs(): KvmSregs {
    const b = new Uint8Array(KvmSize.sregs);
    ioctl(this.fd, KvmIoctl.GET_SREGS, b);
    return decodeSregs(b);
  }

  /**
   * `KVM_SET_SREGS`.
   *
   * @param sregs The special registers.
   */
  setSregs(sregs: KvmSregs): void {
    ioctl(this.fd, KvmIoctl.SET_SREGS, encodeSregs(sregs));
  }

  /**
   * `KVM_SET_CPUID2`.
   *
   * @param entries The CPUID leaves the guest sees.
   */
  setCpuid(entries: readonly CpuidEntry[]): void {
    ioctl(this.fd, KvmIoctl.SET_CPUID2, encodeCpuid2(entries));
  }

  /**
   * Routes the PIC to LINT0 (ExtINT) and NMIs to LINT1 in the in-kernel local APIC, as PC
   * firmware leaves them (`KVM_GET_LAPIC` + `KVM_SET_LAPIC`).
   */
  setupLapicLint(): void {
    const b = new Uint8Array(KvmSize.lapicState);
    ioctl(this.fd, KvmIoctl.GET_LAPIC, b);
    const v = new DataView(b.buffer);
    v.setUint32(APIC_LVT0, lvtWithMode(v.getUint32(APIC_LVT0, true), APIC_MODE_EXTINT), true);
    v.setUint32(APIC_LVT1, lvtWithMode(v.getUint32(APIC_LVT1, true), APIC_MODE_NMI), true);
    ioctl(this.fd, KvmIoctl.SET_LAPIC, b);
  }

  /** Closes the vCPU file descriptor. */
  close(): void {
    close(this.fd);
  }
}

/** Options of {@link guestCpuid}. */
export interface GuestCpuidOptions {
  /** vCPUs in the guest, as cores of one package (default 1). */
  cpus?: number;
  /**
   * Advertise the TSC-deadline timer (leaf 1 ECX bit 24). `KVM_GET_SUPPORTED_CPUID` leaves it
   * out because it depends on the in-kernel local APIC; pass
   * `checkExtension(KvmCap.TSC_DEADLINE_TIMER) > 0`.
   */
  tscDeadline?: boolean;
}

/** Leaf 1 ECX: TSC-deadline timer. */
export const CPUID_1_ECX_TSC_DEADLINE = 1 << 24;
/** Leaf 1 ECX: running under a hypervisor. */
export const CPUID_1_ECX_HYPERVISOR = 1 << 31;
/** Leaf 1 EDX: more than one logical processor per package (HTT). */
export const CPUID_1_EDX_HTT = 1 << 28;
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

/**
 * The CPUID vCPU `apicId` of a guest with `options.cpus` vCPUs gets: KVM's supported leaves, with
 * the hypervisor bit, the TSC-deadline bit when the local APIC supports it, the initial APIC id,
 * and one package of `cpus` single-threaded cores (leaf 1 EBX/EDX, the x2APIC topology leaves
 * 0xB/0x1F, AMD's core count in 0x80000008 ECX and Intel's in leaf 4), so that the guest's
 * topology agrees with the ACPI MADT instead of with the host's.
 *
 * @param supported From {@link Kvm.supportedCpuid}.
 * @param apicId The vCPU id.
 * @param options vCPU count and TSC deadline.
 * @returns The leaves for {@link Vcpu.setCpuid}.
 */
export function guestCpuid(
  supported: readonly CpuidEntry[],
  apicId = 0,
  options: GuestCpuidOptions = {},
): CpuidEntry[] {
  const cpus = options.cpus ?? 1;
  const coreBits = cpus > 1 ? Math.ceil(Math.log2(cpus)) : 0;
  const out: CpuidEntry[] = [];
  const topology = (fn: number) => {
    // SMT level (1 thread per core), then core level (cpus cores), then the invalid level.
    const levels = [
      { eax: 0, ebx: 1, ecx: (1 << 8) | 0 },
      { eax: coreBits, ebx: cpus, ecx: (2 << 8) | 1 },
      { eax: 0, ebx: 0, ecx: 2 },
    ];
    levels.forEach((l, index) =>
      out.push({
        function: fn,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        ...l,
        edx: apicId,
      })
    );
  };
  const done = new Set<number>();
  for (const e of supported) {
    switch (e.function) {
      case 1: {
        let ecx = e.ecx | CPUID_1_ECX_HYPERVISOR;
        if (options.tscDeadline) ecx |= CPUID_1_ECX_TSC_DEADLINE;
        const ebx = (e.ebx & 0x0000ffff) | ((Math.min(cpus, 255) & 0xff) << 16) | (apicId << 24);
        const edx = cpus > 1 ? e.edx | CPUID_1_EDX_HTT : e.edx & ~CPUID_1_EDX_HTT;
        out.push({ ...e, ecx: ecx >>> 0, ebx: ebx >>> 0, edx: edx >>> 0 });
        break;
      }
      case 4: // Intel: cores per package - 1 in EAX[31:26]
        out.push({ ...e, eax: ((e.eax & 0x03ffffff) | ((cpus - 1) << 26)) >>> 0 });
        break;
      case 0xb:
      case 0x1f:
        if (!done.has(e.function)) topology(e.function);
        done.add(e.function);
        break;
      case 0x80000008: // AMD: ApicIdCoreIdSize in ECX[15:12], cores - 1 in ECX[7:0]
        out.push({ ...e, ecx: ((e.ecx & ~0xf0ff) | (coreBits << 12) | (cpus - 1)) >>> 0 });
        break;
      case 0x8000001e: // AMD extended APIC id, core id, one thread per core
        out.push({
          ...e,
          eax: apicId,
          ebx: (e.ebx & ~0xffff) | (apicId & 0xff),
          ecx: e.ecx & ~0xff,
        });
        break;
      default:
        out.push({ ...e });
    }
  }
  return out;
}
