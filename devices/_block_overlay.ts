/**
 * A copy-on-write overlay: a disk that reads through to a read-only base image
 * until a cluster is first written, after which that cluster lives in the
 * overlay. Many guests can share one base image, each with its own overlay.
 *
 * Overlay layout (all integers little-endian):
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | 8 | magic `VTS-COW1` |
 * | 8 | 4 | version (1) |
 * | 12 | 4 | cluster size in bytes (a power of two, 4 KiB … 2 MiB) |
 * | 16 | 8 | disk size in bytes (the base image's size) |
 * | 24 | 8 | bitmap offset (4096) |
 * | 32 | 8 | data offset (a multiple of the cluster size) |
 *
 * The bitmap has one bit per cluster (bit `c & 7` of byte `c >> 3`): set once
 * the cluster's data is in the overlay. The data area maps the disk linearly
 * (disk byte `x` is overlay byte `dataOffset + x`), so the overlay file is
 * sparse and only written clusters take space.
 *
 * Durability: the bitmap is written only by `flush` (and `close`), after the
 * data is synced, so a bitmap on disk never names a cluster whose data is not
 * there. A crash loses what was written since the last flush, as it would on
 * a disk with a volatile write cache.
 *
 * @module
 */

import type { BlockBackend } from "./_block_backend.ts";
import { FileBackend } from "./_block_backend.ts";
import * as fs from "node:fs";

const MAGIC = "VTS-COW1";
const VERSION = 1;
const HEADER_SIZE = 4096;
const BITMAP_OFFSET = HEADER_SIZE;
/** Default cluster size of a new overlay (64 KiB). */
export const OVERLAY_CLUSTER_SIZE = 64 << 10;
const MIN_CLUSTER = 4096;
const MAX_CLUSTER = 2 << 20;

/** Raised for an overlay that cannot be used: bad header, wrong size, wrong base. */
export class OverlayError extends Error {
  /**
   * Create the error.
   * @param message What is wrong.
   */
  constructor(message: string) {
    super(message);
    this.name = "OverlayError";
  }
}

/** Where the parts of an overlay go, for a disk size and cluster size. */
export interface OverlayLayout {
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Number of clusters. */
  clusters: number;
  /** Byte offset of the bitmap. */
  bitmapOffset: number;
  /** Bytes reserved for the bitmap (a multiple of 4096). */
  bitmapBytes: number;
  /** Byte offset of the data area. */
  dataOffset: number;
  /** Size the overlay storage must have. */
  storeSize: number;
}

/**
 * The layout of an overlay for a disk of `size` bytes.
 * @param size Disk size in bytes.
 * @param clusterSize Cluster size (default 64 KiB).
 * @returns The layout.
 * @throws {RangeError} For a bad size or cluster size.
 */
export function overlayLayout(size: number, clusterSize = OVERLAY_CLUSTER_SIZE): OverlayLayout {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`Disk size must be a non-negative safe integer, got ${size}`);
  }
  if (
    !Number.isInteger(clusterSize) || clusterSize < MIN_CLUSTER || clusterSize > MAX_CLUSTER ||
    (clusterSize & (clusterSize - 1)) !== 0
  ) {
    throw new RangeError(
      `Cluster size must be a power of two from 4 KiB to 2 MiB, got ${clusterSize}`,
    );
  }
  const clusters = Math.ceil(size / clusterSize);
  const bitmapBytes = Math.max(4096, Math.ceil(Math.ceil(clusters / 8) / 4096) * 4096);
  const dataOffset = Math.ceil((BITMAP_OFFSET + bitmapBytes) / clusterSize) * clusterSize;
  return {
    clusterSize,
    clusters,
    bitmapOffset: BITMAP_OFFSET,
    bitmapBytes,
    dataOffset,
    storeSize: dataOffset + size,
  };
}

/** Options of {@linkcode OverlayBackend}. */
export interface OverlayOptions {
  /** Write a new, empty overlay into the store instead of opening the one there. */
  format?: boolean;
  /** Cluster size of a new overlay (default 64 KiB); an existing one keeps its own. */
  clusterSize?: number;
}

/**
 * A copy-on-write overlay over a read-only base: reads of clusters never
 * written come from `base`, everything written goes to `store`.
 *
 * @example An overlay file per guest over one shared base image
 * ```ts ignore
 * import { BlockDevice, FileBackend, OverlayBackend } from "./block.ts";
 * const base = new FileBackend("base.img", { readOnly: true });
 * const disk = OverlayBackend.openFile(base, "guest1.cow"); // created when missing
 * const blk = new BlockDevice({ backend: disk });
 * // … serve; then disk.close() persists the bitmap and closes both files.
 * ```
 *
 * @example In memory
 * ```ts
 * import assert from "node:assert/strict";
 * import { MemoryBackend, OverlayBackend, overlayLayout } from "./block.ts";
 * const base = new MemoryBackend(new Uint8Array(1 << 20).fill(1), { readOnly: true });
 * const store = new MemoryBackend(overlayLayout(base.size).storeSize);
 * const disk = new OverlayBackend(base, store, { format: true });
 * disk.write([new Uint8Array(512).fill(2)], 4096);
 * const out = new Uint8Array(1024);
 * disk.read([out], 3584);
 * assert.deepEqual([out[0], out[512], base.bytes[4096]], [1, 2, 1]);
 * ```
 */
export class OverlayBackend implements BlockBackend {
  /** The read-only base. */
  readonly base: BlockBackend;
  /** Where written clusters and the bitmap live. */
  readonly store: BlockBackend;
  /** The layout in use. */
  readonly layout: OverlayLayout;
  /** An overlay is always writable. */
  readonly readOnly = false;
  readonly #size: number;
  readonly #bitmap: Uint8Array;
  readonly #views: Uint8Array[] = [];
  #cluster: Uint8Array | undefined;
  // Dirty bitmap bytes not yet written: [#dirtyLo, #dirtyHi).
  #dirtyLo = Infinity;
  #dirtyHi = 0;
  #closed = false;

  /**
   * Open (or, with `format`, create) an overlay in `store` over `base`.
   * @param base The base disk (not written).
   * @param store The overlay's storage, at least `overlayLayout(base.size).storeSize` bytes.
   * @param options `format` a new overlay; its cluster size.
   * @throws {OverlayError} When the store holds no valid overlay for this base, or is too small.
   */
  constructor(base: BlockBackend, store: BlockBackend, options: OverlayOptions = {}) {
    this.base = base;
    this.store = store;
    this.#size = base.size;
    if (store.readOnly) throw new OverlayError("The overlay store must be writable");
    if (options.format) {
      this.layout = overlayLayout(this.#size, options.clusterSize);
      this.#checkStore();
      this.#bitmap = new Uint8Array(this.layout.bitmapBytes);
      const header = new Uint8Array(HEADER_SIZE);
      const v = new DataView(header.buffer);
      header.set(new TextEncoder().encode(MAGIC), 0);
      v.setUint32(8, VERSION, true);
      v.setUint32(12, this.layout.clusterSize, true);
      v.setBigUint64(16, BigInt(this.#size), true);
      v.setBigUint64(24, BigInt(this.layout.bitmapOffset), true);
      v.setBigUint64(32, BigInt(this.layout.dataOffset), true);
      // Bitmap first, header last: a half-formatted store has no valid header.
      store.write([this.#bitmap], this.layout.bitmapOffset);
      store.flush();
      store.write([header], 0);
      store.flush();
    } else {
      if (store.size < HEADER_SIZE) throw new OverlayError("Overlay is shorter than its header");
      const header = new Uint8Array(HEADER_SIZE);
      store.read([header], 0);
      const v = new DataView(header.buffer);
      if (new TextDecoder().decode(header.subarray(0, 8)) !== MAGIC) {
        throw new OverlayError("Not an overlay (bad magic)");
      }
      const version = v.getUint32(8, true);
      if (version !== VERSION) throw new OverlayError(`Unsupported overlay version ${version}`);
      const size = Number(v.getBigUint64(16, true));
      if (size !== this.#size) {
        throw new OverlayError(`Overlay is for a ${size}-byte disk, the base has ${this.#size}`);
      }
      let layout: OverlayLayout;
      try {
        layout = overlayLayout(size, v.getUint32(12, true));
      } catch (err) {
        throw new OverlayError(`Bad overlay header: ${(err as Error).message}`);
      }
      if (
        v.getBigUint64(24, true) !== BigInt(layout.bitmapOffset) ||
        v.getBigUint64(32, true) !== BigInt(layout.dataOffset)
      ) {
        throw new OverlayError("Bad overlay header: bitmap or data offset");
      }
      this.layout = layout;
      this.#checkStore();
      this.#bitmap = new Uint8Array(layout.bitmapBytes);
      store.read([this.#bitmap], layout.bitmapOffset);
    }
  }

  /**
   * Open the overlay file at `path` over `base`, creating and formatting it (sparse) when it
   * does not exist or is empty.
   * @param base The base disk (typically a read-only {@linkcode FileBackend}).
   * @param path The overlay file.
   * @param options Cluster size of a new overlay.
   * @returns The overlay; `close()` closes the file and `base`.
   * @throws {OverlayError} When the file holds no valid overlay for this base.
   */
  static openFile(
    base: BlockBackend,
    path: string,
    options: { clusterSize?: number } = {},
  ): OverlayBackend {
    let format = false;
    if (!fs.existsSync(path) || fs.statSync(path).size === 0) {
      const layout = overlayLayout(base.size, options.clusterSize);
      fs.writeFileSync(path, new Uint8Array(0));
      fs.truncateSync(path, layout.storeSize);
      format = true;
    }
    const store = new FileBackend(path);
    try {
      return new OverlayBackend(base, store, { format, clusterSize: options.clusterSize });
    } catch (err) {
      store.close();
      throw err;
    }
  }

  #checkStore(): void {
    if (this.store.size < this.layout.storeSize) {
      throw new OverlayError(
        `Overlay store of ${this.store.size} bytes, ${this.layout.storeSize} needed`,
      );
    }
  }

  /** Disk size in bytes (the base's). */
  get size(): number {
    return this.#size;
  }

  /** Whether DISCARD and WRITE_ZEROES may deallocate: the store's. */
  get canUnmap(): boolean {
    return this.store.canUnmap;
  }

  /** Number of clusters held in the overlay. */
  get allocatedClusters(): number {
    let n = 0;
    for (let c = 0; c < this.layout.clusters; c++) n += this.#has(c) ? 1 : 0;
    return n;
  }

  #has(c: number): boolean {
    return ((this.#bitmap[c >>> 3] >>> (c & 7)) & 1) !== 0;
  }

  #mark(first: number, last: number): void {
    const bm = this.#bitmap;
    for (let c = first; c <= last; c++) bm[c >>> 3] |= 1 << (c & 7);
    this.#dirtyLo = Math.min(this.#dirtyLo, first >>> 3);
    this.#dirtyHi = Math.max(this.#dirtyHi, (last >>> 3) + 1);
  }

  /**
   * Read `bufs` from `offset`: runs of written clusters from the overlay, the rest from the base.
   * @param bufs Destination views.
   * @param offset Byte offset.
   */
  read(bufs: readonly Uint8Array[], offset: number): void {
    let length = 0;
    for (let i = 0; i < bufs.length; i++) length += bufs[i].length;
    const end = offset + length;
    const cs = this.layout.clusterSize;
    let pos = offset;
    while (pos < end) {
      const inStore = this.#has(Math.floor(pos / cs));
      let runEnd = Math.min(end, (Math.floor(pos / cs) + 1) * cs);
      while (runEnd < end && this.#has(runEnd / cs) === inStore) {
        runEnd = Math.min(end, runEnd + cs);
      }
      // The scratch list is emptied first: a read that threw last time may have left views.
      this.#views.length = 0;
      const views = pos === offset && runEnd === end
        ? bufs
        : sliceViews(bufs, pos - offset, runEnd - pos, this.#views);
      if (inStore) this.store.read(views, this.layout.dataOffset + pos);
      else this.base.read(views, pos);
      pos = runEnd;
    }
  }

  /**
   * Copy cluster `c` from the base into the overlay unless it is already there or the range
   * `[from, to)` covers all of it.
   */
  #copyUp(c: number, from: number, to: number): void {
    if (this.#has(c)) return;
    const cs = this.layout.clusterSize;
    const start = c * cs;
    const len = Math.min(cs, this.#size - start);
    if (from <= start && to >= start + len) return;
    const buf = (this.#cluster ??= new Uint8Array(cs)).subarray(0, len);
    this.base.read([buf], start);
    this.store.write([buf], this.layout.dataOffset + start);
  }

  #prepare(offset: number, length: number): [number, number] {
    const cs = this.layout.clusterSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    this.#copyUp(first, offset, offset + length);
    if (last !== first) this.#copyUp(last, offset, offset + length);
    return [first, last];
  }

  /**
   * Write `bufs` at `offset` into the overlay, first copying up partly written clusters.
   * @param bufs Source views.
   * @param offset Byte offset.
   */
  write(bufs: readonly Uint8Array[], offset: number): void {
    let length = 0;
    for (let i = 0; i < bufs.length; i++) length += bufs[i].length;
    if (length === 0) return;
    const [first, last] = this.#prepare(offset, length);
    this.store.write(bufs, this.layout.dataOffset + offset);
    this.#mark(first, last);
  }

  /**
   * Make the range read as zeroes (in the overlay; the base is untouched).
   * @param offset Byte offset.
   * @param length Byte length.
   */
  discard(offset: number, length: number): void {
    this.writeZeroes(offset, length, true);
  }

  /**
   * Make the range read as zeroes, in the overlay, deallocating store space when `unmap`.
   * @param offset Byte offset.
   * @param length Byte length.
   * @param unmap Deallocation is allowed.
   */
  writeZeroes(offset: number, length: number, unmap: boolean): void {
    if (length === 0) return;
    const [first, last] = this.#prepare(offset, length);
    this.store.writeZeroes(this.layout.dataOffset + offset, length, unmap);
    this.#mark(first, last);
  }

  /**
   * Make every completed write durable: sync the data, then write the changed part of the
   * bitmap and sync again.
   */
  flush(): void {
    this.store.flush();
    if (this.#dirtyHi <= this.#dirtyLo) return;
    // Whole 4 KiB pages of the bitmap around the changed bytes.
    const lo = Math.floor(this.#dirtyLo / 4096) * 4096;
    const hi = Math.min(this.#bitmap.length, Math.ceil(this.#dirtyHi / 4096) * 4096);
    this.store.write([this.#bitmap.subarray(lo, hi)], this.layout.bitmapOffset + lo);
    this.store.flush();
    this.#dirtyLo = Infinity;
    this.#dirtyHi = 0;
  }

  /** Flush, then close the store and the base; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.flush();
    } finally {
      this.store.close();
      this.base.close();
    }
  }
}

/** Push onto `out` the views covering bytes `[start, start + length)` of `bufs` laid end to end. */
function sliceViews(
  bufs: readonly Uint8Array[],
  start: number,
  length: number,
  out: Uint8Array[],
): Uint8Array[] {
  let skip = start;
  let left = length;
  for (let i = 0; i < bufs.length && left > 0; i++) {
    const b = bufs[i];
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, left);
    out.push(b.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}
