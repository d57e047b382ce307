/**
 * Guest-physical memory: one or more regions, each backed by an `ArrayBuffer`,
 * a `SharedArrayBuffer` or an `mmap` mapping exposed as an `ArrayBuffer`.
 *
 * Every access is bounds-checked against the regions; every multi-byte access
 * is little-endian, as virtio 1.x requires (virtio 1.2 §1.4).
 *
 * @module
 */

import { intRep } from "./_int.ts";

/** Any buffer that can back a guest memory region. */
export type GuestBuffer = ArrayBuffer | SharedArrayBuffer;

/** Description of one region of guest-physical address space. */
export interface GuestRegionOptions {
  /** Guest-physical address of the first byte of the region. */
  base: number;
  /** Backing storage. The region aliases it: no copy is made. */
  buffer: GuestBuffer;
  /** Byte offset of the region inside `buffer` (default 0). */
  offset?: number;
  /** Size of the region in bytes (default: the rest of `buffer` after `offset`). */
  size?: number;
}

/**
 * An access to guest memory that falls outside every region, or crosses the
 * end of the region it starts in.
 */
export class GuestMemoryError extends RangeError {
  /** Guest-physical address of the failed access. */
  readonly addr: number;
  /** Length in bytes of the failed access. */
  readonly len: number;

  /**
   * Create it.
   * @param addr Guest-physical address of the access.
   * @param len Length in bytes of the access.
   * @param reason Why it failed.
   */
  constructor(addr: number, len: number, reason = "outside guest memory") {
    super(`Guest memory access at 0x${safeHex(addr)} (+${len}) is ${reason}`);
    this.name = "GuestMemoryError";
    this.addr = addr;
    this.len = len;
  }
}

// Accessors read through the region's view at `off | 0` when the offset fits an int32, and at
// `off` at a second call site otherwise: the first then only ever sees int32s, which Bun's JIT
// needs to keep the read in optimized code (memory/_int.ts).
const INT32_MAX = 0x7fffffff;

function safeHex(n: number): string {
  return Number.isFinite(n) ? Math.trunc(n).toString(16) : String(n);
}

/** One contiguous region of guest-physical memory. */
export class GuestRegion {
  /** Guest-physical address of the first byte. */
  readonly base: number;
  /** Size in bytes. */
  readonly size: number;
  /** Guest-physical address one past the last byte. */
  readonly end: number;
  /** The region's bytes; aliases the backing buffer. */
  readonly bytes: Uint8Array;
  /** A little-endian-by-convention view of the region; aliases the backing buffer. */
  readonly view: DataView;
  #u16: Uint16Array | undefined;

  /**
   * Describe a region over its backing buffer, without copying.
   * @param options Where the region lives and what backs it.
   * @throws {RangeError} When base, offset or size are not valid.
   */
  constructor(options: GuestRegionOptions) {
    const offset = options.offset ?? 0;
    const size = options.size ?? options.buffer.byteLength - offset;
    if (!Number.isSafeInteger(options.base) || options.base < 0) {
      throw new RangeError(`Region base must be a non-negative safe integer, got ${options.base}`);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > options.buffer.byteLength) {
      throw new RangeError(`Region offset ${offset} is outside its buffer`);
    }
    if (!Number.isSafeInteger(size) || size <= 0 || offset + size > options.buffer.byteLength) {
      throw new RangeError(`Region size ${size} does not fit its buffer`);
    }
    if (!Number.isSafeInteger(options.base + size)) {
      throw new RangeError("Region end is not a safe integer");
    }
    // Held as int32 where they fit: offsets computed from them index DataViews (see _int.ts).
    this.base = intRep(options.base);
    this.size = intRep(size);
    this.end = intRep(options.base + size);
    this.bytes = new Uint8Array(options.buffer, offset, size);
    this.view = new DataView(options.buffer, offset, size);
  }

  /**
   * A `Uint16Array` over the region, for `Atomics` access to aligned 16-bit ring
   * indices. Only valid when the region starts on an even byte of its buffer.
   * @returns The array, created on first use.
   */
  get u16(): Uint16Array {
    if (this.#u16 === undefined) {
      if (this.bytes.byteOffset % 2 !== 0) {
        throw new RangeError("Region is not 2-byte aligned in its buffer");
      }
      this.#u16 = new Uint16Array(
        this.bytes.buffer,
        this.bytes.byteOffset,
        this.size >>> 1,
      );
    }
    return this.#u16;
  }
}

/**
 * Guest-physical address space made of non-overlapping regions.
 *
 * @example Read and write little-endian values
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "./guest_memory.ts";
 * const mem = GuestMemory.create(0x10000);
 * mem.writeU32(0x100, 0xdeadbeef);
 * assert.equal(mem.readU32(0x100), 0xdeadbeef);
 * ```
 */
export class GuestMemory {
  #regions: GuestRegion[];
  #last: GuestRegion;
  #lastIndex = 0;

  /**
   * Build an address space from regions.
   * @param regions At least one region; they must not overlap.
   * @throws {RangeError} When there is no region or two regions overlap.
   */
  constructor(regions: readonly (GuestRegionOptions | GuestRegion)[]) {
    if (regions.length === 0) throw new RangeError("Guest memory needs at least one region");
    const list = regions
      .map((r) => (r instanceof GuestRegion ? r : new GuestRegion(r)))
      .sort((a, b) => a.base - b.base);
    for (let i = 1; i < list.length; i++) {
      if (list[i].base < list[i - 1].end) {
        throw new RangeError(
          `Regions at 0x${list[i - 1].base.toString(16)} and 0x${
            list[i].base.toString(16)
          } overlap`,
        );
      }
    }
    this.#regions = list;
    this.#last = list[0];
  }

  /** The regions, sorted by base address. */
  get regions(): readonly GuestRegion[] {
    return this.#regions;
  }

  /**
   * Add a region to the address space while it is in use: device memory a VMM maps into the
   * guest (a virtio-mem or pmem region, a DAX window). Views and queues over the existing
   * regions stay valid; the new one is found from the next access on.
   * @param region The region, or where it lives and what backs it.
   * @returns The region added.
   * @throws {RangeError} When it overlaps a region already there.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { GuestMemory } from "./guest_memory.ts";
   * const mem = GuestMemory.create(0x10000);
   * mem.insertRegion({ base: 0x100000, buffer: new ArrayBuffer(0x1000) });
   * mem.writeU32(0x100010, 7);
   * assert.equal(mem.readU32(0x100010), 7);
   * assert.throws(() => mem.insertRegion({ base: 0x8000, buffer: new ArrayBuffer(0x1000) }));
   * ```
   */
  insertRegion(region: GuestRegionOptions | GuestRegion): GuestRegion {
    const r = region instanceof GuestRegion ? region : new GuestRegion(region);
    for (const other of this.#regions) {
      if (r.base < other.end && other.base < r.end) {
        throw new RangeError(
          `Region at 0x${r.base.toString(16)} (+0x${r.size.toString(16)}) overlaps the one at 0x${
            other.base.toString(16)
          }`,
        );
      }
    }
    const list = [...this.#regions, r].sort((a, b) => a.base - b.base);
    // Indices moved: restart the lookup cache at the first region.
    this.#regions = list;
    this.#last = list[0];
    this.#lastIndex = 0;
    return r;
  }

  /**
   * Guest memory of `size` bytes at guest-physical address 0, backed by a new buffer.
   * @param size Size in bytes.
   * @param shared Back it with a `SharedArrayBuffer` (default false).
   * @returns The new memory.
   */
  static create(size: number, shared = false): GuestMemory {
    const buffer = shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size);
    return new GuestMemory([{ base: 0, buffer }]);
  }

  /** Total size of all regions in bytes. */
  get totalSize(): number {
    let n = 0;
    for (const r of this.regions) n += r.size;
    return n;
  }

  /**
   * The region holding `addr`, if any.
   * @param addr A guest-physical address.
   * @returns The region, or `undefined`.
   */
  findRegion(addr: number): GuestRegion | undefined {
    const last = this.#last;
    if (addr >= last.base && addr < last.end) return last;
    const i = this.findRegionIndex(addr);
    return i < 0 ? undefined : this.regions[i];
  }

  /**
   * The index in {@linkcode GuestMemory.regions} of the region holding `addr`.
   * A range that runs on past that region's end continues in the region at
   * the next index, but only where that one starts exactly at the end (no hole).
   * @param addr A guest-physical address.
   * @returns The index, or -1 when no region holds `addr`.
   */
  findRegionIndex(addr: number): number {
    const regions = this.regions;
    const last = this.#last;
    if (addr >= last.base && addr < last.end) return this.#lastIndex;
    // Binary search for the last region starting at or below `addr` (a memory table may hold
    // many regions).
    let lo = 0;
    let hi = regions.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (regions[mid].base <= addr) lo = mid;
      else hi = mid - 1;
    }
    const r = regions[lo];
    if (addr >= r.base && addr < r.end) {
      this.#last = r;
      this.#lastIndex = lo;
      return lo;
    }
    return -1;
  }

  /**
   * Whether `[addr, addr + len)` lies inside one region.
   * @param addr Guest-physical address.
   * @param len Length in bytes.
   * @returns `true` when the whole range is inside a single region.
   */
  checkRange(addr: number, len: number): boolean {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) {
      return false;
    }
    const r = this.findRegion(addr);
    if (r === undefined) return len === 0 && this.#isEndOfRegion(addr);
    return addr + len <= r.end;
  }

  /**
   * Whether `[addr, addr + len)` is backed, possibly across adjacent regions.
   * @param addr Guest-physical address.
   * @param len Length in bytes.
   * @returns `true` when every byte of the range is in some region.
   */
  checkSpan(addr: number, len: number): boolean {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) {
      return false;
    }
    let a = addr;
    const end = addr + len;
    while (a < end) {
      const r = this.findRegion(a);
      if (r === undefined) return false;
      a = r.end;
    }
    return true;
  }

  #isEndOfRegion(addr: number): boolean {
    for (const r of this.regions) if (r.end === addr) return true;
    return false;
  }

  /**
   * The region holding all of `[addr, addr + len)` (`len` > 0), without throwing.
   * @param addr Guest-physical address.
   * @param len Length in bytes.
   * @returns The region, or `undefined` when the range is not inside one region.
   */
  regionOf(addr: number, len: number): GuestRegion | undefined {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len <= 0) {
      return undefined;
    }
    const r = this.findRegion(addr);
    return r !== undefined && addr + len <= r.end ? r : undefined;
  }

  /**
   * Resolve a range to its region and the offset inside it.
   * @param addr Guest-physical address.
   * @param len Length in bytes.
   * @returns The region and the offset of `addr` within it.
   * @throws {GuestMemoryError} When the range is not inside one region.
   */
  resolve(addr: number, len: number): { region: GuestRegion; offset: number } {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) {
      throw new GuestMemoryError(addr, len, "not a valid address range");
    }
    const r = this.findRegion(addr);
    if (r === undefined) throw new GuestMemoryError(addr, len);
    if (addr + len > r.end) throw new GuestMemoryError(addr, len, "crossing the end of a region");
    return { region: r, offset: addr - r.base };
  }

  #region(addr: number, len: number): GuestRegion {
    const last = this.#last;
    if (addr >= last.base && addr + len <= last.end) return last;
    return this.resolve(addr, len).region;
  }

  /**
   * A zero-copy view of `[addr, addr + len)`. It aliases guest memory: writes
   * through it are seen by the guest.
   * @param addr Guest-physical address.
   * @param len Length in bytes.
   * @returns A `Uint8Array` aliasing guest memory.
   * @throws {GuestMemoryError} When the range is not inside one region.
   */
  slice(addr: number, len: number): Uint8Array {
    const r = this.#region(addr, len);
    const off = addr - r.base;
    return r.bytes.subarray(off, off + len);
  }

  /**
   * A zero-copy `DataView` of `[addr, addr + len)`; aliases guest memory.
   * Pass `true` as the little-endian flag on every access.
   * @param addr Guest-physical address.
   * @param len Length in bytes.
   * @returns A `DataView` aliasing guest memory.
   * @throws {GuestMemoryError} When the range is not inside one region.
   */
  dataView(addr: number, len: number): DataView {
    const r = this.#region(addr, len);
    return new DataView(r.bytes.buffer, r.bytes.byteOffset + (addr - r.base), len);
  }

  /**
   * Read one byte.
   * @param addr Guest-physical address.
   * @returns The byte.
   * @throws {GuestMemoryError} When out of bounds.
   */
  readU8(addr: number): number {
    const r = this.#region(addr, 1);
    const off = addr - r.base;
    return off <= INT32_MAX ? r.bytes[off | 0] : r.bytes[off];
  }

  /**
   * Read a little-endian 16-bit value.
   * @param addr Guest-physical address.
   * @returns The value.
   * @throws {GuestMemoryError} When out of bounds.
   */
  readU16(addr: number): number {
    const r = this.#region(addr, 2);
    const off = addr - r.base;
    return off <= INT32_MAX ? r.view.getUint16(off | 0, true) : r.view.getUint16(off, true);
  }

  /**
   * Read a little-endian 32-bit value.
   * @param addr Guest-physical address.
   * @returns The value.
   * @throws {GuestMemoryError} When out of bounds.
   */
  readU32(addr: number): number {
    const r = this.#region(addr, 4);
    const off = addr - r.base;
    return off <= INT32_MAX ? r.view.getUint32(off | 0, true) : r.view.getUint32(off, true);
  }

  /**
   * Read a little-endian 64-bit value.
   * @param addr Guest-physical address.
   * @returns The value as a `bigint`.
   * @throws {GuestMemoryError} When out of bounds.
   */
  readU64(addr: number): bigint {
    const r = this.#region(addr, 8);
    const off = addr - r.base;
    return off <= INT32_MAX ? r.view.getBigUint64(off | 0, true) : r.view.getBigUint64(off, true);
  }

  /**
   * Write one byte.
   * @param addr Guest-physical address.
   * @param value The byte (truncated to 8 bits).
   * @throws {GuestMemoryError} When out of bounds.
   */
  writeU8(addr: number, value: number): void {
    const r = this.#region(addr, 1);
    const off = addr - r.base;
    if (off <= INT32_MAX) r.bytes[off | 0] = value;
    else r.bytes[off] = value;
  }

  /**
   * Write a little-endian 16-bit value.
   * @param addr Guest-physical address.
   * @param value The value (truncated to 16 bits).
   * @throws {GuestMemoryError} When out of bounds.
   */
  writeU16(addr: number, value: number): void {
    const r = this.#region(addr, 2);
    const off = addr - r.base;
    if (off <= INT32_MAX) r.view.setUint16(off | 0, value, true);
    else r.view.setUint16(off, value, true);
  }

  /**
   * Write a little-endian 32-bit value.
   * @param addr Guest-physical address.
   * @param value The value (truncated to 32 bits).
   * @throws {GuestMemoryError} When out of bounds.
   */
  writeU32(addr: number, value: number): void {
    const r = this.#region(addr, 4);
    const off = addr - r.base;
    if (off <= INT32_MAX) r.view.setUint32(off | 0, value, true);
    else r.view.setUint32(off, value, true);
  }

  /**
   * Write a little-endian 64-bit value.
   * @param addr Guest-physical address.
   * @param value The value (truncated to 64 bits).
   * @throws {GuestMemoryError} When out of bounds.
   */
  writeU64(addr: number, value: bigint): void {
    const r = this.#region(addr, 8);
    const off = addr - r.base;
    const v = BigInt.asUintN(64, value);
    if (off <= INT32_MAX) r.view.setBigUint64(off | 0, v, true);
    else r.view.setBigUint64(off, v, true);
  }

  /**
   * Read a little-endian 64-bit value as a number; fails when it is above 2^53.
   * @param addr Guest-physical address.
   * @returns The value as a safe integer, or -1 when it is not one.
   * @throws {GuestMemoryError} When out of bounds.
   */
  readU64Number(addr: number): number {
    const r = this.#region(addr, 8);
    const off = addr - r.base;
    if (off > INT32_MAX - 4) {
      const lo = r.view.getUint32(off, true);
      const hi = r.view.getUint32(off + 4, true);
      return hi > 0x1fffff ? -1 : hi * 0x1_0000_0000 + lo;
    }
    const o = off | 0;
    const lo = r.view.getUint32(o, true);
    const hi = r.view.getUint32(o + 4, true);
    if (hi > 0x1fffff) return -1;
    return hi === 0 ? lo : hi * 0x1_0000_0000 + lo;
  }

  /**
   * Copy guest memory into `dst`; the range may span adjacent regions.
   * @param addr Guest-physical address of the first byte.
   * @param dst Destination; its whole length is filled.
   * @throws {GuestMemoryError} When any byte is not backed (nothing is copied then).
   */
  read(addr: number, dst: Uint8Array): void {
    this.#eachChunk(addr, dst.length, (r, off, done, n) => {
      dst.set(r.bytes.subarray(off, off + n), done);
    });
  }

  /**
   * Copy `src` into guest memory; the range may span adjacent regions.
   * @param addr Guest-physical address of the first byte.
   * @param src Source bytes.
   * @throws {GuestMemoryError} When any byte is not backed (nothing is copied then).
   */
  write(addr: number, src: Uint8Array): void {
    this.#eachChunk(addr, src.length, (r, off, done, n) => {
      r.bytes.set(src.subarray(done, done + n), off);
    });
  }

  /**
   * Fill a range of guest memory with one byte value.
   * @param addr Guest-physical address.
   * @param len Length in bytes.
   * @param value Byte value (default 0).
   * @throws {GuestMemoryError} When any byte is not backed (nothing is written then).
   */
  fill(addr: number, len: number, value = 0): void {
    this.#eachChunk(addr, len, (r, off, _done, n) => {
      r.bytes.fill(value, off, off + n);
    });
  }

  /**
   * Check that `[addr, addr + len)` is backed, then call `fn` for each piece of
   * it that lies in one region: the region, the offset in it, how many bytes
   * came before, and the piece's length.
   */
  #eachChunk(
    addr: number,
    len: number,
    fn: (region: GuestRegion, offset: number, done: number, n: number) => void,
  ): void {
    if (!this.checkSpan(addr, len)) throw new GuestMemoryError(addr, len);
    let done = 0;
    while (done < len) {
      const a = addr + done;
      const r = this.findRegion(a)!;
      const n = Math.min(len - done, r.end - a);
      fn(r, a - r.base, done, n);
      done += n;
    }
  }
}
