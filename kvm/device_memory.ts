/**
 * Device memory for the VMM: the guest-physical area above RAM where devices with memory of
 * their own (virtio-mem, virtio-pmem, a virtio-fs DAX window) are placed, each region as a KVM
 * memory slot and as a region of the {@link GuestMemory} the devices see. This is the VMM's
 * {@link VirtioRegionHandler}.
 *
 * The area starts at 4 GiB by default: above any RAM a {@link MicroVm} gives (at most 3 GiB)
 * and above the 3–4 GiB hole of device windows, APICs and firmware; on a PCI machine, after the
 * host bridge's 64-bit window (the guest places BARs there). It is not reported as RAM
 * in e820 (virtio 1.2 §5.15: the driver decides what device memory becomes) nor reserved: Linux
 * claims each region itself (`request_mem_region`) when its driver binds.
 *
 * @module
 */

import type { GuestMemory, GuestRegion } from "../memory/guest_memory.ts";
import {
  DeviceResources,
  type Resource,
  type ResourceConstraint,
  type VirtioDevice,
  type VirtioRegionHandler,
  type VirtioSharedMemoryList,
} from "../devices/device.ts";
import { mappedAddressOf } from "../sys/mod.ts";

/** Default guest-physical start of the device memory area: 4 GiB. */
export const DEFAULT_DEVICE_MEMORY_BASE = 0x1_0000_0000;
/** KVM memory slot of guest RAM; device memory slots follow it. */
export const RAM_SLOT = 0;

/** Sets one KVM memory slot (`KVM_SET_USER_MEMORY_REGION`; size 0 deletes it). */
export type SetMemorySlot = (
  slot: number,
  guestPhysAddr: number,
  size: number,
  hostAddr: bigint,
  flags: number,
) => void;

/** Options of {@link DeviceMemorySpace}. */
export interface DeviceMemorySpaceOptions {
  /** The guest memory the devices see; inserted regions are added to it. */
  memory: GuestMemory;
  /** Programs a memory slot (the VM's `setUserMemoryRegion`). */
  setSlot: SetMemorySlot;
  /** Guest-physical start of the area (default {@link DEFAULT_DEVICE_MEMORY_BASE}). */
  base?: number;
  /** End of guest-physical address space (exclusive): 2^(physical address bits). */
  limit?: number;
  /** Slots the VM has (`KVM_CAP_NR_MEMSLOTS`; default 32). */
  maxSlots?: number;
}

/** One region placed in the area. */
export interface DeviceMemoryRegion {
  /** Guest-physical start. */
  base: number;
  /** Size in bytes. */
  size: number;
  /** Its memory slot. */
  slot: number;
}

const PAGE = 4096;

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * The device memory area of a VM: guest-physical windows and memory slots handed to devices
 * (`getResourceRequirements` / `setResource`), and the insertion of their memory
 * ({@link DeviceMemorySpace.insertRegion}).
 *
 * @example Place a device's region (without KVM: the slot setter only records)
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { mmapAnonymous } from "../sys/mod.ts";
 * import { GuestRegion } from "../memory/guest_memory.ts";
 * import { DeviceMemorySpace } from "./device_memory.ts";
 * const slots: number[][] = [];
 * const space = new DeviceMemorySpace({
 *   memory: GuestMemory.create(1 << 20),
 *   setSlot: (slot, gpa, size) => slots.push([slot, gpa, size]),
 * });
 * const window = mmapAnonymous(2 << 20);
 * space.insertRegion(new GuestRegion({ base: 0x1_0000_0000, buffer: window.buffer }));
 * assert.deepEqual(slots, [[1, 0x1_0000_0000, 2 << 20]]);
 * window.unmap();
 * ```
 */
export class DeviceMemorySpace implements VirtioRegionHandler {
  readonly #memory: GuestMemory;
  readonly #setSlot: SetMemorySlot;
  readonly #base: number;
  readonly #limit: number;
  readonly #maxSlots: number;
  #next: number;
  #nextSlot = RAM_SLOT + 1;
  readonly #regions: DeviceMemoryRegion[] = [];

  /**
   * Create it.
   * @param options Guest memory, slot setter, where the area starts and ends.
   * @throws {RangeError} For a base that is not page-aligned or not below the limit.
   */
  constructor(options: DeviceMemorySpaceOptions) {
    this.#memory = options.memory;
    this.#setSlot = options.setSlot;
    this.#base = options.base ?? DEFAULT_DEVICE_MEMORY_BASE;
    this.#limit = options.limit ?? 2 ** 46;
    this.#maxSlots = options.maxSlots ?? 32;
    if (
      !Number.isSafeInteger(this.#base) || this.#base % PAGE !== 0 || this.#base >= this.#limit
    ) {
      throw new RangeError(`Device memory base ${hex(this.#base)} is not a page-aligned address`);
    }
    this.#next = this.#base;
  }

  /** The regions placed so far. */
  get regions(): readonly DeviceMemoryRegion[] {
    return this.#regions;
  }

  /** Guest-physical start of the area. */
  get base(): number {
    return this.#base;
  }

  /**
   * Reserve a guest-physical window in the area.
   * @param size Bytes (a positive multiple of 4 KiB).
   * @param align Alignment (a power of two; at least 4 KiB is used).
   * @returns The window's base.
   * @throws {RangeError} When the size or alignment is invalid or the area is full.
   */
  allocate(size: number, align: number): number {
    const a = Math.max(PAGE, align);
    if (
      !Number.isSafeInteger(size) || size <= 0 || size % PAGE !== 0 ||
      !Number.isSafeInteger(a) || !Number.isInteger(Math.log2(a))
    ) {
      throw new RangeError(`Invalid device memory window: ${size} bytes aligned to ${align}`);
    }
    const base = Math.ceil(this.#next / a) * a;
    if (base + size > this.#limit) {
      throw new RangeError(
        `No room for ${size} bytes of device memory below ${hex(this.#limit)} (guest address bits)`,
      );
    }
    this.#next = base + size;
    return base;
  }

  /**
   * Reserve a memory slot.
   * @returns Its number.
   * @throws {RangeError} When every slot is taken.
   */
  allocateSlot(): number {
    if (this.#nextSlot >= this.#maxSlots) {
      throw new RangeError(`All ${this.#maxSlots} memory slots are taken`);
    }
    return this.#nextSlot++;
  }

  /**
   * Give a device what it asks for (seed `get_resource_requirements` / `set_resource`): its
   * interrupt line and register window, and for device memory a window in the area and a
   * memory slot; then insert the memory the device returns.
   * @param device The device.
   * @param mmio Its register window and interrupt line, when the transport has fixed ones
   *   (virtio-mmio; a PCI function's BARs are placed later, by the guest).
   * @returns The device's shared memory window, for its transport, if it has one.
   * @throws {Error} When the device refuses the resources or its memory cannot be inserted.
   */
  attach(
    device: VirtioDevice,
    mmio?: { base: number; size: number; irq: number },
  ): VirtioSharedMemoryList | undefined {
    const needs: ResourceConstraint[] = [];
    device.getResourceRequirements?.(needs, false);
    if (!needs.some((n) => n.type === "MemAddress")) return undefined;
    const assigned: Resource[] = mmio === undefined ? [] : [
      { type: "LegacyIrq", irq: mmio.irq },
      { type: "MmioAddress", base: mmio.base, size: mmio.size },
    ];
    for (const n of needs) {
      if (n.type === "MemAddress") {
        assigned.push({ type: "MemAddress", base: this.allocate(n.size, n.align), size: n.size });
      } else if (n.type === "KvmMemSlot") {
        assigned.push({ type: "KvmMemSlot", slot: this.allocateSlot() });
      }
    }
    const shm = device.setResource?.(new DeviceResources(assigned));
    if (shm === undefined) return undefined;
    const slot = assigned.find((r) => r.type === "KvmMemSlot");
    if (slot === undefined || slot.slot !== shm.kvmUserspaceMemoryRegionSlot) {
      throw new RangeError("The device's memory names a memory slot it was not given");
    }
    this.#insert(shm.mmapRegion, shm.hostAddr, shm.kvmUserspaceMemoryRegionSlot, {
      flags: shm.kvmUserspaceMemoryRegionFlags,
    });
    return shm;
  }

  /**
   * Insert device memory into the guest: a new memory slot, and a region of the devices'
   * guest memory (seed `VirtioRegionHandler::insert_region`).
   * @param region The region, at its guest-physical place in the area, over a live mapping
   *   (`Mapping.buffer` from `sys/`).
   * @throws {TypeError} When the region is not over a mapping.
   * @throws {RangeError} When it is not page-aligned, lies outside the area, overlaps other
   *   memory, or no slot is left.
   */
  insertRegion(region: GuestRegion): void {
    const host = mappedAddressOf(region.bytes);
    if (host === undefined) {
      throw new TypeError(
        "Device memory must be a region over a mapping (mmap), not a heap buffer",
      );
    }
    this.#insert(region, BigInt(host), undefined, {});
  }

  #insert(region: GuestRegion, host: bigint, slot: number | undefined, o: { flags?: number }) {
    const { base, size, end } = region;
    if (base % PAGE !== 0 || size % PAGE !== 0 || host % BigInt(PAGE) !== 0n) {
      throw new RangeError(`Device memory at ${hex(base)} (+${size}) is not page-aligned`);
    }
    if (base < this.#base || end > this.#limit) {
      throw new RangeError(
        `Device memory at ${hex(base)} (+${size}) is outside the area ${hex(this.#base)}-${
          hex(this.#limit)
        }`,
      );
    }
    for (const r of this.#memory.regions) {
      if (base < r.end && r.base < end) {
        throw new RangeError(`Device memory at ${hex(base)} overlaps memory at ${hex(r.base)}`);
      }
    }
    const s = slot ?? this.allocateSlot();
    this.#setSlot(s, base, size, host, o.flags ?? 0);
    try {
      this.#memory.insertRegion(region);
    } catch (err) {
      this.#setSlot(s, base, 0, host, 0);
      throw err;
    }
    // Later windows go after every inserted region.
    this.#next = Math.max(this.#next, end);
    this.#regions.push({ base, size, slot: s });
  }
}

/**
 * End of the guest's physical address space: 2^(physical address bits), from CPUID leaf
 * 0x80000008 as KVM supports it (the guest sees the same leaf).
 * @param supported `Kvm.supportedCpuid()`.
 * @returns The limit (2^36 when the leaf is missing).
 */
export function physAddressLimit(supported: readonly { function: number; eax: number }[]): number {
  const leaf = supported.find((e) => e.function === 0x80000008);
  const bits = leaf === undefined ? 36 : leaf.eax & 0xff;
  return 2 ** Math.min(Math.max(bits, 32), 52);
}
