/**
 * Guest RAM as its VMM backs it, for the devices that give memory back to the host: which
 * guest-physical ranges are RAM (device memory is not), and how to release the host pages behind
 * a range. The balloon device gets it from the VMM through
 * {@linkcode VirtioDevice.setGuestRam}; it never sees the VM itself.
 *
 * @module
 */

import { MADV_DONTNEED, MADV_REMOVE, madvise, type Mapping } from "../sys/mman.ts";

/** One range of guest RAM. */
export interface GuestRamRange {
  /** Guest-physical address of its first byte. */
  readonly base: number;
  /** Size in bytes. */
  readonly size: number;
}

/**
 * Guest RAM, as far as a device that releases memory needs to know it (the balloon): where RAM
 * is, and a way to give the host pages behind part of it back. Narrow on purpose: no access to
 * the VM, its memory slots or other devices' memory.
 */
export interface GuestRam {
  /** The RAM ranges, sorted by base and not overlapping. Device memory is not in them. */
  readonly ranges: readonly GuestRamRange[];
  /** Granularity of {@linkcode GuestRam.discard}: the host page size (4096 on x86-64). */
  readonly pageSize: number;
  /**
   * Give the host memory behind `[addr, addr + len)` back to the host; the guest reads zeroes
   * there afterwards (or the backing file's contents, for shared file-backed RAM).
   * @param addr Guest-physical address, a multiple of `pageSize`.
   * @param len Length in bytes, a positive multiple of `pageSize`.
   * @throws {RangeError} When the range is not page-aligned or not inside one RAM range.
   * @throws {Error} When the host refuses (madvise failure, as a `SysError`).
   */
  discard(addr: number, len: number): void;
}

/** One RAM range of a {@linkcode MappedGuestRam}: guest-physical base and its host mapping. */
export interface MappedRamRange {
  /** Guest-physical address of the first byte. */
  base: number;
  /** The host mapping backing the range. */
  mapping: Mapping;
  /** Offset of the range inside the mapping (default 0). */
  offset?: number;
  /** Size of the range (default: the rest of the mapping). */
  size?: number;
}

/** Options of {@linkcode MappedGuestRam}. */
export interface MappedGuestRamOptions {
  /**
   * Whether the mappings are shared (a memfd or file, `MAP_SHARED`): their pages are released
   * with `MADV_REMOVE`, which frees the backing store too. Default false: private anonymous
   * memory, released with `MADV_DONTNEED`.
   */
  shared?: boolean;
  /** Host page size (default 4096). */
  pageSize?: number;
}

/**
 * {@linkcode GuestRam} over `mmap`ed guest RAM: what a VMM hands its balloon device.
 *
 * @example Release one page of anonymous RAM
 * ```ts
 * import assert from "node:assert/strict";
 * import { mmapAnonymous } from "../sys/mod.ts";
 * import { MappedGuestRam } from "./guest_ram.ts";
 * const mapping = mmapAnonymous(1 << 20);
 * const ram = new MappedGuestRam([{ base: 0, mapping }]);
 * const bytes = new Uint8Array(mapping.buffer);
 * bytes[4096] = 7;
 * ram.discard(4096, 4096);
 * assert.equal(bytes[4096], 0); // private anonymous pages read back as zero
 * mapping.unmap();
 * ```
 */
export class MappedGuestRam implements GuestRam {
  /** The RAM ranges. */
  readonly ranges: readonly GuestRamRange[];
  /** Granularity of `discard`. */
  readonly pageSize: number;
  readonly #hosts: { base: number; end: number; address: bigint }[];
  readonly #advice: number;

  /**
   * Create it.
   * @param ranges The RAM ranges and their mappings.
   * @param options Shared or private mappings, page size.
   * @throws {RangeError} When a range does not fit its mapping, is not page-aligned, or ranges
   *   overlap.
   */
  constructor(ranges: readonly MappedRamRange[], options: MappedGuestRamOptions = {}) {
    const pageSize = options.pageSize ?? 4096;
    if (!Number.isSafeInteger(pageSize) || pageSize < 1 || (pageSize & (pageSize - 1)) !== 0) {
      throw new RangeError(`Page size must be a power of two, got ${pageSize}`);
    }
    const hosts = ranges.map((r) => {
      const offset = r.offset ?? 0;
      const size = r.size ?? r.mapping.length - offset;
      if (
        !Number.isSafeInteger(r.base) || !Number.isSafeInteger(offset) ||
        !Number.isSafeInteger(size) || r.base < 0 || offset < 0 || size <= 0 ||
        offset + size > r.mapping.length || r.base % pageSize !== 0 ||
        offset % pageSize !== 0 || size % pageSize !== 0
      ) {
        throw new RangeError(`RAM range at 0x${r.base.toString(16)} does not fit its mapping`);
      }
      return { base: r.base, end: r.base + size, address: r.mapping.address + BigInt(offset) };
    }).sort((a, b) => a.base - b.base);
    for (let i = 1; i < hosts.length; i++) {
      if (hosts[i].base < hosts[i - 1].end) throw new RangeError("RAM ranges overlap");
    }
    this.#hosts = hosts;
    this.ranges = hosts.map((h) => Object.freeze({ base: h.base, size: h.end - h.base }));
    this.pageSize = pageSize;
    this.#advice = options.shared ? MADV_REMOVE : MADV_DONTNEED;
  }

  /**
   * Release the host pages behind a range of RAM (`madvise`).
   * @param addr Guest-physical address, page-aligned.
   * @param len Length, a positive multiple of the page size.
   * @throws {RangeError} When the range is not page-aligned or not inside one RAM range.
   */
  discard(addr: number, len: number): void {
    const ps = this.pageSize;
    if (
      !Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len <= 0 ||
      addr % ps !== 0 || len % ps !== 0
    ) {
      throw new RangeError(`Cannot discard 0x${addr.toString(16)} (+${len}): not page-aligned`);
    }
    for (const h of this.#hosts) {
      if (addr >= h.base && addr + len <= h.end) {
        madvise(h.address + BigInt(addr - h.base), len, this.#advice);
        return;
      }
    }
    throw new RangeError(`Cannot discard 0x${addr.toString(16)} (+${len}): not inside guest RAM`);
  }
}
