/**
 * Which 4 KiB pages of guest RAM are in the balloon: one bit per page over each RAM range, so
 * a page inflated twice or deflated without having been inflated is noticed, and the count
 * of pages the host holds is exact whatever the driver claims in `actual`.
 *
 * @module
 */

import type { GuestRamRange } from "./guest_ram.ts";
import { BALLOON_PAGE_SIZE } from "./_balloon_wire.ts";

/** The balloon's pages over a set of RAM ranges. */
export class BalloonPageMap {
  readonly #bases: number[] = [];
  readonly #ends: number[] = [];
  readonly #bits: Uint8Array[] = [];
  #last = 0;
  /** Pages currently in the balloon. */
  count = 0;

  /**
   * Create it (no page in the balloon).
   * @param ranges The RAM ranges, sorted and disjoint; partial pages at their ends are left out.
   */
  constructor(ranges: readonly GuestRamRange[]) {
    for (const r of ranges) {
      const base = Math.ceil(r.base / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      const end = Math.floor((r.base + r.size) / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      if (end <= base) continue;
      this.#bases.push(base);
      this.#ends.push(end);
      this.#bits.push(new Uint8Array(Math.ceil((end - base) / BALLOON_PAGE_SIZE / 8)));
    }
  }

  /**
   * The RAM range holding the page at `addr`.
   * @param addr A page-aligned guest-physical address.
   * @returns Its index, or -1 when the page is not RAM.
   */
  rangeOf(addr: number): number {
    const i = this.#last;
    if (i < this.#bases.length && addr >= this.#bases[i] && addr < this.#ends[i]) return i;
    for (let j = 0; j < this.#bases.length; j++) {
      if (addr >= this.#bases[j] && addr < this.#ends[j]) {
        this.#last = j;
        return j;
      }
    }
    return -1;
  }

  /**
   * End of RAM range `range` (exclusive).
   * @param range A range index from `rangeOf`.
   * @returns The guest-physical end.
   */
  endOf(range: number): number {
    return this.#ends[range];
  }

  /**
   * Put a page in the balloon or take it out.
   * @param range Its range, from `rangeOf`.
   * @param addr The page's guest-physical address.
   * @param inBalloon The new state.
   * @returns Whether the state changed (false: it already was so).
   */
  mark(range: number, addr: number, inBalloon: boolean): boolean {
    const page = (addr - this.#bases[range]) / BALLOON_PAGE_SIZE;
    const bits = this.#bits[range];
    const byte = page >>> 3;
    const mask = 1 << (page & 7);
    const was = (bits[byte] & mask) !== 0;
    if (was === inBalloon) return false;
    if (inBalloon) {
      bits[byte] |= mask;
      this.count++;
    } else {
      bits[byte] &= ~mask;
      this.count--;
    }
    return true;
  }

  /** Empty the balloon (device reset). */
  clear(): void {
    for (const b of this.#bits) b.fill(0);
    this.count = 0;
  }
}
