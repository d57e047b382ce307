/**
 * The virtio persistent memory device (virtio 1.2 §5.19): a host file mapped into the guest's
 * address space, which the guest uses as an NVDIMM (`/dev/pmem0`, with DAX: no page cache in
 * the guest, the host's is the only one). Writes go straight to the file's pages; a FLUSH
 * request is answered once `fdatasync` has made them durable.
 *
 * The file is mapped `MAP_SHARED` exactly as long as it is (never past its end: touching a
 * page there raises SIGBUS, which would kill the VMM), so its size must be a multiple of 2 MiB
 * (what Linux needs to give the region struct pages). It is locked (`flock`) so that two
 * devices cannot map one file. The host must not shrink the file while a guest uses it.
 *
 * @example A pmem disk on our VMM
 * ```ts ignore
 * import { PmemDevice } from "./pmem.ts";
 * import { MicroVm } from "../kvm/mod.ts";
 * const pmem = new PmemDevice({ path: "pmem.img" }); // e.g. truncate -s 64M pmem.img
 * const vm = MicroVm.create({ kernel, initrd, devices: [pmem] });
 * await vm.run(); // in the guest: mkfs.ext2 -b 4096 /dev/pmem0; mount -o dax /dev/pmem0 /mnt
 * vm.close();
 * pmem.remove();
 * ```
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import { GuestRegion } from "../memory/guest_memory.ts";
import {
  close,
  fdatasync,
  flock,
  fstat,
  LOCK_EX,
  LOCK_NB,
  MAP_SHARED,
  type Mapping,
  mmapFd,
  O_CLOEXEC,
  O_RDWR,
  open,
} from "../sys/mod.ts";
import {
  ActivateError,
  type DeviceResources,
  featureBit,
  type ResourceConstraint,
  serveQueue,
  TYPE_PMEM,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  VirtioSharedMemoryList,
} from "./device.ts";

/**
 * Feature bit: the region is shared memory region 0 instead of `start`/`size` in the
 * configuration (virtio 1.2 §5.19.3). Offered only with `shmemRegion: true`, for a transport
 * that exposes the device's shared memory (virtio-mmio does); Linux 6.1 does not know it.
 */
export const VIRTIO_PMEM_F_SHMEM_REGION = 0;
/** Request type: make every completed write durable. */
export const VIRTIO_PMEM_REQ_TYPE_FLUSH = 0;
/** Response: success. */
export const VIRTIO_PMEM_RESP_OK = 0;
/** Response: failure (-1 as a le32). */
export const VIRTIO_PMEM_RESP_EIO = 0xffffffff;
/** Size of a request (`le32 type`) and of a response (`le32 ret`). */
export const PMEM_REQUEST_SIZE = 4;

/** Offsets in `struct virtio_pmem_config`. */
export const PmemConfigOffset = {
  /** le64: guest-physical address of the region. */
  start: 0,
  /** le64: its size. */
  size: 8,
} as const;
/** Size of the configuration space. */
export const PMEM_CONFIG_SIZE = 16;

/** The file size must be a multiple of this (2 MiB: Linux maps device memory in such sections). */
export const PMEM_SIZE_ALIGN = 2 << 20;
/** Alignment the device asks for its region (128 MiB: a memory section of its own). */
export const PMEM_REGION_ALIGN = 128 << 20;
/** Default queue size. */
export const PMEM_QUEUE_SIZE = 128;

/** Options of {@linkcode PmemDevice}. */
export interface PmemOptions {
  /** The backing file: a regular file whose size is a positive multiple of 2 MiB. */
  path: string;
  /** Queue size (default {@linkcode PMEM_QUEUE_SIZE}). */
  queueSize?: number;
  /**
   * Offer VIRTIO_PMEM_F_SHMEM_REGION (default false): only where the transport exposes shared
   * memory region 0 (virtio-mmio's SHM registers; our VMM's PCI functions have no shared
   * memory BAR).
   */
  shmemRegion?: boolean;
  /** Called for each error while serving (default: ignore). */
  onError?: (err: VirtioError) => void;
}

/** What the device did since it was created. */
export interface PmemCounters {
  /** FLUSH requests answered with success. */
  flushes: number;
  /** FLUSH requests whose `fdatasync` failed (answered -1). */
  flushFailures: number;
  /** Requests of an unknown type or shorter than 4 bytes (answered -1). */
  badRequests: number;
  /** Requests with no room for the response (used with length 0, not acted on). */
  unanswerable: number;
}

/**
 * The virtio-pmem device. One queue: a 4-byte device-readable request, then a device-writable
 * buffer of at least 4 bytes for the response.
 */
export class PmemDevice extends VirtioDeviceBase {
  /** The backing file's path. */
  readonly path: string;
  /** Size of the region: the file's size. */
  readonly size: number;
  readonly #config: DataView;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #response = new Uint8Array(PMEM_REQUEST_SIZE);
  readonly #responseView = new DataView(this.#response.buffer);
  readonly #request = new Uint8Array(PMEM_REQUEST_SIZE);
  readonly #requestView = new DataView(this.#request.buffer);
  #fd: number;
  #mapping: Mapping | undefined;
  #counters: PmemCounters = { flushes: 0, flushFailures: 0, badRequests: 0, unanswerable: 0 };

  /**
   * Open and lock the file.
   * @param options The file, queue size, error hook.
   * @throws {TypeError} When the path is not a regular file.
   * @throws {RangeError} When its size is not a positive multiple of {@linkcode PMEM_SIZE_ALIGN}.
   * @throws {Error} When it cannot be opened read-write, or another device holds its lock
   *   (`SysError`).
   */
  constructor(options: PmemOptions) {
    const fd = open(options.path, O_RDWR | O_CLOEXEC);
    let size: number;
    try {
      const st = fstat(fd);
      if (st.type !== "regular") {
        throw new TypeError(`pmem backing ${options.path} is a ${st.type}, not a regular file`);
      }
      size = st.size;
      if (size <= 0 || size % PMEM_SIZE_ALIGN !== 0) {
        throw new RangeError(
          `pmem backing ${options.path} is ${size} bytes: a positive multiple of ${PMEM_SIZE_ALIGN} is needed`,
        );
      }
      flock(fd, LOCK_EX | LOCK_NB);
    } catch (err) {
      close(fd);
      throw err;
    }
    const config = new Uint8Array(PMEM_CONFIG_SIZE);
    super(
      TYPE_PMEM,
      new VirtioDeviceInfo(
        "virtio-pmem",
        featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
          featureBit(VIRTIO_F_EVENT_IDX) |
          (options.shmemRegion ? featureBit(VIRTIO_PMEM_F_SHMEM_REGION) : 0n),
        [options.queueSize ?? PMEM_QUEUE_SIZE],
        config,
      ),
    );
    this.path = options.path;
    this.size = size;
    this.#fd = fd;
    this.#config = new DataView(config.buffer);
    this.#config.setBigUint64(PmemConfigOffset.size, BigInt(size), true);
    this.#onError = options.onError;
  }

  /** Guest-physical address of the region, once the VMM placed it. */
  get address(): number | undefined {
    return this.#mapping === undefined
      ? undefined
      : Number(this.#config.getBigUint64(PmemConfigOffset.start, true));
  }

  /** The host mapping of the file, once the VMM placed the region. */
  get mapping(): Mapping | undefined {
    return this.#mapping;
  }

  /** Counters since creation (a copy). */
  get counters(): PmemCounters {
    return { ...this.#counters };
  }

  /**
   * Read configuration space: `start` and `size`, or zeroes once the driver accepted
   * VIRTIO_PMEM_F_SHMEM_REGION (virtio 1.2 §5.19.5: the region is then shared memory 0).
   * @param offset Byte offset.
   * @param data Filled with the bytes.
   */
  override readConfig(offset: number, data: Uint8Array): void {
    super.readConfig(offset, data);
    if (this.info.hasFeature(VIRTIO_PMEM_F_SHMEM_REGION)) data.fill(0);
  }

  /**
   * Resources: those of every device, a guest-physical window of the file's size aligned to
   * {@linkcode PMEM_REGION_ALIGN}, and a memory slot.
   * @param requests Where the needs are pushed.
   * @param useGenericIrq Whether the transport uses MSI-X.
   */
  override getResourceRequirements(requests: ResourceConstraint[], useGenericIrq: boolean): void {
    super.getResourceRequirements(requests, useGenericIrq);
    requests.push({ type: "MemAddress", size: this.size, align: PMEM_REGION_ALIGN });
    requests.push({ type: "KvmMemSlot" });
  }

  /**
   * Take the window the VMM assigned: map the whole file there (`MAP_SHARED`, exactly its
   * size) and return it as shared memory region 0 for the VMM to insert.
   * @param resources What the VMM assigned.
   * @returns The region.
   * @throws {ActivateError} When no fitting window or memory slot was assigned, the region is
   *   already placed, the device was removed, or the file cannot be mapped.
   */
  setResource(resources: DeviceResources): VirtioSharedMemoryList {
    if (this.#mapping !== undefined || this.#fd < 0) {
      throw new ActivateError("InvalidParam", "virtio-pmem: already placed, or removed");
    }
    const mem = resources.memAddresses().find((m) => m.size >= this.size && m.base % 4096 === 0);
    const slot = resources.kvmMemSlots()[0];
    if (mem === undefined || slot === undefined) {
      throw new ActivateError(
        "InvalidParam",
        "virtio-pmem needs a memory window of the file's size and a memory slot",
      );
    }
    // The file was checked in the constructor: the mapping ends at its end, never past it.
    let mapping: Mapping;
    try {
      mapping = mmapFd(this.#fd, this.size, 0, { flags: MAP_SHARED });
    } catch (err) {
      throw new ActivateError("IOError", `virtio-pmem: mapping ${this.path}: ${err}`, {
        cause: err,
      });
    }
    this.#mapping = mapping;
    this.#config.setBigUint64(PmemConfigOffset.start, BigInt(mem.base), true);
    return new VirtioSharedMemoryList({
      hostAddr: mapping.address,
      guestAddr: mem.base,
      len: this.size,
      kvmUserspaceMemoryRegionSlot: slot,
      regionList: [{ offset: 0, len: this.size }],
      mmapRegion: new GuestRegion({ base: mem.base, buffer: mapping.buffer }),
    });
  }

  /**
   * Refuse to start without a region.
   * @param _config The activation config.
   * @throws {ActivateError} When the VMM never placed the region.
   */
  protected override onActivate(_config: VirtioDeviceConfig): void {
    if (this.#mapping === undefined) {
      throw new ActivateError("InvalidParam", "virtio-pmem has no region: the VMM never placed it");
    }
  }

  /**
   * Write everything back (`fdatasync`), unmap the file and close it. Only once the guest is
   * gone (the VM closed).
   */
  remove(): void {
    if (this.#fd < 0) return;
    try {
      fdatasync(this.#fd);
    } catch {
      // Best effort: the guest's last FLUSH decided what is durable.
    }
    this.#mapping?.unmap();
    close(this.#fd);
    this.#fd = -1;
  }

  /**
   * Serve the request queue, one budget's worth.
   * @param index Queue index; only 0 exists.
   * @returns `true` when more work is pending.
   */
  processQueue(index: number): boolean {
    const config = this.active;
    if (config === undefined) return false;
    const qc = this.queue(index);
    if (qc === undefined) {
      this.#error(new VirtioError("InvalidInput", `virtio-pmem has no queue ${index}`));
      return false;
    }
    return serveQueue(config.memory, qc, this.#serve, (e) => this.#error(e)).more;
  }

  // virtio 1.2 §5.19.6: le32 type in, le32 ret out (0 or -1).
  #serve = (chain: DescriptorChain): number => {
    const c = this.#counters;
    const writer = chain.writer;
    if (writer.remaining < PMEM_REQUEST_SIZE) {
      c.unanswerable++;
      return 0;
    }
    let ret = VIRTIO_PMEM_RESP_EIO;
    if (chain.readableBytes < PMEM_REQUEST_SIZE) {
      c.badRequests++;
    } else {
      chain.reader.readExact(this.#request);
      const type = this.#requestView.getUint32(0, true);
      if (type !== VIRTIO_PMEM_REQ_TYPE_FLUSH) {
        c.badRequests++;
      } else {
        try {
          // The mapping is MAP_SHARED: its dirty pages are the file's page cache, which
          // fdatasync writes back (what msync would do on Linux).
          fdatasync(this.#fd);
          c.flushes++;
          ret = VIRTIO_PMEM_RESP_OK;
        } catch (err) {
          c.flushFailures++;
          this.#error(
            new VirtioError("IOError", `virtio-pmem: fdatasync ${this.path}: ${err}`, {
              cause: err,
            }),
          );
        }
      }
    }
    this.#responseView.setUint32(0, ret, true);
    return writer.write(this.#response);
  };

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}
