/**
 * What both ring formats share when they take a chain apart: reading 16-byte descriptors from
 * a table that may run across adjacent guest memory regions, and collecting a chain's buffers
 * with the checks every format applies (bounds, order, total length, segment count). Private
 * to the queue layer.
 *
 * @module
 */

import { type GuestMemory, GuestRegion } from "../memory/guest_memory.ts";
import { DescriptorChain, type DescriptorChainParts } from "./chain.ts";
import { CHAIN_TOKEN } from "./_chain_token.ts";
import type { QueueErrorCode } from "./error.ts";

/** Bytes per descriptor, in both formats. */
export const DESCRIPTOR_BYTES = 16;
/** Most segments one chain may be cut into (a memory table of many tiny regions). */
export const CHAIN_SEGMENT_LIMIT = 1 << 17;

const scratch = new Uint8Array(DESCRIPTOR_BYTES);
// The builder's region before its first lookup (never consulted: no memory goes with it).
const NO_REGION = new GuestRegion({ base: 0, buffer: new ArrayBuffer(8) });
const scratchView = new DataView(scratch.buffer);

/**
 * An indirect table of descriptors in guest memory: ordinary driver memory, which may run on
 * into an adjacent region (virtio 1.2 §2.7.5.3 and §2.8.16 put no region rule on it). `at(i)`
 * points `view`/`offset` at entry `i`; an entry that itself straddles a boundary is copied into
 * a scratch buffer. `offset` is always a small integer (see memory/_int.ts): a table past the
 * first 2 GiB of a region is read through a view of its own.
 */
export class DescriptorTable {
  /** The view holding the current entry. */
  view: DataView = scratchView;
  /** Offset of the current entry in `view`. */
  offset = 0;
  #mem!: GuestMemory;
  #table: DataView | undefined; // the table's view when it lies in one region
  #base = 0; // offset of the table in `#table`, or its guest address when it spans regions

  /**
   * Read from a table of `len` bytes at `addr`, in one region or across adjacent ones.
   * @param mem Guest memory.
   * @param addr Guest address.
   * @param len Length in bytes.
   * @returns False when a byte of the table is not backed.
   */
  span(mem: GuestMemory, addr: number, len: number): boolean {
    this.#mem = mem;
    const region = mem.regionOf(addr, len);
    if (region !== undefined) {
      const offset = addr - region.base;
      if (offset + len <= 0x7fffffff) {
        this.#table = region.view;
        this.#base = offset | 0;
      } else {
        const bytes = region.bytes;
        this.#table = new DataView(bytes.buffer, bytes.byteOffset + offset, len);
        this.#base = 0;
      }
      return true;
    }
    if (!mem.checkSpan(addr, len)) return false;
    this.#table = undefined;
    this.#base = addr;
    return true;
  }

  /**
   * Point at entry `i`.
   * @param i Entry index (the caller checked it against the table size).
   */
  at(i: number): void {
    if (this.#table !== undefined) {
      this.view = this.#table;
      this.offset = this.#base + DESCRIPTOR_BYTES * i;
      return;
    }
    const addr = this.#base + DESCRIPTOR_BYTES * i;
    const region = this.#mem.regionOf(addr, DESCRIPTOR_BYTES);
    const offset = region === undefined ? -1 : addr - region.base;
    if (region !== undefined && offset <= 0x7fffffff - DESCRIPTOR_BYTES) {
      this.view = region.view;
      this.offset = offset | 0;
    } else {
      this.#mem.read(addr, scratch);
      this.view = scratchView;
      this.offset = 0;
    }
  }
}

/**
 * Collects the buffers of one chain, cutting each where guest memory regions meet, with the
 * rules every ring format shares: a buffer lies in backed memory (never across a hole),
 * device-readable buffers come before device-writable ones (virtio 1.2 §2.7.4.2, §2.8.17),
 * the total stays below 2^32 and the segment count below {@linkcode CHAIN_SEGMENT_LIMIT}.
 */
export class ChainBuilder {
  // Scratch segment list `[addr0, len0, …]`, reused from chain to chain: `finish` copies it
  // out at its exact length, so a chain costs one array and nothing per descriptor.
  readonly #segs: number[] = [];
  #count = 0; // segments
  #readableCount = 0;
  #readableBytes = 0;
  #writableBytes = 0;
  #sawWritable = false;
  // The region the last buffer started in, and the memory it belongs to (a GuestMemory never
  // changes its regions, so the pair stays valid).
  #mem: GuestMemory | undefined;
  #region: GuestRegion = NO_REGION;
  /** Descriptors followed so far, indirect ones included. */
  descriptorCount = 0;
  // What `finish` hands to the chain's constructor, which copies it: reused too.
  readonly #parts: DescriptorChainParts = {
    memory: undefined as unknown as GuestMemory,
    head: 0,
    segments: [],
    readableCount: 0,
    readableBytes: 0,
    writableBytes: 0,
    descriptorCount: 0,
  };

  /** Start a new chain. */
  start(): void {
    if (this.#segs.length > SCRATCH_KEEP) {
      // A huge chain went by (a hostile memory table cut it into many segments): let it go.
      this.#segs.length = 0;
    }
    this.#count = 0;
    this.#readableCount = 0;
    this.#readableBytes = 0;
    this.#writableBytes = 0;
    this.#sawWritable = false;
    this.descriptorCount = 0;
  }

  /**
   * Add buffer `[addr, addr + len)`.
   * @param mem Guest memory.
   * @param addr Guest address (a safe integer).
   * @param len Length (0 adds nothing).
   * @param writable Whether the device may write it.
   * @returns The broken rule, or `undefined`.
   */
  add(mem: GuestMemory, addr: number, len: number, writable: boolean): QueueErrorCode | undefined {
    if (writable) this.#sawWritable = true;
    else if (this.#sawWritable) return "ReadableAfterWritable";
    if (len === 0) return undefined;
    let pieces = 1;
    const n = this.#count;
    const r = this.#region;
    if (mem === this.#mem && addr >= r.base && addr + len <= r.end && n < CHAIN_SEGMENT_LIMIT) {
      // Inside the region the previous buffer was found in: one segment, no search.
      const segs = this.#segs;
      segs[2 * n] = addr;
      segs[2 * n + 1] = len;
      this.#count = n + 1;
    } else {
      pieces = this.#pieces(mem, addr, len);
      if (pieces === 0) return "DescriptorOutOfBounds";
      if (pieces < 0) return "TooManySegments";
    }
    // Both totals are below 2^32 before this buffer and `len` is below 2^32: no precision loss.
    if (this.#readableBytes + this.#writableBytes + len > 0xffffffff) return "ChainTooLarge";
    if (writable) this.#writableBytes += len;
    else {
      this.#readableCount += pieces;
      this.#readableBytes += len;
    }
    return undefined;
  }

  // One segment per region the buffer lies in: 0 when a byte is not backed, -1 past the limit.
  #pieces(mem: GuestMemory, addr: number, len: number): number {
    let i = mem.findRegionIndex(addr);
    if (i < 0) return 0;
    const regions = mem.regions;
    let r = regions[i];
    this.#mem = mem;
    this.#region = r;
    const segs = this.#segs;
    let n = this.#count;
    if (n >= CHAIN_SEGMENT_LIMIT) return -1;
    if (addr + len <= r.end) {
      segs[2 * n] = addr;
      segs[2 * n + 1] = len;
      this.#count = n + 1;
      return 1;
    }
    // Check the whole span first, so a refused buffer adds nothing.
    const end = addr + len;
    let a = r.end;
    let pieces = 1;
    for (let j = i + 1; a < end; j++) {
      const rj = regions[j];
      if (rj === undefined || rj.base !== a) return 0;
      a = rj.end;
      pieces++;
    }
    if (n + pieces > CHAIN_SEGMENT_LIMIT) return -1;
    a = addr;
    while (a < end) {
      const k = Math.min(end, r.end) - a;
      segs[2 * n] = a;
      segs[2 * n + 1] = k;
      n++;
      a += k;
      r = regions[++i];
    }
    this.#count = n;
    return pieces;
  }

  /**
   * The chain, valid by construction.
   * @param mem Guest memory.
   * @param head The id the driver gets back in the used ring.
   * @returns The chain.
   */
  finish(mem: GuestMemory, head: number): DescriptorChain {
    const n = this.#count;
    const parts = this.#parts;
    parts.memory = mem;
    parts.head = head;
    const segs = this.#segs;
    parts.segments = n === 1 ? [segs[0], segs[1]] : segs.slice(0, 2 * n);
    parts.readableCount = this.#readableCount;
    parts.readableBytes = this.#readableBytes;
    parts.writableBytes = this.#writableBytes;
    parts.descriptorCount = this.descriptorCount;
    const chain = new DescriptorChain(CHAIN_TOKEN, parts);
    parts.segments = EMPTY;
    return chain;
  }
}

const EMPTY: number[] = [];
// Scratch entries kept between chains.
const SCRATCH_KEEP = 2048;

/**
 * The message of a broken buffer rule, as both ring formats report it.
 * @param code The rule.
 * @param idx Descriptor index.
 * @param addr Buffer address.
 * @param len Buffer length.
 * @returns The message.
 */
export function chainProblem(code: QueueErrorCode, idx: number, addr: number, len: number): string {
  switch (code) {
    case "ReadableAfterWritable":
      return `descriptor ${idx}`;
    case "TooManySegments":
      return `more than ${CHAIN_SEGMENT_LIMIT} segments`;
    case "ChainTooLarge":
      return "total length above 2^32 - 1";
    default:
      return `buffer at 0x${addr.toString(16)} (+${len})`;
  }
}
