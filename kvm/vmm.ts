/**
 * The smallest VMM that boots a Linux bzImage with our virtio devices (over virtio-mmio or
 * virtio-pci) on KVM.
 *
 * Design:
 * - Guest RAM is one anonymous `mmap` registered as KVM memory slot 0 and, at the same time, the
 *   single region of the {@link GuestMemory} the devices read and write: no copies.
 * - The PIC, I/O APIC, local APICs and PIT are in the kernel (`KVM_CREATE_IRQCHIP`,
 *   `KVM_CREATE_PIT2`).
 * - ACPI tables (`acpi.ts`) describe the machine: a hardware-reduced FADT, a MADT with one local
 *   APIC per vCPU and the I/O APIC, and a DSDT with COM1 and the virtio-mmio devices (`LNRO0005`),
 *   which is how a stock distribution kernel finds them. With `mmioDiscovery: "cmdline"` the
 *   devices are declared on the command line instead (`virtio_mmio.device=4K@addr:irq`, for
 *   kernels built with `VIRTIO_MMIO_CMDLINE_DEVICES`).
 * - Device `i` has its register window at `mmioBase + i * 0x1000` and interrupt line
 *   `firstIrq + i` (edge-triggered).
 * - Queue notifications: a `KVM_IOEVENTFD` per queue on QueueNotify (window + 0x50, 4 bytes,
 *   datamatch = queue index). The main thread watches the eventfds and runs the queue; the
 *   vCPU never leaves the guest for a kick.
 * - Interrupts: a `KVM_IRQFD` per device; the transport's interrupt trigger writes its eventfd.
 * - Each vCPU loops on `KVM_RUN` in its own Worker (the call blocks). vCPU 0 starts at the
 *   kernel's 64-bit entry; the others wait in the in-kernel local APIC for the guest's
 *   INIT/SIPI. Port I/O (COM1, the ACPI registers, i8042 reset) is served in the workers, which
 *   share COM1 through one SharedArrayBuffer. MMIO register accesses go to the main thread's
 *   {@link MmioTransport}s through a per-vCPU SharedArrayBuffer mailbox: the worker posts the
 *   access, rings with `postMessage` and sleeps in `Atomics.wait`; the main thread serves it and
 *   wakes it. Register accesses only happen at probe and interrupt time, so the round trip is
 *   cheap enough, and device state stays on one thread.
 * - Stopping: the stop flag, `kvm_run.immediate_exit` and a SIGWINCH to each vCPU thread (blocked
 *   there except inside `KVM_RUN`) bring every vCPU out, halted ones included.
 * - With `transport: "pci"` the devices are virtio-pci functions instead (virtio 1.2 §4.1), one
 *   per slot of bus 0 behind a host bridge at 00:00.0 (`pci.ts`, `_pci_devices.ts`): configuration
 *   mechanism #1 (the 0xCF8 latch lives in the vCPU workers, shared, and reads are answered there
 *   from a copy of the configuration space; writes go to the main thread through the mailbox)
 *   and ECAM (an MCFG table, and the window reserved in e820 and by a PNP0C02 device); BARs
 *   placed in the 32-bit, 64-bit and I/O windows the DSDT's `\_SB.PCI0` declares; an ioeventfd
 *   per queue on its notify address (re-registered when the guest moves the BAR); MSI-X vectors
 *   as GSIs routed with `KVM_SET_GSI_ROUTING`, each with its irqfd; INTx through `KVM_IRQ_LINE`
 *   on the I/O APIC pin the `_PRT` names.
 *
 * @module
 */

import { GuestMemory, type GuestRegion } from "../memory/guest_memory.ts";
import { MMIO_WINDOW_SIZE, MmioRegister, MmioTransport } from "../transport/mmio.ts";
import type { PciTransport } from "../transport/pci.ts";
import { MappedGuestRam, type VirtioDevice, type VirtioRegionHandler } from "../devices/device.ts";
import { DeviceMemorySpace, physAddressLimit } from "./device_memory.ts";
import {
  EventFd,
  hasKvm,
  kvmUnavailableReason,
  type Mapping,
  mmapAnonymous,
  mmapFd,
  signalThread,
  SIGWINCH,
  type Watch,
  watchReadable,
} from "../sys/mod.ts";
import { KvmCap, KvmRunOffset } from "./abi.ts";
import { writeAcpiTables } from "./acpi.ts";
import {
  type BootInfo,
  loadLinux,
  longModeRegs,
  longModeSregs,
  virtioMmioCmdline,
} from "./boot.ts";
import type { StopReason } from "./exits.ts";
import { VcpuError } from "./exits.ts";
import { COM1_IRQ } from "./serial.ts";
import {
  defaultIrqchipRoutes,
  guestCpuid,
  Kvm,
  KvmError,
  NO_KVM_REASON,
  type Vcpu,
  type Vm,
} from "./vm.ts";
import { DEFAULT_PCI_LAYOUT, type PciLayout } from "./pci.ts";
import { CONSOLE_CHANNEL_SIZE, ConsoleChannel } from "./_console.ts";
import { AccessKind, Mailbox, MAILBOX_SIZE } from "./_mailbox.ts";
import { PciDevices } from "./_pci_devices.ts";
import type { VcpuMessage, VcpuStart } from "./_vcpu_worker.ts";

/** Default guest-physical base of the first device window (in the 3–4 GiB MMIO gap). */
export const DEFAULT_MMIO_BASE = 0xd0000000;
/** Default interrupt line of the first device. */
export const DEFAULT_FIRST_IRQ = 5;
/** Default RAM size: 256 MiB. */
export const DEFAULT_MEMORY_SIZE = 256 << 20;
/** Default kernel command line with virtio-mmio (devices declared there are appended). */
export const DEFAULT_CMDLINE = "console=ttyS0 panic=-1 pci=off quiet";
/** Default kernel command line with virtio-pci (the guest probes PCI). */
export const DEFAULT_PCI_CMDLINE = "console=ttyS0 panic=-1 quiet";
/** Most vCPUs a {@link MicroVm} takes. */
export const MAX_VCPUS = 64;
/** How often a running VM's console is checked for output without a line end, in ms. */
const CONSOLE_POLL_MS = 100;
/** Where KVM's VMX TSS pages go (three pages below the identity map page, under 4 GiB). */
export const TSS_ADDRESS = 0xfffbd000;
/** Where KVM's VMX identity-map page goes. */
export const IDENTITY_MAP_ADDRESS = 0xfffbc000;

/** Options of {@link MicroVm.create}. */
export interface MicroVmOptions {
  /** The bzImage. */
  kernel: Uint8Array;
  /** The initramfs, if any. */
  initrd?: Uint8Array;
  /**
   * Kernel command line (default {@link DEFAULT_CMDLINE}, or {@link DEFAULT_PCI_CMDLINE} with
   * PCI; with PCI it must not say `pci=off`).
   */
  cmdline?: string;
  /** Guest RAM in bytes (default 256 MiB, at most 3 GiB). */
  memorySize?: number;
  /** vCPUs, each run by its own Worker (default 1, at most {@link MAX_VCPUS}). */
  cpus?: number;
  /** The devices, in window (or slot) order. Their transports are made by the VMM. */
  devices?: readonly VirtioDevice[];
  /**
   * How the devices are attached: `"mmio"` (default; virtio-mmio windows, the smallest and
   * quickest to boot) or `"pci"` (virtio-pci functions behind a PCI host bridge with MSI-X, what
   * every stock x86 kernel drives: it needs `CONFIG_VIRTIO_PCI`, built in or in the initramfs).
   */
  transport?: "mmio" | "pci";
  /** PCI options (with `transport: "pci"`). */
  pci?: {
    /**
     * Also offer the legacy interface (transitional device ids and an I/O BAR, virtio 1.2
     * §4.1.4.10) for drivers older than virtio 1.0 (default false).
     */
    transitional?: boolean;
    /** Where ECAM, the BAR windows and the INTx lines go (default {@link DEFAULT_PCI_LAYOUT}). */
    layout?: PciLayout;
  };
  /**
   * How the guest learns of the devices: `"acpi"` (default), in the DSDT as `LNRO0005`, which
   * stock kernels with `CONFIG_VIRTIO_MMIO` and `CONFIG_ACPI` understand; or `"cmdline"`,
   * `virtio_mmio.device=` arguments appended to the command line, for kernels built with
   * `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` (with or without ACPI).
   */
  mmioDiscovery?: "acpi" | "cmdline";
  /** Base of the first device window (default {@link DEFAULT_MMIO_BASE}). */
  mmioBase?: number;
  /** Interrupt line of the first device (default {@link DEFAULT_FIRST_IRQ}). */
  firstIrq?: number;
  /**
   * Guest-physical start of device memory (virtio-mem and pmem regions, DAX windows; default
   * 4 GiB, `DEFAULT_DEVICE_MEMORY_BASE`, or the end of the 64-bit PCI window with PCI).
   */
  deviceMemoryBase?: number;
  /** Receives console (COM1) output as text (default: `process.stdout.write`). */
  console?: (text: string) => void;
  /** Receives device and transport errors (default: ignore). */
  onError?: (err: Error) => void;
}

/** How a run ended. */
export interface RunResult {
  /** Why the guest stopped (the first vCPU to stop decides); `"stopped"` after {@link MicroVm.stop}. */
  reason: StopReason | "stopped";
  /** Exits to user space, all vCPUs together. */
  exits: number;
  /** Milliseconds from {@link MicroVm.run} to vCPU 0's first `KVM_RUN` (worker start-up). */
  startupMs: number;
  /**
   * When vCPU 0 entered `KVM_RUN` the first time, on this thread's `performance.now()` clock
   * (the first guest instruction follows at once).
   */
  startedAt: number;
  /** Milliseconds from vCPU 0's first `KVM_RUN` until every vCPU had stopped. */
  elapsedMs: number;
  /**
   * More about the stop when there is more to say: for a triple fault (a `"reset"` through
   * `KVM_EXIT_SHUTDOWN`, not through a reset port) the vCPU and its registers.
   */
  detail?: string;
}

/**
 * Thrown by {@link MicroVm.create} when this host cannot run KVM guests: `/dev/kvm` is absent or
 * not accessible, or it is a software KVM such as PVM (see `kvmUnavailableReason` in `sys/`).
 */
export class KvmUnavailableError extends KvmError {
  /**
   * Creates the error.
   *
   * @param reason Why KVM is unusable (default {@link NO_KVM_REASON}).
   */
  constructor(reason: string = NO_KVM_REASON) {
    super(reason);
    this.name = "KvmUnavailableError";
  }
}

interface DeviceSlot {
  transport: MmioTransport;
  base: number;
  irq: number;
  irqFd: EventFd;
  queueFds: EventFd[];
  watches: Watch[];
}

interface VcpuSlot {
  vcpu: Vcpu;
  run: Mapping;
  mailboxBuffer: SharedArrayBuffer;
  mailbox: Mailbox;
  worker?: Worker;
  /** Kernel thread id of the worker, once it reported "running". */
  tid?: number;
  done: boolean;
}

/**
 * A microVM on KVM: vCPUs, RAM, COM1, ACPI tables and virtio-mmio devices.
 *
 * @example Boot a kernel with an entropy device on two vCPUs
 * ```ts ignore
 * import { MicroVm } from "./vmm.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * const vm = MicroVm.create({ kernel, initrd, cpus: 2, devices: [new RngDevice()] });
 * const result = await vm.run({ timeoutMs: 60_000 });
 * vm.close();
 * ```
 */
export class MicroVm implements VirtioRegionHandler {
  /** Guest RAM as the devices see it (aliases the KVM memory slot). */
  readonly memory: GuestMemory;
  /** The transports, one per device, in window (or slot) order. */
  readonly transports: readonly (MmioTransport | PciTransport)[];
  /** How the devices are attached. */
  readonly transport: "mmio" | "pci";
  /** Where the loader put the kernel and its data. */
  readonly boot: BootInfo;
  /** The full kernel command line. */
  readonly cmdline: string;
  /** Number of vCPUs. */
  readonly cpus: number;
  readonly #kvm: Kvm;
  readonly #vm: Vm;
  readonly #vcpus: VcpuSlot[];
  readonly #ram: Mapping;
  readonly #runSize: number;
  readonly #slots: DeviceSlot[];
  readonly #deviceMemory: DeviceMemorySpace;
  readonly #pci: PciDevices | undefined;
  readonly #conf1 = new SharedArrayBuffer(4);
  readonly #consoleBuffer: SharedArrayBuffer;
  readonly #channel: ConsoleChannel;
  readonly #console: (text: string) => void;
  readonly #onError: (err: Error) => void;
  #running = false;
  #stopping = false;
  #closed = false;

  private constructor(
    parts: {
      kvm: Kvm;
      vm: Vm;
      vcpus: VcpuSlot[];
      ram: Mapping;
      runSize: number;
      memory: GuestMemory;
      slots: DeviceSlot[];
      deviceMemory: DeviceMemorySpace;
      pci: PciDevices | undefined;
      boot: BootInfo;
      cmdline: string;
    },
    options: MicroVmOptions,
  ) {
    this.#deviceMemory = parts.deviceMemory;
    this.#kvm = parts.kvm;
    this.#vm = parts.vm;
    this.#vcpus = parts.vcpus;
    this.#ram = parts.ram;
    this.#runSize = parts.runSize;
    this.#slots = parts.slots;
    this.#pci = parts.pci;
    this.memory = parts.memory;
    this.transport = parts.pci === undefined ? "mmio" : "pci";
    this.transports = parts.pci?.transports ?? parts.slots.map((s) => s.transport);
    this.boot = parts.boot;
    this.cmdline = parts.cmdline;
    this.cpus = parts.vcpus.length;
    this.#consoleBuffer = new SharedArrayBuffer(CONSOLE_CHANNEL_SIZE);
    this.#channel = new ConsoleChannel(this.#consoleBuffer);
    this.#console = options.console ??
      ((text) =>
        void (globalThis as { process?: { stdout: { write(s: string): void } } }).process?.stdout
          .write(text));
    this.#onError = options.onError ?? (() => {});
  }

  /**
   * Whether this host can run a {@link MicroVm} (`/dev/kvm` can be opened read-write and the CPU
   * has VT-x or AMD-V).
   *
   * @returns True if KVM is usable.
   */
  static available(): boolean {
    return hasKvm();
  }

  /**
   * Creates the VM: KVM objects, RAM, irqchip and PIT, the devices with their ioeventfds and
   * irqfds, the ACPI tables, the loaded kernel, and the vCPUs (vCPU 0 in 64-bit mode at the
   * kernel's entry point).
   *
   * @param options Kernel, initramfs, command line, RAM, vCPUs and devices.
   * @returns The VM, ready to {@link MicroVm.run}.
   * @throws {KvmUnavailableError} When `/dev/kvm` is absent, inaccessible or not hardware-assisted.
   * @throws {KvmError} When KVM lacks a needed capability.
   * @throws {RangeError} For a vCPU count outside 1–{@link MAX_VCPUS}.
   * @throws {BootError} When the kernel cannot be loaded.
   * @throws {TypeError} For `pci=off` on the command line of a PCI machine.
   */
  static create(options: MicroVmOptions): MicroVm {
    const unusable = kvmUnavailableReason();
    if (unusable !== undefined) throw new KvmUnavailableError(unusable);
    const memorySize = options.memorySize ?? DEFAULT_MEMORY_SIZE;
    const mmioBase = options.mmioBase ?? DEFAULT_MMIO_BASE;
    const firstIrq = options.firstIrq ?? DEFAULT_FIRST_IRQ;
    const devices = options.devices ?? [];
    const cpus = options.cpus ?? 1;
    const onError = options.onError ?? (() => {});
    const usePci = options.transport === "pci";
    const layout = options.pci?.layout ?? DEFAULT_PCI_LAYOUT;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_VCPUS) {
      throw new RangeError(`${cpus} vCPUs: 1 to ${MAX_VCPUS} are possible`);
    }
    if (usePci && /(^|\s)pci=off(\s|$)/.test(options.cmdline ?? "")) {
      throw new TypeError("pci=off on the command line of a PCI machine");
    }

    const kvm = Kvm.open();
    const undo: (() => void)[] = [() => kvm.close()];
    try {
      const optional = ["HLT", "EXT_CPUID", "NR_MEMSLOTS", "IMMEDIATE_EXIT", "TSC_DEADLINE_TIMER"];
      for (const [name, cap] of Object.entries(KvmCap)) {
        if (optional.includes(name)) continue;
        if (kvm.checkExtension(cap) <= 0) {
          throw new KvmError(`KVM lacks KVM_CAP_${name}`);
        }
      }
      const runSize = kvm.vcpuMmapSize();
      const vm = kvm.createVm();
      undo.push(() => vm.close());
      vm.setIdentityMapAddr(IDENTITY_MAP_ADDRESS);
      vm.setTssAddr(TSS_ADDRESS);
      vm.createIrqchip();
      vm.createPit2();

      const ram = mmapAnonymous(memorySize);
      undo.push(() => ram.unmap());
      vm.setUserMemoryRegion(0, 0, memorySize, ram.address);
      const memory = new GuestMemory([{ base: 0, buffer: ram.buffer }]);
      // What a balloon may release (RAM only), and where device memory goes (above 4 GiB).
      const guestRam = new MappedGuestRam([{ base: 0, mapping: ram }]);
      const deviceMemory = new DeviceMemorySpace({
        memory,
        // After the PCI host bridge's 64-bit window, where the guest may move BARs.
        base: options.deviceMemoryBase ??
          (usePci ? layout.mmio64.base + layout.mmio64.size : undefined),
        limit: physAddressLimit(kvm.supportedCpuid()),
        maxSlots: kvm.checkExtension(KvmCap.NR_MEMSLOTS) || undefined,
        setSlot: (slot, gpa, size, host, flags) =>
          vm.setUserMemoryRegion(slot, gpa, size, host, flags),
      });

      let pci: PciDevices | undefined;
      if (usePci) {
        // Device memory is found through the device configuration (virtio-mem, pmem), not BARs.
        for (const device of devices) {
          device.setGuestRam?.(guestRam);
          deviceMemory.attach(device);
        }
        pci = new PciDevices(devices, {
          memory,
          layout,
          kvm: {
            ioeventfd: (addr, len, fd, datamatch, flags) =>
              vm.ioeventfd(addr, len, fd, datamatch, flags),
            irqfd: (fd, gsi) => vm.irqfd(fd, gsi),
            setGsiRouting: (routes) => vm.setGsiRouting(routes),
            irqLine: (gsi, level) => vm.irqLine(gsi, level),
          },
          baseRoutes: defaultIrqchipRoutes(),
          transitional: options.pci?.transitional,
          onError,
        });
        const devicesOfPci = pci;
        undo.push(() => devicesOfPci.close());
      }
      const slots: DeviceSlot[] = (usePci ? [] : devices).map((device, i) => {
        const base = mmioBase + i * MMIO_WINDOW_SIZE;
        const irq = firstIrq + i;
        if (irq === COM1_IRQ) throw new KvmError(`IRQ ${irq} is COM1's`);
        const irqFd = new EventFd();
        undo.push(() => irqFd.close());
        vm.irqfd(irqFd.fd, irq);
        device.setGuestRam?.(guestRam);
        const shmRegions = deviceMemory.attach(device, { base, size: MMIO_WINDOW_SIZE, irq });
        const transport = new MmioTransport(device, memory, {
          interrupt: () => irqFd.write(1n),
          onError,
          shmRegions,
        });
        const queueFds: EventFd[] = [];
        const watches: Watch[] = [];
        transport.queues.forEach((_q, index) => {
          const efd = new EventFd();
          undo.push(() => efd.close());
          vm.ioeventfd(base + MmioRegister.QueueNotify, 4, efd.fd, BigInt(index));
          queueFds.push(efd);
          const watch = watchReadable(efd.fd, () => {
            if (efd.read() > 0n) transport.writeU32(MmioRegister.QueueNotify, index);
          });
          undo.push(() => watch.close());
          watches.push(watch);
        });
        return { transport, base, irq, irqFd, queueFds, watches };
      });

      const specs = slots.map((s) => ({ addr: s.base, irq: s.irq }));
      const onCmdline = options.mmioDiscovery === "cmdline";
      const acpi = writeAcpiTables(memory, {
        cpus,
        virtioMmio: onCmdline ? [] : specs,
        pci: usePci ? layout : undefined,
      });
      const cmdline = [
        options.cmdline ?? (usePci ? DEFAULT_PCI_CMDLINE : DEFAULT_CMDLINE),
        onCmdline ? virtioMmioCmdline(specs) : "",
      ]
        .filter((s) => s).join(" ");
      const boot = loadLinux(memory, {
        kernel: options.kernel,
        initrd: options.initrd,
        cmdline,
        ramSize: memorySize,
        acpiRsdp: acpi.rsdp,
        reserved: usePci ? [{ addr: layout.ecamBase, size: layout.buses * 0x10_0000 }] : [],
      });

      const supported = kvm.supportedCpuid();
      const tscDeadline = kvm.checkExtension(KvmCap.TSC_DEADLINE_TIMER) > 0;
      const vcpus: VcpuSlot[] = [];
      for (let id = 0; id < cpus; id++) {
        const vcpu = vm.createVcpu(id);
        undo.push(() => vcpu.close());
        vcpu.setCpuid(guestCpuid(supported, id, { cpus, tscDeadline }));
        if (id === 0) {
          // The others start in the local APIC's wait-for-SIPI state; the guest wakes them.
          vcpu.setSregs(longModeSregs(vcpu.getSregs(), boot));
          vcpu.setRegs(longModeRegs(boot));
        }
        vcpu.setupLapicLint();
        const run = mmapFd(vcpu.fd, runSize);
        undo.push(() => run.unmap());
        const mailboxBuffer = new SharedArrayBuffer(MAILBOX_SIZE);
        vcpus.push({ vcpu, run, mailboxBuffer, mailbox: new Mailbox(mailboxBuffer), done: false });
      }

      return new MicroVm(
        { kvm, vm, vcpus, ram, runSize, memory, slots, pci, deviceMemory, boot, cmdline },
        options,
      );
    } catch (err) {
      for (const fn of undo.reverse()) {
        try {
          fn();
        } catch {
          // Best effort: the original error matters.
        }
      }
      throw err;
    }
  }

  /** The virtio-mmio device windows: base address and interrupt line of each transport. */
  get windows(): { base: number; irq: number }[] {
    return this.#slots.map(({ base, irq }) => ({ base, irq }));
  }

  /** Device memory inserted so far: guest-physical place and memory slot of each region. */
  get deviceMemory(): readonly { base: number; size: number; slot: number }[] {
    return this.#deviceMemory.regions;
  }

  /**
   * Inserts device memory into the guest (seed `VirtioRegionHandler`): a new KVM memory slot,
   * and a region of {@link MicroVm.memory}. Devices that declare device memory get theirs at
   * creation; this is for memory added later.
   *
   * @param region The region, at or above the device memory base, over a live mapping.
   * @throws {TypeError} When the region is not over a mapping.
   * @throws {RangeError} When it is not page-aligned, below the device memory base, past the
   *   guest's physical address space, overlaps other memory, or no slot is left.
   */
  insertRegion(region: GuestRegion): void {
    this.#deviceMemory.insertRegion(region);
  }

  /**
   * The PCI devices: slot, INTx GSI and MSI-X GSIs of each (empty with virtio-mmio).
   */
  get pciSlots(): { slot: number; intxGsi: number; msiGsi: number; vectors: number }[] {
    return this.#pci?.slots ?? [];
  }

  /**
   * Serves one access a vCPU handed over: MMIO, a port in the PCI I/O window, or a PCI
   * configuration register.
   *
   * @param addr Guest-physical address, port, or ECAM-style configuration offset.
   * @param write True for a write.
   * @param data The value (write) or the buffer to fill (read).
   * @param kind What `addr` is (`AccessKind` of the mailbox).
   */
  #handleAccess(addr: number, write: boolean, data: Uint8Array, kind: number): void {
    const pci = this.#pci;
    if (kind === AccessKind.MMIO) this.handleMmio(addr, write, data);
    else if (pci === undefined) {
      if (!write) data.fill(0xff);
    } else if (kind === AccessKind.IO) pci.io(addr, write, data);
    else if (kind === AccessKind.PCI_CONFIG) pci.config(addr, write, data);
    else if (!write) data.fill(0xff);
  }

  /**
   * Serves one MMIO access from a vCPU.
   *
   * @param addr Guest-physical address.
   * @param write True for a write.
   * @param data The value (write) or the buffer to fill (read).
   */
  handleMmio(addr: number, write: boolean, data: Uint8Array): void {
    if (this.#pci?.mmio(addr, write, data)) return;
    for (const slot of this.#slots) {
      if (addr >= slot.base && addr < slot.base + MMIO_WINDOW_SIZE) {
        if (write) slot.transport.write(addr - slot.base, data);
        else slot.transport.read(addr - slot.base, data);
        return;
      }
    }
    if (!write) data.fill(0xff);
  }

  /**
   * Runs the vCPUs until the guest resets, powers off or crashes, or until {@link MicroVm.stop}.
   * Resolves once every vCPU has left `KVM_RUN`.
   *
   * @param options `timeoutMs`: stop after this long, counted from vCPU 0's first `KVM_RUN`
   *   (not from this call: starting the workers does not eat into the guest's time); the result
   *   then says `"stopped"`.
   * @returns How the run ended.
   * @throws {VcpuError} When a vCPU fails (entry failure, internal error, unhandled exit).
   */
  run(options: { timeoutMs?: number } = {}): Promise<RunResult> {
    if (this.#running) return Promise.reject(new Error("The VM is already running"));
    if (this.#closed) return Promise.reject(new Error("The VM is closed"));
    this.#running = true;
    const called = performance.now();
    const decoder = new TextDecoder();
    const drain = () => {
      const bytes = this.#channel.drain();
      if (bytes.byteLength > 0) this.#console(decoder.decode(bytes, { stream: true }));
    };
    return new Promise<RunResult>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      let startedAt = NaN;
      let exits = 0;
      let reason: StopReason | "stopped" | undefined;
      let detail: string | undefined;
      let failure: Error | undefined;
      let left = this.#vcpus.length;
      // Whole lines arrive with a doorbell; a partial line (a prompt) is picked up by this.
      const poll = setInterval(drain, CONSOLE_POLL_MS);
      const vcpuDone = (slot: VcpuSlot) => {
        if (slot.done) return;
        slot.done = true;
        slot.worker?.terminate();
        slot.worker = undefined;
        if (--left > 0) {
          this.stop(); // the first vCPU to stop stops the others
          return;
        }
        if (timer !== undefined) clearTimeout(timer);
        clearInterval(poll);
        drain();
        const tail = decoder.decode();
        if (tail) this.#console(tail);
        this.#running = false;
        if (failure) reject(failure);
        else {
          if (Number.isNaN(startedAt)) startedAt = performance.now();
          resolve({
            reason: reason ?? "stopped",
            exits,
            startupMs: startedAt - called,
            startedAt,
            elapsedMs: performance.now() - startedAt,
            ...(detail === undefined ? {} : { detail }),
          });
        }
      };
      this.#stopping = false;
      this.#vcpus.forEach((slot, index) => {
        slot.done = false;
        slot.tid = undefined;
        const worker = new Worker(new URL("./_vcpu_worker.ts", import.meta.url).href, {
          type: "module",
        });
        slot.worker = worker;
        worker.onmessage = (e: MessageEvent<VcpuMessage>) => {
          const msg = e.data;
          switch (msg.type) {
            case "running":
              slot.tid = msg.tid;
              if (index === 0) {
                startedAt = msg.at - performance.timeOrigin;
                if (options.timeoutMs !== undefined) {
                  timer = setTimeout(() => this.stop(), options.timeoutMs);
                }
              }
              // A stop asked for before this vCPU ran: its KVM_RUN must be interrupted too.
              if (this.#stopping) this.#kick(slot);
              return;
            case "console":
              drain();
              return;
            case "mmio":
              try {
                slot.mailbox.serve((addr, write, data, kind) =>
                  this.#handleAccess(addr, write, data, kind)
                );
              } catch (err) {
                this.#onError(err instanceof Error ? err : new Error(String(err)));
              }
              return;
            case "exit":
              exits += msg.exits;
              if (msg.detail !== undefined) detail ??= msg.detail;
              if (reason === undefined || reason === "stopped") {
                reason = msg.reason === "stopped" ? reason ?? "stopped" : msg.reason;
              }
              vcpuDone(slot);
              return;
            case "error":
              failure ??= new VcpuError(
                msg.code as ConstructorParameters<typeof VcpuError>[0],
                `vCPU ${msg.index}: ${msg.message}`,
              );
              vcpuDone(slot);
          }
        };
        worker.onerror = (e: ErrorEvent) => {
          e.preventDefault?.();
          failure ??= new VcpuError("RunFailed", `vCPU ${index} worker failed: ${e.message}`);
          vcpuDone(slot);
        };
        const start: VcpuStart = {
          type: "start",
          index,
          vcpuFd: slot.vcpu.fd,
          vmFd: this.#vm.fd,
          runSize: this.#runSize,
          mailbox: slot.mailboxBuffer,
          console: this.#consoleBuffer,
          pci: this.#pci === undefined ? undefined : {
            conf1: this.#conf1,
            shadow: this.#pci.configShadow,
            ioBase: this.#pci.layout.io.base,
            // Without I/O BARs nothing answers there: the worker's "all ones" is the answer.
            ioSize: this.#pci.hasIoBars ? this.#pci.layout.io.size : 0,
          },
        };
        worker.postMessage(start);
      });
    });
  }

  #kick(slot: VcpuSlot): void {
    if (slot.done || slot.tid === undefined) return;
    try {
      signalThread(slot.tid, SIGWINCH);
    } catch {
      // The thread has gone: its worker is finishing.
    }
  }

  /**
   * Asks every vCPU to stop: sets the stop flags and `kvm_run.immediate_exit`, and signals each
   * vCPU thread so that a running or halted vCPU leaves `KVM_RUN` at once. The pending
   * {@link MicroVm.run} then resolves (with `"stopped"` unless the guest stopped first).
   */
  stop(): void {
    this.#stopping = true;
    for (const slot of this.#vcpus) {
      slot.mailbox.requestStop();
      new Uint8Array(slot.run.buffer)[KvmRunOffset.immediateExit] = 1;
      this.#kick(slot);
    }
  }

  /**
   * Releases everything: watches, eventfds, vCPUs, VM, RAM. Stops running vCPUs first; await
   * {@link MicroVm.run} before closing for an orderly end.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#running) this.stop();
    for (const slot of this.#vcpus) {
      slot.worker?.terminate();
      slot.worker = undefined;
    }
    for (const s of this.#slots) {
      for (const w of s.watches) w.close();
      for (const q of s.queueFds) q.close();
      s.irqFd.close();
    }
    this.#pci?.close();
    for (const slot of this.#vcpus) {
      slot.run.unmap();
      slot.vcpu.close();
    }
    this.#vm.close();
    this.#kvm.close();
    this.#ram.unmap();
  }
}
