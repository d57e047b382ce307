/**
 * Shared memory regions of a device (virtio 1.2 §2.10) and the VMM hook that maps them.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Shared memory regions (virtio 1.2 §2.10)

/** Device memory shared with the guest, as seen from both sides. */
export interface VirtioSharedMemory {
  /** Host address of the mapping (0 when it only exists as a buffer). */
  hostAddr: bigint;
  /** Guest-physical address of the region. */
  guestAddr: number;
}

/** One shared memory region of a device, identified by its shmid. */
export interface VirtioSharedMemoryRegion {
  /** The region id the driver selects (virtio-mmio SHMSel, PCI cap id). */
  id: number;
  /** Offset from the start of the list's window. */
  offset: number;
  /** Length in bytes. */
  len: number;
}

/** The shared memory window of a device and the regions carved from it. */
export class VirtioSharedMemoryList {
  /** Host address of the window. */
  hostAddr: bigint;
  /** Guest-physical address of the window. */
  guestAddr: number;
  /** Length of the window in bytes. */
  len: number;
  /** Memory slot flags for the hypervisor (e.g. KVM_MEM_READONLY). */
  regionFlags: number;
  /** The regions, by id. */
  regions: VirtioSharedMemoryRegion[];
  /** The window's bytes, when the host can reach them. */
  buffer: ArrayBuffer | SharedArrayBuffer | undefined;

  /**
   * Create it.
   * @param options Where the window is and what it holds.
   */
  constructor(options: {
    hostAddr?: bigint;
    guestAddr: number;
    len: number;
    regionFlags?: number;
    regions?: VirtioSharedMemoryRegion[];
    buffer?: ArrayBuffer | SharedArrayBuffer;
  }) {
    this.hostAddr = options.hostAddr ?? 0n;
    this.guestAddr = options.guestAddr;
    this.len = options.len;
    this.regionFlags = options.regionFlags ?? 0;
    this.regions = options.regions ?? [];
    this.buffer = options.buffer;
  }

  /**
   * The region with shmid `id`.
   * @param id The shmid.
   * @returns The region, or `undefined`.
   */
  find(id: number): VirtioSharedMemoryRegion | undefined {
    return this.regions.find((r) => r.id === id);
  }
}

/**
 * The VMM's hook for devices that expose device memory to the guest (DAX of
 * virtio-fs, pmem): it maps a window into guest-physical address space.
 */
export interface VirtioRegionHandler {
  /**
   * Map a device memory window into the guest.
   * @param region The window.
   */
  insertRegion(region: VirtioSharedMemoryList): void;
}
