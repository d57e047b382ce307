// The virtio devices of a MicroVm as PCI functions (virtio 1.2 §4.1), wired to KVM: each device
// is a PciTransport in its own slot of bus 0; its BARs are placed in the machine's windows as
// firmware would, and follow the guest when it moves them or turns decoding off. Queue
// notifications are KVM ioeventfds on each queue's notify address (modern BAR: 2-byte write of
// the queue index at notify_off * notify_off_multiplier; legacy I/O BAR: the Queue Notify port),
// re-registered whenever the BAR moves. MSI-X: one GSI, eventfd and irqfd per vector, the GSI
// routed (KVM_SET_GSI_ROUTING) to the message the guest wrote in the table, pushed when a
// vector is unmasked with a new message (Linux masks an entry while it rewrites it); the
// transport holds masked vectors in the PBA, so only unmasked vectors ever signal. INTx: the
// slot's pin drives its GSI (the _PRT swizzle) with KVM_IRQ_LINE, lines shared by several
// devices OR-ed.
//
// KVM is reached through PciKvmOps, so that this is tested with a fake; every failed ioctl is
// reported to onError (a guest can provoke some, e.g. two BARs on one notify address) and never
// thrown into the exit path.

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { VirtioDevice } from "../devices/device.ts";
import {
  PCI_LEGACY_BAR,
  PCI_MODERN_BAR,
  type PciBarInfo,
  type PciError,
  PciLegacyCfg,
  PciTransport,
} from "../transport/pci.ts";
import { EventFd, type Watch, watchReadable } from "../sys/mod.ts";
import type { GsiRoute } from "./abi.ts";
import {
  BarAllocator,
  CONFIG_SHADOW_SIZE,
  ConfigShadow,
  intxGsi,
  IntxLines,
  PCI_SLOTS,
  PciBus,
  type PciBusError,
  type PciLayout,
} from "./pci.ts";

/** The KVM calls the PCI devices need (a `Vm` does them; tests fake them). */
export interface PciKvmOps {
  /** `KVM_IOEVENTFD` (see `Vm.ioeventfd`). */
  ioeventfd(
    addr: number,
    len: number,
    fd: number,
    datamatch: bigint,
    options: { deassign?: boolean; pio?: boolean },
  ): void;
  /** `KVM_IRQFD`. */
  irqfd(fd: number, gsi: number): void;
  /** `KVM_SET_GSI_ROUTING` (the whole table). */
  setGsiRouting(routes: readonly GsiRoute[]): void;
  /** `KVM_IRQ_LINE`. */
  irqLine(gsi: number, level: boolean): void;
}

/** Options of {@link PciDevices}. */
export interface PciDevicesOptions {
  /** Guest RAM. */
  memory: GuestMemory;
  /** Windows, ECAM and INTx lines. */
  layout: PciLayout;
  /** KVM. */
  kvm: PciKvmOps;
  /** The routes to keep besides the MSI ones (the irqchip pins). */
  baseRoutes: readonly GsiRoute[];
  /** First GSI for MSI-X vectors (above the I/O APIC's pins; default 24). */
  firstMsiGsi?: number;
  /** Offer the legacy interface too (transitional devices with an I/O BAR). */
  transitional?: boolean;
  /** Receives transport, bus and KVM errors. */
  onError?: (err: Error) => void;
}

/** A notification registration: where and for which queues. */
interface Notify {
  addr: number;
  pio: boolean;
  queues: number[];
}

interface Slot {
  slot: number;
  transport: PciTransport;
  intxGsi: number;
  /** GSI of MSI-X vector 0; vector `v` is `msiGsi + v`. */
  msiGsi: number;
  vectorFds: EventFd[];
  /** The message each vector's route was last pushed with (`undefined`: never). */
  pushed: ({ address: bigint; data: number } | undefined)[];
  queueFds: EventFd[];
  watches: Watch[];
  notify: Notify | undefined;
  legacyNotify: Notify | undefined;
}

/** A KVM ioctl the PCI wiring made failed (the guest's own doing, usually). */
export class PciWiringError extends Error {
  /**
   * Creates it.
   * @param message What failed.
   * @param options The cause.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PciWiringError";
  }
}

/** The highest guest-physical address a BAR is mapped at (above it, decoding is ignored). */
const MAX_BAR_ADDRESS = 2 ** 48;

/** The virtio PCI functions of a VM, their BARs, notifications and interrupts. */
export class PciDevices {
  /** Bus 0 with the host bridge and the devices. */
  readonly bus: PciBus;
  /** The transports, in slot order (device `i` is in slot `i + 1`). */
  readonly transports: readonly PciTransport[];
  /** The layout. */
  readonly layout: PciLayout;
  /** The copy of bus 0's configuration space the vCPU threads answer reads from. */
  readonly configShadow: SharedArrayBuffer = new SharedArrayBuffer(CONFIG_SHADOW_SIZE);
  readonly #shadow = new ConfigShadow(this.configShadow);
  readonly #slots: Slot[] = [];
  readonly #kvm: PciKvmOps;
  readonly #baseRoutes: readonly GsiRoute[];
  readonly #onError: (err: Error) => void;
  readonly #intx: IntxLines;
  #closed = false;

  /**
   * Creates the functions, places their BARs, enables decoding (as firmware leaves it), registers
   * the notify ioeventfds and the vector irqfds, and sets the GSI routing.
   *
   * @param devices The devices, one per slot from 1.
   * @param options Memory, layout, KVM and error sink.
   * @throws {RangeError} For more devices than slots or BARs that do not fit the windows.
   * @throws {SysError} When an eventfd or a KVM call fails while setting up.
   */
  constructor(devices: readonly VirtioDevice[], options: PciDevicesOptions) {
    if (devices.length > PCI_SLOTS - 1) {
      throw new RangeError(`${devices.length} PCI devices: at most ${PCI_SLOTS - 1}`);
    }
    this.layout = options.layout;
    this.#kvm = options.kvm;
    this.#baseRoutes = options.baseRoutes;
    this.#onError = options.onError ?? (() => {});
    this.#intx = new IntxLines((gsi, level) =>
      this.#ioctl("KVM_IRQ_LINE", () => this.#kvm.irqLine(gsi, level))
    );
    this.bus = new PciBus({
      buses: options.layout.buses,
      onError: (e: PciBusError) => this.#onError(e),
    });
    const allocator = new BarAllocator(options.layout);
    let nextGsi = options.firstMsiGsi ?? 24;
    try {
      devices.forEach((device, i) => {
        const slot = i + 1;
        const gsi = intxGsi(slot, 0, options.layout.intxFirstGsi);
        // The callbacks look the slot up when they run: it is complete by then.
        const transport: PciTransport = new PciTransport(device, options.memory, {
          transitional: options.transitional,
          interrupts: {
            msi: (vector) => this.#signal(i, vector),
            intx: (level) => {
              if (this.#closed) return;
              this.#intx.drive(gsi, slot, level);
              this.#shadow.refresh(slot, this.bus.functionAt(slot), [1]); // the status register
            },
          },
          onBarChanged: (bar) => this.#barChanged(i, bar),
          onMsixChanged: (vector) => this.#msixChanged(i, vector),
          onError: (e: PciError) => this.#onError(e),
        });
        const s: Slot = {
          slot,
          transport,
          intxGsi: gsi,
          msiGsi: nextGsi,
          vectorFds: [],
          pushed: new Array(transport.msixVectors).fill(undefined),
          queueFds: [],
          watches: [],
          notify: undefined,
          legacyNotify: undefined,
        };
        nextGsi += transport.msixVectors;
        this.#slots.push(s);
        this.bus.attach(slot, transport);
        transport.queues.forEach((_q, index) => {
          const efd = new EventFd();
          s.queueFds.push(efd);
          s.watches.push(watchReadable(efd.fd, () => {
            if (efd.read() > 0n) transport.core.notify(index);
          }));
        });
        for (let v = 0; v < transport.msixVectors; v++) s.vectorFds.push(new EventFd());
      });
      // Routes first, then the irqfds that use them.
      this.#kvm.setGsiRouting(this.#routes());
      for (const s of this.#slots) {
        s.vectorFds.forEach((efd, v) => this.#kvm.irqfd(efd.fd, s.msiGsi + v));
      }
      for (const s of this.#slots) {
        const t = s.transport;
        for (const bar of t.bars()) {
          t.setBarAddress(bar.index, allocator.allocate(bar.kind, bar.size));
        }
        // Firmware's job: the Interrupt Line register, and I/O and memory decoding on.
        t.configWrite(0x3c, new Uint8Array([s.intxGsi]));
        t.configWrite(0x04, new Uint8Array([0x03, 0x00]));
      }
    } catch (err) {
      this.close();
      throw err;
    }
    for (let slot = 0; slot < PCI_SLOTS; slot++) {
      this.#shadow.refresh(slot, this.bus.functionAt(slot));
    }
    this.transports = this.#slots.map((s) => s.transport);
  }

  /** Each device's slot, INTx GSI and MSI-X GSIs (vector `v` is `msiGsi + v`). */
  get slots(): { slot: number; intxGsi: number; msiGsi: number; vectors: number }[] {
    return this.#slots.map((s) => ({
      slot: s.slot,
      intxGsi: s.intxGsi,
      msiGsi: s.msiGsi,
      vectors: s.transport.msixVectors,
    }));
  }

  /** Whether any function has an I/O BAR (transitional devices). */
  get hasIoBars(): boolean {
    return this.#slots.some((s) => s.transport.bars().some((b) => b.kind === "io"));
  }

  // A vector's interrupt: its irqfd's eventfd (a device may complete after the VM closed).
  #signal(index: number, vector: number): void {
    if (this.#closed) return;
    try {
      this.#slots[index]?.vectorFds[vector]?.write(1n);
    } catch (err) {
      this.#onError(new PciWiringError(`MSI-X vector ${vector}: ${(err as Error).message}`));
    }
  }

  /** The current routing table (the base routes and one MSI route per vector). */
  #routes(): GsiRoute[] {
    const routes = [...this.#baseRoutes];
    for (const s of this.#slots) {
      for (let v = 0; v < s.transport.msixVectors; v++) {
        const { address, data } = s.transport.msixEntry(v);
        routes.push({ gsi: s.msiGsi + v, kind: "msi", address, data });
        s.pushed[v] = { address, data };
      }
    }
    return routes;
  }

  #msixChanged(index: number, vector: number): void {
    const s = this.#slots[index];
    if (s === undefined || this.#closed) return;
    const e = s.transport.msixEntry(vector);
    const last = s.pushed[vector];
    if (e.masked || (last !== undefined && last.address === e.address && last.data === e.data)) {
      return;
    }
    this.#ioctl("KVM_SET_GSI_ROUTING", () => this.#kvm.setGsiRouting(this.#routes()));
  }

  #barChanged(index: number, bar: PciBarInfo): void {
    const s = this.#slots[index];
    if (s === undefined || this.#closed) return;
    if (bar.index === PCI_MODERN_BAR) {
      const mapped = bar.enabled && bar.address > 0 && bar.address + bar.size <= MAX_BAR_ADDRESS;
      const want = mapped ? bar.address : undefined;
      if (want === (s.notify === undefined ? undefined : s.notify.addr)) return;
      this.#unregister(s, s.notify);
      s.notify = want === undefined ? undefined : this.#register(s, want, false);
    } else if (bar.index === PCI_LEGACY_BAR && bar.kind === "io") {
      const mapped = bar.enabled && bar.address > 0 && bar.address + bar.size <= 0x10000;
      const want = mapped ? bar.address : undefined;
      if (want === (s.legacyNotify === undefined ? undefined : s.legacyNotify.addr)) return;
      this.#unregister(s, s.legacyNotify);
      s.legacyNotify = want === undefined ? undefined : this.#register(s, want, true);
    }
  }

  // Registers each queue's notification ioeventfd for a BAR at `base`; a queue whose
  // registration fails keeps the slow path (the write exits and reaches the transport).
  #register(s: Slot, base: number, pio: boolean): Notify {
    const n: Notify = { addr: base, pio, queues: [] };
    s.queueFds.forEach((efd, q) => {
      const addr = this.#notifyAddress(s, base, pio, q);
      const ok = this.#ioctl(
        "KVM_IOEVENTFD",
        () => this.#kvm.ioeventfd(addr, 2, efd.fd, BigInt(q), { pio }),
      );
      if (ok) n.queues.push(q);
    });
    return n;
  }

  #unregister(s: Slot, n: Notify | undefined): void {
    if (n === undefined) return;
    for (const q of n.queues) {
      const addr = this.#notifyAddress(s, n.addr, n.pio, q);
      this.#ioctl(
        "KVM_IOEVENTFD deassign",
        () =>
          this.#kvm.ioeventfd(addr, 2, s.queueFds[q].fd, BigInt(q), {
            deassign: true,
            pio: n.pio,
          }),
      );
    }
  }

  #notifyAddress(s: Slot, base: number, pio: boolean, queue: number): number {
    return base + (pio ? PciLegacyCfg.queueNotify : s.transport.notifyLocation(queue).offset);
  }

  #ioctl(what: string, fn: () => void): boolean {
    try {
      fn();
      return true;
    } catch (err) {
      this.#onError(
        new PciWiringError(`${what} failed: ${(err as Error).message}`, { cause: err }),
      );
      return false;
    }
  }

  /**
   * Serves an MMIO exit if it falls in the ECAM window or a memory BAR.
   * @param addr Guest-physical address.
   * @param write True for a write.
   * @param data The value or where it goes.
   * @returns Whether the address was PCI's.
   */
  mmio(addr: number, write: boolean, data: Uint8Array): boolean {
    const ecam = addr - this.layout.ecamBase;
    if (ecam >= 0 && ecam < this.layout.buses * 0x10_0000) {
      this.bus.ecamAccess(ecam, write, data);
      if (write) this.#configWritten(ecam);
      return true;
    }
    for (const s of this.#slots) {
      const hit = s.transport.barAt(addr, false);
      if (hit === undefined) continue;
      if (write) s.transport.barWrite(hit.bar, hit.offset, data);
      else s.transport.barRead(hit.bar, hit.offset, data);
      return true;
    }
    return false;
  }

  /**
   * Serves a port access in the I/O window (an I/O BAR, or nothing: reads see all ones).
   * @param port The port.
   * @param write True for `out`.
   * @param data The value or where it goes.
   */
  io(port: number, write: boolean, data: Uint8Array): void {
    for (const s of this.#slots) {
      const hit = s.transport.barAt(port, true);
      if (hit === undefined) continue;
      if (write) s.transport.barWrite(hit.bar, hit.offset, data);
      else s.transport.barRead(hit.bar, hit.offset, data);
      return;
    }
    if (!write) data.fill(0xff);
  }

  /**
   * A configuration access at an ECAM-style offset (from configuration mechanism #1).
   * @param offset `bus << 20 | device << 15 | function << 12 | register`.
   * @param write True for a write.
   * @param data The value or where it goes.
   */
  config(offset: number, write: boolean, data: Uint8Array): void {
    if (write) {
      this.bus.configWrite(offset, data);
      this.#configWritten(offset);
    } else this.bus.configRead(offset, data);
  }

  // After a write the slot's copy is refreshed before the vCPU resumes (it may read it next).
  #configWritten(offset: number): void {
    if (offset < 0 || offset >= 0x10_0000 || this.#closed) return;
    const slot = (offset >>> 15) & 31;
    this.#shadow.refresh(slot, this.bus.functionAt(slot));
  }

  /** Stops watching the notify eventfds and closes every eventfd (closing the VM does the rest). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#slots) {
      for (const w of s.watches) w.close();
      for (const e of s.queueFds) e.close();
      for (const e of s.vectorFds) e.close();
    }
  }
}
