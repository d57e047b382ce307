/**
 * The smallest VMM that boots a Linux bzImage with our virtio-mmio devices on KVM.
 *
 * Design (one vCPU):
 * - Guest RAM is one anonymous `mmap` registered as KVM memory slot 0 and, at the same time, the
 *   single region of the {@link GuestMemory} the devices read and write: no copies.
 * - The PIC, IOAPIC, local APIC and PIT are in the kernel (`KVM_CREATE_IRQCHIP`,
 *   `KVM_CREATE_PIT2`). With neither ACPI nor an MP table the guest runs its APIC in
 *   virtual-wire mode and takes ISA interrupts through the PIC.
 * - Device `i` has its register window at `mmioBase + i * 0x1000` and interrupt line
 *   `firstIrq + i`, declared on the command line (`virtio_mmio.device=4K@addr:irq`).
 * - Queue notifications: a `KVM_IOEVENTFD` per queue on QueueNotify (window + 0x50, 4 bytes,
 *   datamatch = queue index). The main thread watches the eventfds and runs the queue; the
 *   vCPU never leaves the guest for a kick.
 * - Interrupts: a `KVM_IRQFD` per device; the transport's interrupt trigger writes its eventfd.
 * - The vCPU loops on `KVM_RUN` in a Worker (the call blocks). Port I/O (COM1 console, i8042
 *   reset) is served in the worker. MMIO register accesses go to the main thread's
 *   {@link MmioTransport}s through a SharedArrayBuffer mailbox: the worker posts the access,
 *   rings with `postMessage` and sleeps in `Atomics.wait`; the main thread serves it and wakes
 *   it. Register accesses only happen at probe and interrupt time, so the round trip is cheap
 *   enough, and device state stays on one thread.
 *
 * @module
 */

import { GuestMemory } from "../memory/guest_memory.ts";
import { MMIO_WINDOW_SIZE, MmioRegister, MmioTransport } from "../transport/mmio.ts";
import type { VirtioDevice } from "../devices/device.ts";
import {
  EventFd,
  hasKvm,
  type Mapping,
  mmapAnonymous,
  mmapFd,
  type Watch,
  watchReadable,
} from "../sys/mod.ts";
import { KvmCap, KvmRunOffset } from "./abi.ts";
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
import { guestCpuid, Kvm, KvmError, NO_KVM_REASON, type Vcpu, type Vm } from "./vm.ts";
import { Mailbox, MAILBOX_SIZE } from "./_mailbox.ts";
import type { VcpuMessage, VcpuStart } from "./_vcpu_worker.ts";

/** Default guest-physical base of the first device window (in the 3–4 GiB MMIO gap). */
export const DEFAULT_MMIO_BASE = 0xd0000000;
/** Default interrupt line of the first device. */
export const DEFAULT_FIRST_IRQ = 5;
/** Default RAM size: 256 MiB. */
export const DEFAULT_MEMORY_SIZE = 256 << 20;
/** Default kernel command line (devices are appended). */
export const DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=-1 pci=off quiet";
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
  /** Kernel command line; the virtio-mmio devices are appended (default {@link DEFAULT_CMDLINE}). */
  cmdline?: string;
  /** Guest RAM in bytes (default 256 MiB, at most 3 GiB). */
  memorySize?: number;
  /** The devices, in window order. Their transports are made by the VMM. */
  devices?: readonly VirtioDevice[];
  /** Base of the first device window (default {@link DEFAULT_MMIO_BASE}). */
  mmioBase?: number;
  /** Interrupt line of the first device (default {@link DEFAULT_FIRST_IRQ}). */
  firstIrq?: number;
  /** Receives console (COM1) output as text (default: `process.stdout.write`). */
  console?: (text: string) => void;
  /** Receives device and transport errors (default: ignore). */
  onError?: (err: Error) => void;
}

/** How a run ended. */
export interface RunResult {
  /** Why the guest stopped; `"stopped"` after {@link MicroVm.stop}. */
  reason: StopReason | "stopped";
  /** Exits to user space. */
  exits: number;
  /** Milliseconds from start to stop. */
  elapsedMs: number;
}

/**
 * Thrown by {@link MicroVm.create} when `/dev/kvm` is absent; its message is
 * {@link NO_KVM_REASON}.
 */
export class KvmUnavailableError extends KvmError {
  /** Creates the error with the message {@link NO_KVM_REASON}. */
  constructor() {
    super(NO_KVM_REASON);
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

/**
 * A microVM on KVM: one vCPU, RAM, COM1 and virtio-mmio devices.
 *
 * @example Boot a kernel with an entropy device
 * ```ts ignore
 * import { MicroVm } from "./vmm.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * const vm = MicroVm.create({ kernel, initrd, devices: [new RngDevice()] });
 * const result = await vm.run();
 * vm.close();
 * ```
 */
export class MicroVm {
  /** Guest RAM as the devices see it (aliases the KVM memory slot). */
  readonly memory: GuestMemory;
  /** The transports, one per device, in window order. */
  readonly transports: readonly MmioTransport[];
  /** Where the loader put the kernel and its data. */
  readonly boot: BootInfo;
  /** The full kernel command line. */
  readonly cmdline: string;
  readonly #kvm: Kvm;
  readonly #vm: Vm;
  readonly #vcpu: Vcpu;
  readonly #ram: Mapping;
  readonly #run: Mapping;
  readonly #runSize: number;
  readonly #slots: DeviceSlot[];
  readonly #mailbox: Mailbox;
  readonly #mailboxBuffer: SharedArrayBuffer;
  readonly #console: (text: string) => void;
  readonly #onError: (err: Error) => void;
  #worker: Worker | undefined;
  #closed = false;

  private constructor(
    parts: {
      kvm: Kvm;
      vm: Vm;
      vcpu: Vcpu;
      ram: Mapping;
      run: Mapping;
      runSize: number;
      memory: GuestMemory;
      slots: DeviceSlot[];
      boot: BootInfo;
      cmdline: string;
    },
    options: MicroVmOptions,
  ) {
    this.#kvm = parts.kvm;
    this.#vm = parts.vm;
    this.#vcpu = parts.vcpu;
    this.#ram = parts.ram;
    this.#run = parts.run;
    this.#runSize = parts.runSize;
    this.#slots = parts.slots;
    this.memory = parts.memory;
    this.transports = parts.slots.map((s) => s.transport);
    this.boot = parts.boot;
    this.cmdline = parts.cmdline;
    this.#mailboxBuffer = new SharedArrayBuffer(MAILBOX_SIZE);
    this.#mailbox = new Mailbox(this.#mailboxBuffer);
    this.#console = options.console ??
      ((text) =>
        void (globalThis as { process?: { stdout: { write(s: string): void } } }).process?.stdout
          .write(text));
    this.#onError = options.onError ?? (() => {});
  }

  /**
   * Whether this host can run a {@link MicroVm} (`/dev/kvm` can be opened read-write).
   *
   * @returns True if KVM is usable.
   */
  static available(): boolean {
    return hasKvm();
  }

  /**
   * Creates the VM: KVM objects, RAM, irqchip and PIT, the devices with their ioeventfds and
   * irqfds, the loaded kernel, and the vCPU in 64-bit mode at the kernel's entry point.
   *
   * @param options Kernel, initramfs, command line, RAM and devices.
   * @returns The VM, ready to {@link MicroVm.run}.
   * @throws {KvmUnavailableError} When `/dev/kvm` is absent.
   * @throws {KvmError} When KVM lacks a needed capability.
   * @throws {BootError} When the kernel cannot be loaded.
   */
  static create(options: MicroVmOptions): MicroVm {
    if (!hasKvm()) throw new KvmUnavailableError();
    const memorySize = options.memorySize ?? DEFAULT_MEMORY_SIZE;
    const mmioBase = options.mmioBase ?? DEFAULT_MMIO_BASE;
    const firstIrq = options.firstIrq ?? DEFAULT_FIRST_IRQ;
    const devices = options.devices ?? [];
    const onError = options.onError ?? (() => {});

    const kvm = Kvm.open();
    const undo: (() => void)[] = [() => kvm.close()];
    try {
      for (const [name, cap] of Object.entries(KvmCap)) {
        if (["HLT", "EXT_CPUID", "NR_MEMSLOTS", "IMMEDIATE_EXIT"].includes(name)) continue;
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

      const slots: DeviceSlot[] = devices.map((device, i) => {
        const base = mmioBase + i * MMIO_WINDOW_SIZE;
        const irq = firstIrq + i;
        if (irq === COM1_IRQ) throw new KvmError(`IRQ ${irq} is COM1's`);
        const irqFd = new EventFd();
        undo.push(() => irqFd.close());
        vm.irqfd(irqFd.fd, irq);
        const transport = new MmioTransport(device, memory, {
          interrupt: () => irqFd.write(1n),
          onError,
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

      const mmioArgs = virtioMmioCmdline(slots.map((s) => ({ addr: s.base, irq: s.irq })));
      const cmdline = [options.cmdline ?? DEFAULT_CMDLINE, mmioArgs].filter((s) => s).join(" ");
      const boot = loadLinux(memory, {
        kernel: options.kernel,
        initrd: options.initrd,
        cmdline,
        ramSize: memorySize,
      });

      const vcpu = vm.createVcpu(0);
      undo.push(() => vcpu.close());
      vcpu.setCpuid(guestCpuid(kvm.supportedCpuid(), 0));
      vcpu.setSregs(longModeSregs(vcpu.getSregs(), boot));
      vcpu.setRegs(longModeRegs(boot));
      vcpu.setupLapicLint();
      const run = mmapFd(vcpu.fd, runSize);

      return new MicroVm(
        { kvm, vm, vcpu, ram, run, runSize, memory, slots, boot, cmdline },
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

  /** The device windows: base address and interrupt line of each transport. */
  get windows(): { base: number; irq: number }[] {
    return this.#slots.map(({ base, irq }) => ({ base, irq }));
  }

  /**
   * Serves one MMIO access from the vCPU.
   *
   * @param addr Guest-physical address.
   * @param write True for a write.
   * @param data The value (write) or the buffer to fill (read).
   */
  handleMmio(addr: number, write: boolean, data: Uint8Array): void {
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
   * Runs the vCPU until the guest resets, powers off or halts, or until {@link MicroVm.stop}.
   *
   * @param options `timeoutMs`: stop after this long (the result then says `"stopped"`).
   * @returns How the run ended.
   * @throws {VcpuError} When the vCPU fails (entry failure, internal error, unhandled exit).
   */
  run(options: { timeoutMs?: number } = {}): Promise<RunResult> {
    if (this.#worker !== undefined) return Promise.reject(new Error("The VM is already running"));
    const started = performance.now();
    const worker = new Worker(new URL("./_vcpu_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker = worker;
    const decoder = new TextDecoder();
    return new Promise<RunResult>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const finish = (fn: () => void) => {
        if (timer !== undefined) clearTimeout(timer);
        const tail = decoder.decode();
        if (tail) this.#console(tail);
        worker.terminate();
        this.#worker = undefined;
        fn();
      };
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => this.stop(), options.timeoutMs);
      }
      worker.onmessage = (e: MessageEvent<VcpuMessage>) => {
        const msg = e.data;
        switch (msg.type) {
          case "console":
            this.#console(decoder.decode(msg.bytes, { stream: true }));
            return;
          case "mmio":
            try {
              this.#mailbox.serve((addr, write, data) => this.handleMmio(addr, write, data));
            } catch (err) {
              this.#onError(err instanceof Error ? err : new Error(String(err)));
            }
            return;
          case "exit":
            finish(() =>
              resolve({
                reason: msg.reason,
                exits: msg.exits,
                elapsedMs: performance.now() - started,
              })
            );
            return;
          case "error":
            finish(() =>
              reject(
                new VcpuError(
                  msg.code as ConstructorParameters<typeof VcpuError>[0],
                  msg.message,
                ),
              )
            );
        }
      };
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault?.();
        finish(() => reject(new VcpuError("RunFailed", `vCPU worker failed: ${e.message}`)));
      };
      const start: VcpuStart = {
        type: "start",
        vcpuFd: this.#vcpu.fd,
        vmFd: this.#vm.fd,
        runSize: this.#runSize,
        mailbox: this.#mailboxBuffer,
      };
      worker.postMessage(start);
    });
  }

  /**
   * Asks the vCPU to stop: sets the stop flag and `kvm_run.immediate_exit`, and pulses COM1's
   * interrupt line so a guest running or idle in the kernel exits to the worker soon. The
   * pending {@link MicroVm.run} then resolves with `"stopped"`.
   */
  stop(): void {
    this.#mailbox.requestStop();
    new Uint8Array(this.#run.buffer)[KvmRunOffset.immediateExit] = 1;
    try {
      this.#vm.irqLine(COM1_IRQ, true);
      this.#vm.irqLine(COM1_IRQ, false);
    } catch {
      // The VM may be gone already.
    }
  }

  /** Releases everything: watches, eventfds, vCPU, VM, RAM. Stops a running vCPU first. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#worker !== undefined) {
      this.stop();
      this.#worker.terminate();
      this.#worker = undefined;
    }
    for (const s of this.#slots) {
      for (const w of s.watches) w.close();
      for (const q of s.queueFds) q.close();
      s.irqFd.close();
    }
    this.#run.unmap();
    this.#vcpu.close();
    this.#vm.close();
    this.#kvm.close();
    this.#ram.unmap();
  }
}
