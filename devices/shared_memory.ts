/**
 * Shared memory regions of a device (virtio 1.2 §2.10), the resources a device asks its VMM
 * for, and the VMM hook that maps device memory into the guest — the shapes of
 * dbs-virtio-devices (`VirtioSharedMemory`, `VirtioSharedMemoryList`, `VirtioRegionHandler`)
 * and dbs-device (`ResourceConstraint`, `DeviceResources`).
 *
 * @module
 */

import type { GuestRegion } from "../memory/guest_memory.ts";

/** One shared memory region of a device: a piece of its window (seed `VirtioSharedMemory`). */
export interface VirtioSharedMemory {
  /** Offset from the start of the window. */
  offset: number;
  /** Length in bytes. */
  len: number;
}

/**
 * The device memory window of a device and the shared memory regions carved from it (seed
 * `VirtioSharedMemoryList`). The region with shmid `i` is `regionList[i]` (virtio-mmio SHMSel,
 * the PCI shared memory capability id).
 */
export class VirtioSharedMemoryList {
  /** Host address of the window's mapping. */
  hostAddr: bigint;
  /** Guest-physical address of the window. */
  guestAddr: number;
  /** Length of the window in bytes. */
  len: number;
  /** `kvm_userspace_memory_region` flags of its memory slot (e.g. KVM_MEM_READONLY). */
  kvmUserspaceMemoryRegionFlags: number;
  /** `kvm_userspace_memory_region` slot number. */
  kvmUserspaceMemoryRegionSlot: number;
  /** The regions, by shmid. */
  regionList: VirtioSharedMemory[];
  /** The window's bytes as a guest memory region at `guestAddr` (aliases the mapping). */
  mmapRegion: GuestRegion;

  /**
   * Create it.
   * @param options Where the window is, its memory slot and its regions.
   * @throws {RangeError} When a region does not fit the window or the window does not match
   *   its mapping.
   */
  constructor(options: {
    hostAddr: bigint;
    guestAddr: number;
    len: number;
    kvmUserspaceMemoryRegionFlags?: number;
    kvmUserspaceMemoryRegionSlot: number;
    regionList: VirtioSharedMemory[];
    mmapRegion: GuestRegion;
  }) {
    if (options.mmapRegion.base !== options.guestAddr || options.mmapRegion.size !== options.len) {
      throw new RangeError("Shared memory window and its mapping disagree");
    }
    for (const r of options.regionList) {
      if (
        !Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.len) || r.offset < 0 ||
        r.len < 0 || r.offset + r.len > options.len
      ) {
        throw new RangeError(
          `Shared memory region at ${r.offset} (+${r.len}) is outside the window`,
        );
      }
    }
    this.hostAddr = options.hostAddr;
    this.guestAddr = options.guestAddr;
    this.len = options.len;
    this.kvmUserspaceMemoryRegionFlags = options.kvmUserspaceMemoryRegionFlags ?? 0;
    this.kvmUserspaceMemoryRegionSlot = options.kvmUserspaceMemoryRegionSlot;
    this.regionList = options.regionList;
    this.mmapRegion = options.mmapRegion;
  }
}

/**
 * The VMM's hook for devices that have device memory (DAX of virtio-fs, pmem, virtio-mem): it
 * inserts the memory into the guest's address space (a KVM memory slot) and into the guest
 * memory the devices see, so a buffer placed there by the driver can be served (seed
 * `VirtioRegionHandler`).
 */
export interface VirtioRegionHandler {
  /**
   * Insert a device memory region.
   * @param region The region, at its guest-physical address, aliasing its host mapping.
   * @throws {Error} When the region cannot be mapped (overlap, no free slot).
   */
  insertRegion(region: GuestRegion): void;
}

/** A resource a device needs from its VMM (dbs-device `ResourceConstraint`). */
export type ResourceConstraint =
  /** A pin-based interrupt line, optionally a fixed one. */
  | { type: "LegacyIrq"; irq?: number }
  /** `size` message-signalled interrupt vectors (MSI-X). */
  | { type: "GenericIrq"; size: number }
  /** A window of guest-physical address space for registers. */
  | { type: "MmioAddress"; size: number; align: number }
  /** A window of guest-physical address space for device memory. */
  | { type: "MemAddress"; size: number; align: number }
  /** A hypervisor memory slot for device memory. */
  | { type: "KvmMemSlot" };

/** A resource the VMM assigned (dbs-device `Resource`). */
export type Resource =
  /** The interrupt line. */
  | { type: "LegacyIrq"; irq: number }
  /** The first of `size` interrupt vectors. */
  | { type: "GenericIrq"; base: number; size: number }
  /** A register window. */
  | { type: "MmioAddress"; base: number; size: number }
  /** A device memory window. */
  | { type: "MemAddress"; base: number; size: number }
  /** A memory slot. */
  | { type: "KvmMemSlot"; slot: number };

/**
 * The resources a VMM assigned to one device (dbs-device `DeviceResources`).
 *
 * @example
 * ```ts
 * import { DeviceResources } from "./shared_memory.ts";
 * const res = new DeviceResources([{ type: "LegacyIrq", irq: 5 }, { type: "KvmMemSlot", slot: 3 }]);
 * console.assert(res.legacyIrq() === 5 && res.kvmMemSlots()[0] === 3);
 * ```
 */
export class DeviceResources {
  /** Every assigned resource. */
  readonly all: readonly Resource[];

  /**
   * Create it.
   * @param resources The assigned resources.
   */
  constructor(resources: readonly Resource[] = []) {
    this.all = resources;
  }

  /** The legacy interrupt line, if one was assigned. */
  legacyIrq(): number | undefined {
    for (const r of this.all) if (r.type === "LegacyIrq") return r.irq;
    return undefined;
  }

  /** The MSI vectors, if assigned. */
  genericIrqs(): { base: number; size: number } | undefined {
    for (const r of this.all) if (r.type === "GenericIrq") return { base: r.base, size: r.size };
    return undefined;
  }

  /** The register windows. */
  mmioAddresses(): { base: number; size: number }[] {
    const out: { base: number; size: number }[] = [];
    for (const r of this.all) {
      if (r.type === "MmioAddress") out.push({ base: r.base, size: r.size });
    }
    return out;
  }

  /** The device memory windows. */
  memAddresses(): { base: number; size: number }[] {
    const out: { base: number; size: number }[] = [];
    for (const r of this.all) if (r.type === "MemAddress") out.push({ base: r.base, size: r.size });
    return out;
  }

  /** The memory slots. */
  kvmMemSlots(): number[] {
    const out: number[] = [];
    for (const r of this.all) if (r.type === "KvmMemSlot") out.push(r.slot);
    return out;
  }
}
