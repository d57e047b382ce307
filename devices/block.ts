/**
 * The block device (virtio 1.2 §5.2): a disk served from a raw image file, a
 * block device node or memory, over one or more request queues.
 *
 * Requests are parsed by the pure {@linkcode parseRequest} before any I/O;
 * reads and writes hand the guest-memory views of the chain straight to the
 * backend (`preadv`/`pwritev` for files), so data is never copied in between.
 *
 * @example Serve an image file through the MMIO transport
 * ```ts ignore
 * import { BlockDevice } from "./block.ts";
 * import { MmioTransport } from "../transport/mmio.ts";
 * const blk = new BlockDevice({ path: "disk.raw", serial: "disk0", numQueues: 2 });
 * const transport = new MmioTransport(blk, memory, { interrupt: raiseIrq });
 * ```
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import {
  featureBit,
  type QueueThreadSpec,
  serveQueue,
  TYPE_BLOCK,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
} from "./device.ts";
import {
  BLK_ID_BYTES,
  type BlockRequestLimits,
  SECTOR_SHIFT,
  SECTOR_SIZE,
} from "./_block_request.ts";
import { type BlockBackend, FileBackend } from "./_block_backend.ts";
import { BlockRequestHandler, Stat, STAT_FIELDS } from "./_block_handler.ts";
import type { BlockThreadParams } from "./_block_thread.ts";

export {
  BLK_HEADER_SIZE,
  BLK_ID_BYTES,
  BLK_SEGMENT_SIZE,
  blockRangeSegment,
  type BlockRequest,
  type BlockRequestError,
  blockRequestHeader,
  type BlockRequestLimits,
  type BlockSegment,
  type ParsedRequest,
  parseRequest,
  SECTOR_SHIFT,
  SECTOR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_FLUSH_OUT,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "./_block_request.ts";
export {
  type BlockBackend,
  FdBackend,
  FileBackend,
  type FileBackendOptions,
  MemoryBackend,
  type SharedFileBackend,
} from "./_block_backend.ts";
export {
  OVERLAY_CLUSTER_SIZE,
  OverlayBackend,
  OverlayError,
  type OverlayLayout,
  overlayLayout,
  type OverlayOptions,
} from "./_block_overlay.ts";

// ---------------------------------------------------------------------------
// Feature bits (virtio 1.2 §5.2.3)

/** Feature bit: `size_max` bounds every segment. */
export const VIRTIO_BLK_F_SIZE_MAX = 1;
/** Feature bit: `seg_max` bounds the segments of a request. */
export const VIRTIO_BLK_F_SEG_MAX = 2;
/** Feature bit: `geometry` is valid (never offered here). */
export const VIRTIO_BLK_F_GEOMETRY = 4;
/** Feature bit: the disk is read-only. */
export const VIRTIO_BLK_F_RO = 5;
/** Feature bit: `blk_size` holds the logical block size. */
export const VIRTIO_BLK_F_BLK_SIZE = 6;
/** Feature bit: VIRTIO_BLK_T_FLUSH is supported. */
export const VIRTIO_BLK_F_FLUSH = 9;
/** Feature bit: `topology` is valid. */
export const VIRTIO_BLK_F_TOPOLOGY = 10;
/** Feature bit: the driver may switch writeback / writethrough through `writeback`. */
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
/** Feature bit: `num_queues` request queues. */
export const VIRTIO_BLK_F_MQ = 12;
/** Feature bit: VIRTIO_BLK_T_DISCARD is supported. */
export const VIRTIO_BLK_F_DISCARD = 13;
/** Feature bit: VIRTIO_BLK_T_WRITE_ZEROES is supported. */
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

// ---------------------------------------------------------------------------
// Configuration space (virtio 1.2 §5.2.4)

/** Byte offsets of the fields of `struct virtio_blk_config`. */
export const BlockConfigOffset = {
  /** le64, in 512-byte sectors. */
  capacity: 0,
  /** le32. */
  sizeMax: 8,
  /** le32. */
  segMax: 12,
  /** le16 cylinders, u8 heads, u8 sectors. */
  geometry: 16,
  /** le32. */
  blkSize: 20,
  /** u8: log2 of logical blocks per physical block. */
  physicalBlockExp: 24,
  /** u8. */
  alignmentOffset: 25,
  /** le16, in logical blocks. */
  minIoSize: 26,
  /** le32, in logical blocks. */
  optIoSize: 28,
  /** u8: 1 writeback, 0 writethrough; the only field the driver may write. */
  writeback: 32,
  /** le16. */
  numQueues: 34,
  /** le32. */
  maxDiscardSectors: 36,
  /** le32. */
  maxDiscardSeg: 40,
  /** le32. */
  discardSectorAlignment: 44,
  /** le32. */
  maxWriteZeroesSectors: 48,
  /** le32. */
  maxWriteZeroesSeg: 52,
  /** u8. */
  writeZeroesMayUnmap: 56,
} as const;

/** Size of the configuration space, up to and including the zoned characteristics. */
export const BLOCK_CONFIG_SIZE = 96;
/** Default maximum size of each request queue. */
export const BLOCK_QUEUE_SIZE = 256;
/** Default `size_max`: the largest single segment (1 MiB). */
export const BLOCK_SIZE_MAX = 1 << 20;
/** Default `max_discard_sectors` / `max_write_zeroes_sectors` (just under 2 GiB). */
export const BLOCK_MAX_RANGE_SECTORS = 0x3fffff;
/** Default `max_discard_seg` / `max_write_zeroes_seg`. */
export const BLOCK_MAX_RANGE_SEGMENTS = 32;

/** Options of {@linkcode BlockDevice}. Give exactly one of `path` and `backend`. */
export interface BlockOptions {
  /** Raw image file or block device node to serve (opened by the device, closed by `remove`). */
  path?: string;
  /** Storage to serve (owned by the caller). */
  backend?: BlockBackend;
  /** Serve the disk read-only (default: the backend's `readOnly`). */
  readOnly?: boolean;
  /** The ID string GET_ID returns: ASCII, at most 20 bytes (default empty). */
  serial?: string;
  /** Request queues offered (default 1); above 1, VIRTIO_BLK_F_MQ is offered. */
  numQueues?: number;
  /** Maximum size of each queue: a power of two (default 256). */
  queueSize?: number;
  /** Logical block size in bytes: a power of two from 512 (default 512). */
  blockSize?: number;
  /** Physical block size in bytes: a power-of-two multiple of `blockSize` (default `blockSize`). */
  physicalBlockSize?: number;
  /** Cache mode after reset: writeback (default true) or writethrough. */
  writeback?: boolean;
  /** Offer DISCARD on a writable disk (default true). */
  discard?: boolean;
  /** Offer WRITE_ZEROES on a writable disk (default true). */
  writeZeroes?: boolean;
  /** `size_max` in bytes (default 1 MiB). */
  sizeMax?: number;
  /** `max_discard_sectors` (default 0x3fffff, rounded down to whole blocks). */
  maxDiscardSectors?: number;
  /** `max_discard_seg` (default 32). */
  maxDiscardSegments?: number;
  /** `max_write_zeroes_sectors` (default 0x3fffff, rounded down to whole blocks). */
  maxWriteZeroesSectors?: number;
  /** `max_write_zeroes_seg` (default 32). */
  maxWriteZeroesSegments?: number;
  /** Called for each error while serving (default: ignore); the transport hears them too. */
  onError?: (err: VirtioError) => void;
}

/** Counters of a {@linkcode BlockDevice}, since creation. */
export interface BlockStats {
  /** IN requests completed with OK. */
  reads: number;
  /** OUT requests completed with OK. */
  writes: number;
  /** FLUSH requests completed with OK. */
  flushes: number;
  /** DISCARD and WRITE_ZEROES requests completed with OK. */
  discards: number;
  /** Bytes read into guest memory. */
  bytesRead: number;
  /** Bytes written from guest memory. */
  bytesWritten: number;
  /** Requests refused or failed (any status but OK, or unanswerable). */
  errors: number;
}

// The counters a BlockDevice exposes: each field sums its column over every row.
function blockStats(counters: Float64Array): BlockStats {
  const sum = (col: number) => {
    let n = 0;
    for (let at = col; at < counters.length; at += STAT_FIELDS) n += counters[at];
    return n;
  };
  return {
    get reads() {
      return sum(Stat.reads);
    },
    get writes() {
      return sum(Stat.writes);
    },
    get flushes() {
      return sum(Stat.flushes);
    },
    get discards() {
      return sum(Stat.discards);
    },
    get bytesRead() {
      return sum(Stat.bytesRead);
    },
    get bytesWritten() {
      return sum(Stat.bytesWritten);
    },
    get errors() {
      return sum(Stat.errors);
    },
  };
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function u32Option(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new RangeError(`${name} must be a 32-bit unsigned integer, got ${v}`);
  }
  return v;
}

/**
 * The virtio block device.
 *
 * - Types IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES (with UNMAP); any
 *   other type is answered `VIRTIO_BLK_S_UNSUPP`.
 * - A malformed request or a failed backend call is answered
 *   `VIRTIO_BLK_S_IOERR` and reported to `onError`; the device keeps serving.
 * - In writethrough mode (the `writeback` field at 0, or FLUSH not negotiated)
 *   every write is made durable before it completes; FLUSH always is.
 * - Each request queue is served on its own by `processQueue(index)`; only
 *   queue 0 must be set up by the driver.
 *
 * @example Read a sector through the driver harness
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { SplitQueue } from "../queue/split.ts";
 * import { DriverQueue } from "../testing/queue_driver.ts";
 * import { VirtioDeviceConfig, VirtioQueueConfig } from "./device.ts";
 * import { BlockDevice, blockRequestHeader, MemoryBackend, VIRTIO_BLK_T_IN } from "./block.ts";
 * const disk = new MemoryBackend(4096);
 * disk.bytes.fill(7, 512, 1024);
 * const blk = new BlockDevice({ backend: disk });
 * const mem = GuestMemory.create(1 << 20);
 * const driver = new DriverQueue(mem, { size: 16 });
 * const queue = new SplitQueue(16);
 * driver.program(queue);
 * blk.setAckedFeatures(1, 1); // VIRTIO_F_VERSION_1
 * blk.activate(new VirtioDeviceConfig({
 *   memory: mem,
 *   queues: [new VirtioQueueConfig(0, queue, { notify() {} })],
 *   deviceChangeNotifier: { notify() {} },
 *   ackedFeatures: blk.ackedFeatures(),
 * }));
 * const header = blockRequestHeader(VIRTIO_BLK_T_IN, 1);
 * driver.addChain([{ readable: header }, { writable: 512 }, { writable: 1 }]);
 * blk.processQueue(0);
 * const used = driver.takeUsed()!;
 * assert.equal(used.len, 513);
 * assert.equal(used.written[0], 7);
 * assert.equal(used.written[512], 0);
 * ```
 */
export class BlockDevice extends VirtioDeviceBase {
  /** The storage served. */
  readonly backend: BlockBackend;
  /** Whether the disk is read-only (VIRTIO_BLK_F_RO offered). */
  readonly readOnly: boolean;
  /** Logical block size in bytes. */
  readonly blockSize: number;
  /** Counters since creation (the sum over the event loop and every queue thread). */
  readonly stats: BlockStats;
  readonly #ownsBackend: boolean;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #id = new Uint8Array(BLK_ID_BYTES);
  readonly #space: Uint8Array;
  readonly #config: DataView;
  readonly #defaultWriteback: number;
  readonly #limits: BlockRequestLimits;
  // One row of counters for the event loop, then one per queue thread (see `Stat`).
  readonly #counters: Float64Array;
  readonly #handler: BlockRequestHandler;
  #flushNegotiated = false;

  /**
   * Create the device and lay out its configuration space; a `path` is opened here.
   * @param options The storage and what to offer the driver.
   * @throws {TypeError} When neither or both of `path` and `backend` are given.
   * @throws {RangeError} When a size, count or serial is out of range.
   * @throws {Error} When `path` cannot be opened.
   */
  constructor(options: BlockOptions) {
    if ((options.path === undefined) === (options.backend === undefined)) {
      throw new TypeError("Block device needs exactly one of path and backend");
    }
    const queueSize = options.queueSize ?? BLOCK_QUEUE_SIZE;
    if (!isPowerOfTwo(queueSize) || queueSize < 4 || queueSize > 32768) {
      throw new RangeError(`Queue size must be a power of two from 4 to 32768, got ${queueSize}`);
    }
    const numQueues = options.numQueues ?? 1;
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 0xffff) {
      throw new RangeError(`Queue count must be from 1 to 65535, got ${numQueues}`);
    }
    const blockSize = options.blockSize ?? SECTOR_SIZE;
    if (!isPowerOfTwo(blockSize) || blockSize < SECTOR_SIZE || blockSize > 0x10000000) {
      throw new RangeError(`Block size must be a power of two from 512, got ${blockSize}`);
    }
    const physical = options.physicalBlockSize ?? blockSize;
    if (!isPowerOfTwo(physical) || physical < blockSize || physical / blockSize > 1 << 15) {
      throw new RangeError(`Physical block size ${physical} is not a power-of-two multiple`);
    }
    const serial = options.serial ?? "";
    // virtio 1.2 §5.2.6: the ID is NUL-padded ASCII of at most 20 bytes.
    if (serial.length > BLK_ID_BYTES || !/^[\x20-\x7e]*$/.test(serial)) {
      throw new RangeError(`Serial must be printable ASCII of at most 20 bytes, got "${serial}"`);
    }
    const sizeMax = u32Option("sizeMax", options.sizeMax, BLOCK_SIZE_MAX);
    const blockSectors = blockSize >>> SECTOR_SHIFT;
    const roundDown = (n: number) => n - (n % blockSectors);
    const maxDiscardSectors = roundDown(
      u32Option("maxDiscardSectors", options.maxDiscardSectors, BLOCK_MAX_RANGE_SECTORS),
    );
    const maxDiscardSegments = u32Option(
      "maxDiscardSegments",
      options.maxDiscardSegments,
      BLOCK_MAX_RANGE_SEGMENTS,
    );
    const maxWriteZeroesSectors = roundDown(
      u32Option("maxWriteZeroesSectors", options.maxWriteZeroesSectors, BLOCK_MAX_RANGE_SECTORS),
    );
    const maxWriteZeroesSegments = u32Option(
      "maxWriteZeroesSegments",
      options.maxWriteZeroesSegments,
      BLOCK_MAX_RANGE_SEGMENTS,
    );

    const backend = options.backend ??
      new FileBackend(options.path!, { readOnly: options.readOnly ?? false });
    const readOnly = (options.readOnly ?? false) || backend.readOnly;
    const discard = !readOnly && (options.discard ?? true) && maxDiscardSegments > 0;
    const writeZeroes = !readOnly && (options.writeZeroes ?? true) &&
      maxWriteZeroesSegments > 0;

    // Requests complete in the pass that takes them, in order (VIRTIO_F_IN_ORDER).
    let features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_EVENT_IDX) | featureBit(VIRTIO_F_IN_ORDER) |
      featureBit(VIRTIO_BLK_F_SEG_MAX) |
      featureBit(VIRTIO_BLK_F_BLK_SIZE) | featureBit(VIRTIO_BLK_F_TOPOLOGY) |
      // virtio 1.2 §5.2.5.2: FLUSH should always be offered, and must be with CONFIG_WCE.
      featureBit(VIRTIO_BLK_F_FLUSH) | featureBit(VIRTIO_BLK_F_CONFIG_WCE);
    if (sizeMax > 0) features |= featureBit(VIRTIO_BLK_F_SIZE_MAX);
    if (readOnly) features |= featureBit(VIRTIO_BLK_F_RO);
    if (numQueues > 1) features |= featureBit(VIRTIO_BLK_F_MQ);
    if (discard) features |= featureBit(VIRTIO_BLK_F_DISCARD);
    if (writeZeroes) features |= featureBit(VIRTIO_BLK_F_WRITE_ZEROES);

    // Shared memory: a queue thread reads the cache mode and the capacity from the same bytes.
    const space = new Uint8Array(new SharedArrayBuffer(BLOCK_CONFIG_SIZE));
    super(
      TYPE_BLOCK,
      new VirtioDeviceInfo(
        "virtio-blk",
        features,
        new Array<number>(numQueues).fill(queueSize),
        space,
      ),
    );
    this.backend = backend;
    this.readOnly = readOnly;
    this.blockSize = blockSize;
    this.#ownsBackend = options.backend === undefined;
    this.#onError = options.onError;
    this.#id.set(new TextEncoder().encode(serial));
    this.#space = space;
    this.#counters = new Float64Array(
      new SharedArrayBuffer((numQueues + 1) * STAT_FIELDS * Float64Array.BYTES_PER_ELEMENT),
    );
    this.stats = blockStats(this.#counters);
    this.#defaultWriteback = (options.writeback ?? true) ? 1 : 0;

    // virtio 1.2 §5.2.4: every field little-endian; padding and unsupported fields stay 0.
    const c = new DataView(space.buffer);
    const O = BlockConfigOffset;
    c.setUint32(O.sizeMax, sizeMax, true);
    // Linux puts the header and status in descriptors of their own (QEMU's choice too).
    c.setUint32(O.segMax, queueSize - 2, true);
    c.setUint32(O.blkSize, blockSize, true);
    c.setUint8(O.physicalBlockExp, Math.log2(physical / blockSize));
    c.setUint8(O.alignmentOffset, 0);
    c.setUint16(O.minIoSize, physical / blockSize, true);
    c.setUint32(O.optIoSize, 0, true);
    c.setUint8(O.writeback, this.#defaultWriteback);
    c.setUint16(O.numQueues, numQueues, true);
    if (discard) {
      c.setUint32(O.maxDiscardSectors, maxDiscardSectors, true);
      c.setUint32(O.maxDiscardSeg, maxDiscardSegments, true);
      c.setUint32(O.discardSectorAlignment, blockSectors, true);
    }
    if (writeZeroes) {
      c.setUint32(O.maxWriteZeroesSectors, maxWriteZeroesSectors, true);
      c.setUint32(O.maxWriteZeroesSeg, maxWriteZeroesSegments, true);
      c.setUint8(O.writeZeroesMayUnmap, backend.canUnmap ? 1 : 0);
    }
    this.#config = c;
    this.#limits = {
      capacitySectors: 0,
      readOnly,
      blockSize,
      discard: false,
      maxDiscardSegments,
      maxDiscardSectors,
      writeZeroes: false,
      maxWriteZeroesSegments,
      maxWriteZeroesSectors,
    };
    this.#setCapacity();
    this.#handler = new BlockRequestHandler({
      backend,
      limits: this.#limits,
      id: this.#id,
      config: c,
      stats: this.#counters.subarray(0, STAT_FIELDS),
      flushNegotiated: () => this.#flushNegotiated,
      onError: (err) => this.#error(err),
    });
  }

  /** Disk size in 512-byte sectors, as in the `capacity` field. */
  get capacity(): number {
    return this.#limits.capacitySectors;
  }

  /** Whether writes currently complete only once durable (writethrough mode). */
  get writethrough(): boolean {
    return !this.#flushNegotiated || this.#config.getUint8(BlockConfigOffset.writeback) === 0;
  }

  #setCapacity(): number {
    const size = this.backend.size;
    // Whole logical blocks only; the protocol counts 512-byte sectors.
    const blocks = Math.floor(size / this.blockSize);
    const sectors = blocks * (this.blockSize >>> SECTOR_SHIFT);
    this.#config.setUint32(BlockConfigOffset.capacity, sectors % 0x1_0000_0000, true);
    this.#config.setUint32(
      BlockConfigOffset.capacity + 4,
      Math.floor(sectors / 0x1_0000_0000),
      true,
    );
    this.#limits.capacitySectors = sectors;
    return sectors;
  }

  /**
   * Re-read the backend's size (after the image grew or shrank) and, when it
   * changed while active, tell the driver with a configuration change
   * notification (virtio 1.2 §5.2.6.2).
   * @returns The new capacity in sectors.
   */
  updateCapacity(): number {
    const before = this.#limits.capacitySectors;
    const after = this.#setCapacity();
    if (after !== before) this.active?.deviceChangeNotifier.notify();
    return after;
  }

  /**
   * Record one page of acknowledged features; once CONFIG_WCE is accepted
   * without FLUSH, `writeback` reads 0 (virtio 1.2 §5.2.5.2).
   * @param page Page number.
   * @param value The bits.
   */
  override setAckedFeatures(page: number, value: number): void {
    super.setAckedFeatures(page, value);
    if (
      this.info.hasFeature(VIRTIO_F_VERSION_1) && this.info.hasFeature(VIRTIO_BLK_F_CONFIG_WCE) &&
      !this.info.hasFeature(VIRTIO_BLK_F_FLUSH)
    ) {
      this.#config.setUint8(BlockConfigOffset.writeback, 0);
    }
  }

  /**
   * Write configuration space: only the one-byte `writeback` field is
   * writable (virtio 1.2 §5.2.6.1); any non-zero value selects writeback.
   * @param offset Byte offset.
   * @param data The bytes.
   * @throws {VirtioError} `InvalidInput` for any other field, a wider access, or without CONFIG_WCE.
   */
  override writeConfig(offset: number, data: Uint8Array): void {
    const wce = (this.info.availFeatures & featureBit(VIRTIO_BLK_F_CONFIG_WCE)) !== 0n;
    if (offset !== BlockConfigOffset.writeback || data.length !== 1 || !wce) {
      throw new VirtioError(
        "InvalidInput",
        `virtio-blk: only the writeback byte is writable (write at ${offset}, ${data.length} bytes)`,
      );
    }
    this.#config.setUint8(BlockConfigOffset.writeback, data[0] === 0 ? 0 : 1);
  }

  /** How many queues must be ready: only the first (a driver may use fewer than offered). */
  protected override requiredQueues(): number {
    return 1;
  }

  /**
   * Take the negotiated features into the request limits.
   * @param config The activation config.
   */
  protected override onActivate(config: VirtioDeviceConfig): void {
    const acked = config.ackedFeatures;
    const has = (bit: number) => (acked & featureBit(bit)) !== 0n;
    this.#limits.discard = has(VIRTIO_BLK_F_DISCARD);
    this.#limits.writeZeroes = has(VIRTIO_BLK_F_WRITE_ZEROES);
    this.#flushNegotiated = has(VIRTIO_BLK_F_FLUSH);
  }

  /**
   * Back to the state after creation: default cache mode, no features.
   * @param _wasActive The config the device was active with, if any.
   */
  protected override onReset(_wasActive: VirtioDeviceConfig | undefined): void {
    this.#config.setUint8(BlockConfigOffset.writeback, this.#defaultWriteback);
    this.#limits.discard = false;
    this.#limits.writeZeroes = false;
    this.#flushNegotiated = false;
    this.#handler.reset();
  }

  /**
   * Serve request queue `index`, one budget's worth at most.
   * @param index Queue index.
   * @returns `true` when requests are left for another pass.
   */
  processQueue(index: number): boolean {
    const config = this.active;
    if (config === undefined) return false;
    const qc = this.queue(index);
    if (qc === undefined) {
      this.#error(new VirtioError("InvalidInput", `virtio-blk has no active queue ${index}`));
      return false;
    }
    return serveQueue(config.memory, qc, this.#handler.handle, this.#reportQueueError).more;
  }

  /**
   * Serve request queue `index` on a thread of its own: the Worker opens nothing, it does
   * positional I/O on the descriptor of this device's {@linkcode FileBackend} and shares the
   * configuration space (cache mode, capacity) and the counters with it. Other backends
   * (memory, overlay) are served on the event loop (`undefined`).
   * @param index Queue index.
   * @returns The handler description, or `undefined`.
   */
  queueThread(index: number): QueueThreadSpec | undefined {
    if (this.active === undefined || this.queue(index) === undefined) return undefined;
    const backend = this.backend instanceof FileBackend ? this.backend.share() : undefined;
    if (backend === undefined) return undefined;
    const params: BlockThreadParams = {
      backend,
      limits: { ...this.#limits },
      id: this.#id.slice(),
      config: this.#space.buffer as SharedArrayBuffer,
      counters: this.#counters.buffer as SharedArrayBuffer,
      row: index + 1,
      flushNegotiated: this.#flushNegotiated,
    };
    const hook = this.#onError;
    return {
      module: new URL("./_block_thread.ts", import.meta.url).href,
      params,
      onError: hook === undefined ? undefined : (err) => hook(err),
    };
  }

  /** Close the backend if the device opened it. */
  remove(): void {
    if (this.#ownsBackend) this.backend.close();
  }

  #reportQueueError = (err: VirtioError): void => {
    this.#error(err);
  };

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}
