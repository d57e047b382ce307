/**
 * The virtio memory device (virtio 1.2 §5.15): a region of guest-physical address space, in
 * blocks the driver plugs and unplugs on request, to bring the memory it uses to the size the
 * host asks for (`requested_size`, changed at run time with a configuration interrupt). The
 * region is device memory: the VMM places it (`getResourceRequirements` / `setResource`) and
 * inserts it as a memory slot through its {@linkcode VirtioRegionHandler}; the device backs it
 * with anonymous memory and gives the host pages of unplugged blocks back (`madvise`), so the
 * VMM's resident set follows what the guest unplugs.
 *
 * Every request is checked against the region and the block bitmap (virtio 1.2 §5.15.6):
 * unaligned, empty or out-of-range requests and blocks in the wrong state get
 * VIRTIO_MEM_RESP_ERROR, plugging past the requested size VIRTIO_MEM_RESP_NACK. Block states
 * survive a device reset (§5.15.5: the device must not change them then).
 *
 * @example Give a guest up to 1 GiB more, 256 MiB of it now, on our VMM
 * ```ts ignore
 * import { MemDevice } from "./mem.ts";
 * import { MicroVm } from "../kvm/mod.ts";
 * const mem = new MemDevice({ regionSize: 1 << 30, requestedSize: 256 << 20 });
 * const vm = MicroVm.create({ kernel, initrd, devices: [mem],
 *   cmdline: "console=ttyS0 memhp_default_state=online_movable" });
 * void vm.run();
 * mem.setRequestedSize(512 << 20); // later: the guest plugs 256 MiB more
 * ```
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import { GuestRegion } from "../memory/guest_memory.ts";
import { MADV_DONTNEED, madvise, type Mapping, mmapAnonymous } from "../sys/mman.ts";
import {
  ActivateError,
  type DeviceResources,
  featureBit,
  type ResourceConstraint,
  serveQueue,
  TYPE_MEM,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  VirtioSharedMemoryList,
} from "./device.ts";
import {
  decideMemRequest,
  MEM_CONFIG_SIZE,
  MEM_REQUEST_SIZE,
  MEM_RESPONSE_SIZE,
  MemBlockMap,
  MemConfigOffset,
  parseMemRequest,
  VIRTIO_MEM_RESP_ACK,
  VIRTIO_MEM_RESP_ERROR,
  VIRTIO_MEM_RESP_NACK,
  VIRTIO_MEM_STATE_PLUGGED,
  VIRTIO_MEM_STATE_UNPLUGGED,
} from "./_mem_request.ts";

export {
  decodeMemResponse,
  encodeMemRequest,
  MEM_CONFIG_SIZE,
  MEM_REQUEST_SIZE,
  MEM_RESPONSE_SIZE,
  MemConfigOffset,
  type MemRefusal,
  type MemRequest,
  parseMemRequest,
  VIRTIO_MEM_F_ACPI_PXM,
  VIRTIO_MEM_F_PERSISTENT_SUSPEND,
  VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
  VIRTIO_MEM_REQ_PLUG,
  VIRTIO_MEM_REQ_STATE,
  VIRTIO_MEM_REQ_UNPLUG,
  VIRTIO_MEM_REQ_UNPLUG_ALL,
  VIRTIO_MEM_RESP_ACK,
  VIRTIO_MEM_RESP_BUSY,
  VIRTIO_MEM_RESP_ERROR,
  VIRTIO_MEM_RESP_NACK,
  VIRTIO_MEM_STATE_MIXED,
  VIRTIO_MEM_STATE_PLUGGED,
  VIRTIO_MEM_STATE_UNPLUGGED,
} from "./_mem_request.ts";

/** Default block size: 2 MiB (a huge page; Linux plugs at least 4 MiB at a time on x86-64). */
export const MEM_DEFAULT_BLOCK_SIZE = 2 << 20;
/**
 * Alignment the device asks for its region: 128 MiB, the memory block size of an x86-64 Linux
 * guest with less than 64 GiB, which onlines plugged memory in such blocks.
 */
export const MEM_REGION_ALIGN = 128 << 20;
/** Default queue size. */
export const MEM_QUEUE_SIZE = 128;

/** Options of {@linkcode MemDevice}. */
export interface MemOptions {
  /** Size of the device-managed region in bytes: a positive multiple of the block size. */
  regionSize: number;
  /** Block size: a power of two, at least 4 KiB (default {@linkcode MEM_DEFAULT_BLOCK_SIZE}). */
  blockSize?: number;
  /** Initial requested size: a multiple of the block size, at most the region (default 0). */
  requestedSize?: number;
  /** Queue size (default {@linkcode MEM_QUEUE_SIZE}). */
  queueSize?: number;
  /** Called for each error while serving (default: ignore). */
  onError?: (err: VirtioError) => void;
}

/** What the device did since it was created. */
export interface MemCounters {
  /** PLUG requests acknowledged. */
  plugs: number;
  /** UNPLUG requests acknowledged. */
  unplugs: number;
  /** UNPLUG ALL requests acknowledged. */
  unplugAlls: number;
  /** STATE requests acknowledged. */
  states: number;
  /** Requests answered VIRTIO_MEM_RESP_NACK. */
  nacks: number;
  /** Requests answered VIRTIO_MEM_RESP_ERROR (invalid ranges, wrong states, unknown types). */
  errors: number;
  /** Requests with no room for a response: not acted on, used with length 0. */
  unanswerable: number;
  /** Bytes of the region given back to the host (`madvise`d) as blocks were unplugged. */
  releasedBytes: number;
}

function checkSize(name: string, v: number, blockSize: number, max: number): number {
  if (!Number.isSafeInteger(v) || v < 0 || v > max || v % blockSize !== 0) {
    throw new RangeError(
      `${name} must be a multiple of the block size (${blockSize}) from 0 to ${max}, got ${v}`,
    );
  }
  return v;
}

/**
 * The virtio-mem device. One queue (guest requests: a 24-byte device-readable request, then a
 * device-writable buffer of at least 10 bytes for the response).
 */
export class MemDevice extends VirtioDeviceBase {
  readonly #config: DataView;
  readonly #map: MemBlockMap;
  readonly #regionSize: number;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #request = new Uint8Array(MEM_REQUEST_SIZE);
  readonly #response = new Uint8Array(MEM_RESPONSE_SIZE);
  readonly #responseView = new DataView(this.#response.buffer);
  #mapping: Mapping | undefined;
  #counters: MemCounters = {
    plugs: 0,
    unplugs: 0,
    unplugAlls: 0,
    states: 0,
    nacks: 0,
    errors: 0,
    unanswerable: 0,
    releasedBytes: 0,
  };

  /**
   * Create it. The region gets its guest-physical place from the VMM (`setResource`).
   * @param options Region and block sizes, initial requested size.
   * @throws {RangeError} For a block size that is not a power of two of at least 4 KiB, a
   *   region that is not a positive multiple of it, or a requested size outside the region.
   */
  constructor(options: MemOptions) {
    const blockSize = options.blockSize ?? MEM_DEFAULT_BLOCK_SIZE;
    if (
      !Number.isSafeInteger(blockSize) || blockSize < 4096 ||
      !Number.isInteger(Math.log2(blockSize))
    ) {
      throw new RangeError(`Block size must be a power of two of at least 4096, got ${blockSize}`);
    }
    const regionSize = options.regionSize;
    if (!Number.isSafeInteger(regionSize) || regionSize <= 0 || regionSize % blockSize !== 0) {
      throw new RangeError(
        `Region size must be a positive multiple of the block size (${blockSize}), got ${regionSize}`,
      );
    }
    if (regionSize / blockSize > 1 << 24) {
      throw new RangeError(`Region of ${regionSize / blockSize} blocks: at most 2^24 blocks`);
    }
    const requested = checkSize("requestedSize", options.requestedSize ?? 0, blockSize, regionSize);
    const queueSize = options.queueSize ?? MEM_QUEUE_SIZE;
    const config = new Uint8Array(MEM_CONFIG_SIZE);
    super(
      TYPE_MEM,
      new VirtioDeviceInfo(
        "virtio-mem",
        featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
          featureBit(VIRTIO_F_EVENT_IDX),
        [queueSize],
        config,
      ),
    );
    this.#config = new DataView(config.buffer);
    this.#map = new MemBlockMap(blockSize, regionSize / blockSize);
    this.#regionSize = regionSize;
    this.#onError = options.onError;
    this.#set(MemConfigOffset.blockSize, blockSize);
    this.#set(MemConfigOffset.regionSize, regionSize);
    this.#set(MemConfigOffset.usableRegionSize, regionSize);
    this.#set(MemConfigOffset.requestedSize, requested);
  }

  #set(offset: number, value: number): void {
    this.#config.setBigUint64(offset, BigInt(value), true);
  }

  /** Block size in bytes. */
  get blockSize(): number {
    return this.#map.blockSize;
  }

  /** Region size in bytes. */
  get regionSize(): number {
    return this.#regionSize;
  }

  /** Guest-physical address of the region, once the VMM placed it. */
  get address(): number | undefined {
    return this.#mapping === undefined ? undefined : this.#map.addr;
  }

  /** The host mapping backing the region, once the VMM placed it. */
  get mapping(): Mapping | undefined {
    return this.#mapping;
  }

  /** Bytes plugged (`plugged_size`). */
  get pluggedSize(): number {
    return this.#map.plugged * this.#map.blockSize;
  }

  /** Bytes the device asks the driver to plug (`requested_size`). */
  get requestedSize(): number {
    return Number(this.#config.getBigUint64(MemConfigOffset.requestedSize, true));
  }

  /** Counters since creation (a copy). */
  get counters(): MemCounters {
    return { ...this.#counters };
  }

  /**
   * Ask the driver for another amount of plugged memory; it is told through a configuration
   * change interrupt and plugs or unplugs blocks towards it (virtio 1.2 §5.15.5).
   * @param bytes A multiple of the block size, at most the region size.
   * @throws {RangeError} Otherwise.
   */
  setRequestedSize(bytes: number): void {
    checkSize("requestedSize", bytes, this.blockSize, this.#regionSize);
    if (bytes === this.requestedSize) return;
    this.#set(MemConfigOffset.requestedSize, bytes);
    this.active?.notifyDeviceChanges();
  }

  /**
   * The plug state of a range of the region.
   * @param addr Guest-physical address, block-aligned.
   * @param size Bytes, a positive multiple of the block size.
   * @returns `"plugged"`, `"unplugged"` or `"mixed"`.
   * @throws {RangeError} When the range is not inside the region or not block-aligned.
   */
  stateOf(addr: number, size: number): "plugged" | "unplugged" | "mixed" {
    const blocks = size / this.blockSize;
    const first = Number.isInteger(blocks) ? this.#map.firstBlock(addr, blocks) : -1;
    if (first < 0 || this.#mapping === undefined) {
      throw new RangeError(`0x${addr.toString(16)} (+${size}) is not a block range of the region`);
    }
    switch (this.#map.state(first, blocks)) {
      case VIRTIO_MEM_STATE_PLUGGED:
        return "plugged";
      case VIRTIO_MEM_STATE_UNPLUGGED:
        return "unplugged";
      default:
        return "mixed";
    }
  }

  /**
   * Give the host memory of every unplugged block back again. The driver must not write
   * unplugged memory (virtio 1.2 §5.15.6); one that does only uses host memory until this is
   * called, which the device may do at any time.
   */
  discardUnplugged(): void {
    const map = this.#map;
    let run = -1;
    for (let i = 0; i <= map.blocks; i++) {
      const unplugged = i < map.blocks && !map.isPlugged(i);
      if (unplugged && run < 0) run = i;
      if (!unplugged && run >= 0) {
        this.#release(run, i - run);
        run = -1;
      }
    }
  }

  /**
   * Resources: those of every device, a guest-physical window for the region aligned to
   * {@linkcode MEM_REGION_ALIGN} (or the block size if larger), and a memory slot.
   * @param requests Where the needs are pushed.
   * @param useGenericIrq Whether the transport uses MSI-X.
   */
  override getResourceRequirements(requests: ResourceConstraint[], useGenericIrq: boolean): void {
    super.getResourceRequirements(requests, useGenericIrq);
    requests.push({
      type: "MemAddress",
      size: this.#regionSize,
      align: Math.max(MEM_REGION_ALIGN, this.blockSize),
    });
    requests.push({ type: "KvmMemSlot" });
  }

  /**
   * Take the window the VMM assigned: back the region with anonymous memory (pages cost nothing
   * until the guest touches them) and return it for the VMM to insert. It has no shared memory
   * regions: the driver finds it in the configuration (`addr`, `region_size`).
   * @param resources What the VMM assigned.
   * @returns The region.
   * @throws {ActivateError} When no fitting block-aligned window or no memory slot was assigned,
   *   or the region is already placed.
   */
  setResource(resources: DeviceResources): VirtioSharedMemoryList {
    if (this.#mapping !== undefined) {
      throw new ActivateError("InvalidParam", "virtio-mem: the region is already placed");
    }
    const mem = resources.memAddresses().find((m) =>
      m.size >= this.#regionSize && m.base % this.blockSize === 0
    );
    const slot = resources.kvmMemSlots()[0];
    if (mem === undefined || slot === undefined) {
      throw new ActivateError(
        "InvalidParam",
        "virtio-mem needs a block-aligned memory window of the region's size and a memory slot",
      );
    }
    let mapping: Mapping;
    try {
      mapping = mmapAnonymous(this.#regionSize);
    } catch (err) {
      throw new ActivateError("IOError", `virtio-mem: ${err}`, { cause: err });
    }
    this.#mapping = mapping;
    this.#map.addr = mem.base;
    this.#set(MemConfigOffset.addr, mem.base);
    return new VirtioSharedMemoryList({
      hostAddr: mapping.address,
      guestAddr: mem.base,
      len: this.#regionSize,
      kvmUserspaceMemoryRegionSlot: slot,
      regionList: [],
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
      throw new ActivateError("InvalidParam", "virtio-mem has no region: the VMM never placed it");
    }
  }

  /**
   * Unmap the region. Only once the guest is gone (its memory slot removed or the VM closed):
   * the guest would lose memory it may be using.
   */
  remove(): void {
    this.#mapping?.unmap();
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
      this.#error(new VirtioError("InvalidInput", `virtio-mem has no queue ${index}`));
      return false;
    }
    return serveQueue(config.memory, qc, this.#serve, (e) => this.#error(e)).more;
  }

  #serve = (chain: DescriptorChain): number => {
    const c = this.#counters;
    const writer = chain.writer;
    if (writer.remaining < 2) {
      // No room for even the response type: the driver could not learn what was done.
      c.unanswerable++;
      return 0;
    }
    const n = Math.min(chain.readableBytes, MEM_REQUEST_SIZE);
    const req = this.#request.subarray(0, n);
    chain.reader.readExact(req);
    const parsed = parseMemRequest(req);
    const map = this.#map;
    const outcome = decideMemRequest(map, this.requestedSize / map.blockSize, parsed);
    if (outcome.plug !== undefined) map.set(outcome.plug.first, outcome.plug.count, true);
    if (outcome.unplug !== undefined) {
      const { first, count } = outcome.unplug;
      map.set(first, count, false);
      this.#release(first, count);
    }
    if (outcome.response === VIRTIO_MEM_RESP_ACK && !("refused" in parsed)) {
      if (parsed.type === "plug") c.plugs++;
      else if (parsed.type === "unplug") c.unplugs++;
      else if (parsed.type === "unplugAll") c.unplugAlls++;
      else c.states++;
    } else if (outcome.response === VIRTIO_MEM_RESP_NACK) c.nacks++;
    else if (outcome.response === VIRTIO_MEM_RESP_ERROR) c.errors++;
    this.#set(MemConfigOffset.pluggedSize, this.pluggedSize);
    // virtio 1.2 §5.15.6: a 10-byte response, the state last.
    this.#response.fill(0);
    this.#responseView.setUint16(0, outcome.response, true);
    this.#responseView.setUint16(8, outcome.state ?? 0, true);
    return writer.write(this.#response.subarray(0, Math.min(MEM_RESPONSE_SIZE, writer.remaining)));
  };

  // Give back the host memory of blocks [first, first + count).
  #release(first: number, count: number): void {
    const mapping = this.#mapping;
    if (mapping === undefined || count <= 0) return;
    const bs = this.blockSize;
    try {
      madvise(mapping.address + BigInt(first * bs), count * bs, MADV_DONTNEED);
      this.#counters.releasedBytes += count * bs;
    } catch (err) {
      this.#error(
        new VirtioError("IOError", `virtio-mem: releasing blocks: ${err}`, { cause: err }),
      );
    }
  }

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}
