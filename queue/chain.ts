/**
 * A validated descriptor chain and the cursors that stream across its buffers.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import { QueueError } from "./error.ts";
import { CHAIN_TOKEN } from "./_chain_token.ts";

/** What a queue's `pop()` found: the validated segments of one chain. */
export interface DescriptorChainParts {
  /** Guest memory holding the buffers. */
  memory: GuestMemory;
  /** Head descriptor index. */
  head: number;
  /**
   * The segments, readable ones first, as `[addr0, len0, addr1, len1, …]`: the chain keeps
   * this array (one allocation per chain, none per descriptor).
   */
  segments: number[];
  /** How many segments are device-readable. */
  readableCount: number;
  /** Bytes in device-readable segments. */
  readableBytes: number;
  /** Bytes in device-writable segments. */
  writableBytes: number;
  /** Descriptors followed, indirect ones included. */
  descriptorCount: number;
}

// The cursors' way to a chain's segments, which nothing outside this module sees.
let segmentsOf: (chain: DescriptorChain) => readonly number[];

/**
 * One descriptor chain taken off a virtqueue, already validated: every buffer
 * lies inside guest memory, device-readable buffers come before
 * device-writable ones (virtio 1.2 §2.7.4.2), indirect tables are flattened.
 *
 * The chain is held as *segments*: each non-empty buffer cut where guest
 * memory regions meet. A buffer inside one region is one segment; a buffer
 * that runs on into adjacent regions (a frontend may describe guest RAM as
 * several) is one segment per region, so every segment can be viewed without
 * a copy. `descriptorCount` still counts descriptors.
 *
 * Read the driver's request with {@linkcode DescriptorChain.reader} and write the
 * reply with {@linkcode DescriptorChain.writer}; neither shows segment boundaries.
 */
export class DescriptorChain {
  /** Index of the head descriptor: the id to hand back in the used ring. */
  readonly head: number;
  /** The guest memory the buffers live in. */
  readonly memory: GuestMemory;
  readonly #segments: readonly number[];
  readonly #readableCount: number;
  readonly #readableBytes: number;
  readonly #writableBytes: number;
  readonly #descriptorCount: number;
  #reader: ChainReader | undefined;
  #writer: ChainWriter | undefined;

  static {
    segmentsOf = (chain) => chain.#segments;
  }

  /**
   * Only a queue's `pop()` makes chains, once it has validated every descriptor: the token
   * is private to the queue layer, so a chain is valid by construction.
   * @param token The queue layer's private token.
   * @param parts What `pop()` found.
   * @throws {TypeError} When called with any other token.
   */
  constructor(token: symbol, parts: DescriptorChainParts) {
    if (token !== CHAIN_TOKEN) {
      throw new TypeError("A DescriptorChain is made by a queue's pop(), which validates it");
    }
    this.memory = parts.memory;
    this.head = parts.head;
    this.#segments = parts.segments;
    this.#readableCount = parts.readableCount;
    this.#readableBytes = parts.readableBytes;
    this.#writableBytes = parts.writableBytes;
    this.#descriptorCount = parts.descriptorCount;
  }

  /** Number of device-readable segments; they come first. */
  get readableCount(): number {
    return this.#readableCount;
  }

  /** Total bytes in device-readable segments. */
  get readableBytes(): number {
    return this.#readableBytes;
  }

  /** Total bytes in device-writable segments. */
  get writableBytes(): number {
    return this.#writableBytes;
  }

  /** Number of descriptors followed, including indirect ones. */
  get descriptorCount(): number {
    return this.#descriptorCount;
  }

  /**
   * Guest addresses of the segments, readable ones first; each segment lies in one region.
   * A new array on every call.
   */
  get addrs(): number[] {
    const s = this.#segments;
    const out: number[] = [];
    for (let i = 0; i < s.length; i += 2) out.push(s[i]);
    return out;
  }

  /** Lengths of the segments, in the order of `addrs`. A new array on every call. */
  get lens(): number[] {
    const s = this.#segments;
    const out: number[] = [];
    for (let i = 1; i < s.length; i += 2) out.push(s[i]);
    return out;
  }

  /** Number of segments (non-empty buffers, cut at region boundaries). */
  get length(): number {
    return this.#segments.length >> 1;
  }

  /** Whether segment `i` is device-writable. */
  isWritable(i: number): boolean {
    return i >= this.readableCount;
  }

  /** Cursor over the device-readable part; created on first use. */
  get reader(): ChainReader {
    return this.#reader ??= new ChainReader(this, 0, this.#readableCount, this.#readableBytes);
  }

  /** Cursor over the device-writable part; created on first use. */
  get writer(): ChainWriter {
    return this.#writer ??= new ChainWriter(
      this,
      this.#readableCount,
      this.#segments.length >> 1,
      this.#writableBytes,
    );
  }
}

const scratch = new Uint8Array(8);
// Copies of at most this many bytes from or into one segment go byte by byte.
const SMALL_COPY = 64;
const scratchView = new DataView(scratch.buffer);

/** State shared by the two cursors: a position over a run of segments. */
export abstract class ChainCursor {
  /** The chain walked. */
  protected readonly chain: DescriptorChain;
  /** The chain's segments, `[addr0, len0, addr1, len1, …]`. */
  protected readonly segments: readonly number[];
  /** Current segment index. */
  protected seg: number;
  /** Offset inside the current segment. */
  protected segOff = 0;
  /** One past the last segment of this part. */
  protected readonly endSeg: number;
  /** Bytes this cursor has moved over so far. */
  consumed = 0;
  readonly #total: number;

  /**
   * A cursor over segments `[start, end)` of `chain`, `total` bytes long.
   * @param chain The chain.
   * @param start First segment.
   * @param end One past the last segment.
   * @param total Bytes in those segments.
   */
  constructor(chain: DescriptorChain, start: number, end: number, total: number) {
    this.chain = chain;
    this.segments = segmentsOf(chain);
    this.seg = start;
    this.endSeg = end;
    this.#total = total;
  }

  /** Bytes left before the end of this part of the chain. */
  get remaining(): number {
    return this.#total - this.consumed;
  }

  /**
   * Zero-copy views of the next `n` bytes, one per segment touched (so a
   * buffer crossing into an adjacent region gives one view per region); the
   * cursor advances past them. The views alias guest memory.
   * @param n Number of bytes; must not exceed `remaining`.
   * @param out Array the views are pushed to.
   * @returns `out`.
   * @throws {QueueError} `ShortBuffer` when fewer than `n` bytes remain.
   */
  views(n: number, out: Uint8Array[] = []): Uint8Array[] {
    this.need(n);
    let left = n;
    const segs = this.segments;
    while (left > 0) {
      const len = segs[2 * this.seg + 1];
      const take = Math.min(left, len - this.segOff);
      out.push(this.chain.memory.slice(segs[2 * this.seg] + this.segOff, take));
      this.advance(take, len);
      left -= take;
    }
    return out;
  }

  /**
   * Move forward `n` bytes without touching them.
   * @param n Number of bytes.
   * @throws {QueueError} `ShortBuffer` when fewer than `n` bytes remain.
   */
  skip(n: number): void {
    this.need(n);
    let left = n;
    const segs = this.segments;
    while (left > 0) {
      const len = segs[2 * this.seg + 1];
      const take = Math.min(left, len - this.segOff);
      this.advance(take, len);
      left -= take;
    }
  }

  /**
   * Check that `n` bytes remain.
   * @param n Bytes needed.
   * @throws {QueueError} `ShortBuffer` when fewer remain.
   */
  protected need(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0 || n > this.remaining) {
      throw new QueueError(
        "ShortBuffer",
        `needed ${n} bytes, ${this.remaining} left in chain ${this.chain.head}`,
        { head: this.chain.head },
      );
    }
  }

  /**
   * Move forward inside the current segment.
   * @param take Bytes moved over.
   * @param segLen Length of the current segment.
   */
  protected advance(take: number, segLen: number): void {
    this.segOff += take;
    this.consumed += take;
    if (this.segOff === segLen) {
      this.seg++;
      this.segOff = 0;
    }
  }

  /**
   * When the next `n` bytes lie in the current segment: move past them and return their guest
   * address (a small value is read or written there in place, with no view made). Otherwise
   * -1, and nothing moves.
   * @param n Bytes (at most 8).
   * @returns The guest address, or -1.
   */
  protected takeInSegment(n: number): number {
    const seg = this.seg;
    if (seg >= this.endSeg) return -1;
    const len = this.segments[2 * seg + 1];
    const off = this.segOff;
    if (off + n > len) return -1;
    const addr = this.segments[2 * seg] + off;
    this.advance(n, len);
    return addr;
  }

  /**
   * Copy between `buf` and the chain.
   * @param buf Host bytes.
   * @param toGuest Direction: into the chain when true.
   * @returns Bytes copied.
   */
  protected copy(buf: Uint8Array, toGuest: boolean): number {
    const n = Math.min(buf.length, this.remaining);
    let done = 0;
    const mem = this.chain.memory;
    const segs = this.segments;
    while (done < n) {
      const len = segs[2 * this.seg + 1];
      const take = Math.min(n - done, len - this.segOff);
      const addr = segs[2 * this.seg] + this.segOff;
      // A few bytes (a request header, a status) are copied byte by byte: making two views to
      // copy them costs more than the copy.
      const region = take <= SMALL_COPY ? mem.findRegion(addr) : undefined;
      const at = region === undefined ? -1 : addr - region.base;
      if (region !== undefined && at <= 0x7fffffff - take) {
        const bytes = region.bytes;
        const o = at | 0;
        if (toGuest) { for (let i = 0; i < take; i++) bytes[o + i] = buf[done + i]; }
        else for (let i = 0; i < take; i++) buf[done + i] = bytes[o + i];
      } else {
        const view = mem.slice(addr, take);
        if (toGuest) view.set(buf.subarray(done, done + take));
        else buf.set(view, done);
      }
      this.advance(take, len);
      done += take;
    }
    return n;
  }
}

/** Reads the device-readable part of a chain as one byte stream. */
export class ChainReader extends ChainCursor {
  /**
   * Copy up to `dst.length` bytes out of the chain.
   * @param dst Destination.
   * @returns Bytes copied (less than `dst.length` only at the end of the chain).
   */
  read(dst: Uint8Array): number {
    return this.copy(dst, false);
  }

  /**
   * Copy exactly `dst.length` bytes out of the chain.
   * @param dst Destination.
   * @throws {QueueError} `ShortBuffer` when fewer bytes remain (nothing is consumed).
   */
  readExact(dst: Uint8Array): void {
    this.need(dst.length);
    this.copy(dst, false);
  }

  /**
   * Read one byte.
   * @returns The byte.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  readU8(): number {
    const addr = this.takeInSegment(1);
    if (addr >= 0) return this.chain.memory.readU8(addr);
    this.readExact(scratch.subarray(0, 1));
    return scratch[0];
  }

  /**
   * Read a little-endian 16-bit value.
   * @returns The value.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  readU16(): number {
    const addr = this.takeInSegment(2);
    if (addr >= 0) return this.chain.memory.readU16(addr);
    this.readExact(scratch.subarray(0, 2));
    return scratchView.getUint16(0, true);
  }

  /**
   * Read a little-endian 32-bit value.
   * @returns The value.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  readU32(): number {
    const addr = this.takeInSegment(4);
    if (addr >= 0) return this.chain.memory.readU32(addr);
    this.readExact(scratch.subarray(0, 4));
    return scratchView.getUint32(0, true);
  }

  /**
   * Read a little-endian 64-bit value.
   * @returns The value.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  readU64(): bigint {
    const addr = this.takeInSegment(8);
    if (addr >= 0) return this.chain.memory.readU64(addr);
    this.readExact(scratch);
    return scratchView.getBigUint64(0, true);
  }
}

/** Writes the device-writable part of a chain as one byte stream. */
export class ChainWriter extends ChainCursor {
  /** Bytes written so far: the used length to report. */
  get written(): number {
    return this.consumed;
  }

  /**
   * Copy up to `src.length` bytes into the chain.
   * @param src Source bytes.
   * @returns Bytes copied (less than `src.length` only at the end of the chain).
   */
  write(src: Uint8Array): number {
    return this.copy(src, true);
  }

  /**
   * Copy exactly `src.length` bytes into the chain.
   * @param src Source bytes.
   * @throws {QueueError} `ShortBuffer` when less room remains (nothing is written).
   */
  writeExact(src: Uint8Array): void {
    this.need(src.length);
    this.copy(src, true);
  }

  /**
   * Write one byte.
   * @param value The byte.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  writeU8(value: number): void {
    const addr = this.takeInSegment(1);
    if (addr >= 0) return this.chain.memory.writeU8(addr, value);
    scratch[0] = value;
    this.writeExact(scratch.subarray(0, 1));
  }

  /**
   * Write a little-endian 16-bit value.
   * @param value The value.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  writeU16(value: number): void {
    const addr = this.takeInSegment(2);
    if (addr >= 0) return this.chain.memory.writeU16(addr, value);
    scratchView.setUint16(0, value, true);
    this.writeExact(scratch.subarray(0, 2));
  }

  /**
   * Write a little-endian 32-bit value.
   * @param value The value.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  writeU32(value: number): void {
    const addr = this.takeInSegment(4);
    if (addr >= 0) return this.chain.memory.writeU32(addr, value);
    scratchView.setUint32(0, value, true);
    this.writeExact(scratch.subarray(0, 4));
  }

  /**
   * Write a little-endian 64-bit value.
   * @param value The value.
   * @throws {QueueError} `ShortBuffer` at the end of the chain.
   */
  writeU64(value: bigint): void {
    const addr = this.takeInSegment(8);
    if (addr >= 0) return this.chain.memory.writeU64(addr, value);
    scratchView.setBigUint64(0, BigInt.asUintN(64, value), true);
    this.writeExact(scratch);
  }

  /**
   * Fill the next `n` bytes with `value`.
   * @param n Number of bytes.
   * @param value Byte value (default 0).
   * @throws {QueueError} `ShortBuffer` when less room remains.
   */
  fill(n: number, value = 0): void {
    for (const v of this.views(n)) v.fill(value);
  }
}
