/**
 * The driver side of a split virtqueue, built in the same guest memory the
 * device reads: lay out rings, add chains of readable and writable buffers,
 * kick, collect used entries, honour VIRTIO_F_EVENT_IDX. Every device test in
 * this library drives devices through it, and it is exported for yours.
 *
 * @module
 */

import type { GuestMemory, GuestRegion } from "../memory/guest_memory.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import {
  availRingSize,
  DESCRIPTOR_SIZE,
  usedRingSize,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../queue/split.ts";

/**
 * One buffer of a chain the driver adds. `at` places it at that guest address
 * (for buffers that must straddle a region boundary, for instance) instead of
 * allocating it from the buffer area.
 */
export type DriverBuffer =
  /** A device-readable buffer holding these bytes. */
  | { readable: Uint8Array; at?: number }
  /** A device-writable buffer of this many bytes. */
  | { writable: number; at?: number };

/** A raw descriptor as the driver writes it into a table. */
export interface RawDescriptor {
  /** Guest-physical buffer address. */
  addr: number | bigint;
  /** Buffer length. */
  len: number;
  /** `VIRTQ_DESC_F_*` flags. */
  flags: number;
  /** Next descriptor index. */
  next: number;
}

/**
 * Features the driver harnesses accept only when asked (`features` naming them): they change
 * what the driver itself must do — the packed ring layout, in-order batches of used entries,
 * notifications that carry data, per-queue reset.
 */
export const DRIVER_OPT_IN_FEATURES: bigint = (1n << 34n) | (1n << 35n) | (1n << 38n) |
  (1n << 40n);

/** An entry the device put in the used ring. */
export interface UsedEntry {
  /** Head index of the chain. */
  id: number;
  /** Bytes the device says it wrote. */
  len: number;
  /** The bytes of the chain's writable buffers, concatenated (all of them, not only `len`). */
  written: Uint8Array;
}

/** Options of {@linkcode DriverQueue}. */
export interface DriverQueueOptions {
  /** Queue size: a power of two (default 256). */
  size?: number;
  /** Guest address where the rings are laid out (default 0x1000). */
  ringBase?: number;
  /** Alignment of the used ring: 4 for modern (default), 4096 for legacy layouts. */
  usedAlign?: number;
  /** First guest address of the area buffers are allocated from (default: after the rings). */
  bufferBase?: number;
  /** End of the buffer area (default: end of the region holding `bufferBase`). */
  bufferEnd?: number;
  /** Leave random gaps between buffers so a device cannot assume contiguity (default true). */
  gaps?: boolean;
  /** Driver negotiated VIRTIO_F_EVENT_IDX (default false). */
  eventIdx?: boolean;
  /**
   * Driver negotiated VIRTIO_F_IN_ORDER (default false): one used entry may stand for a batch
   * of buffers, those before it in order used completely.
   */
  inOrder?: boolean;
}

interface Outstanding {
  descs: number[];
  writable: { addr: number; len: number }[];
}

/**
 * A split virtqueue, driver side.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { SplitQueue } from "../queue/split.ts";
 * import { DriverQueue } from "./queue_driver.ts";
 * const mem = GuestMemory.create(1 << 20);
 * const driver = new DriverQueue(mem, { size: 16 });
 * const queue = new SplitQueue(16);
 * driver.program(queue);
 * driver.addChain([{ readable: new Uint8Array([1, 2, 3]) }, { writable: 4 }]);
 * const chain = queue.pop(mem)!;
 * chain.writer.write(new Uint8Array([9, 9]));
 * queue.addUsed(mem, chain.head, 2);
 * const used = driver.takeUsed()!;
 * assert.equal(used.len, 2);
 * assert.equal(used.written[0], 9);
 * ```
 */
export class DriverQueue {
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** Queue size. */
  readonly size: number;
  /** Guest address of the descriptor table. */
  readonly descTable: number;
  /** Guest address of the available ring. */
  readonly availRing: number;
  /** Guest address of the used ring. */
  readonly usedRing: number;
  /** Whether the driver uses EVENT_IDX. */
  eventIdx: boolean;
  /** With EVENT_IDX, move `used_event` to the consumed position in `takeUsed` (default true). */
  autoUsedEvent = true;
  /** Whether the driver negotiated VIRTIO_F_IN_ORDER. */
  inOrder: boolean;
  // In-order: heads in the order they were made available, and entries of a batch not taken.
  #order: number[] = [];
  #ready: UsedEntry[] = [];
  readonly #bufferBase: number;
  readonly #bufferEnd: number;
  readonly #gaps: boolean;
  #next: number;
  #free: number[] = [];
  #availIdx = 0;
  #lastKickIdx = 0;
  #lastUsed = 0;
  #outstanding = new Map<number, Outstanding>();
  #seed = 0x2545f491;
  readonly #availView: DataView;
  readonly #availU16: Uint16Array; // [0] flags, [1] idx, [2 + i] ring[i]
  readonly #descBytes = new Uint8Array(DESCRIPTOR_SIZE);
  readonly #descView = new DataView(this.#descBytes.buffer);

  /**
   * Lay out an empty queue in guest memory.
   * @param memory Guest memory.
   * @param options Size, placement and driver features.
   * @throws {RangeError} When the rings or buffer area do not fit.
   */
  constructor(memory: GuestMemory, options: DriverQueueOptions = {}) {
    const size = options.size ?? 256;
    if (size <= 0 || (size & (size - 1)) !== 0 || size > 32768) {
      throw new RangeError(`Queue size must be a power of two up to 32768, got ${size}`);
    }
    this.memory = memory;
    this.size = size;
    const base = options.ringBase ?? 0x1000;
    const align = options.usedAlign ?? 4;
    this.descTable = base;
    this.availRing = base + DESCRIPTOR_SIZE * size;
    this.usedRing = Math.ceil((this.availRing + availRingSize(size)) / align) * align;
    const ringsEnd = this.usedRing + usedRingSize(size);
    if (!memory.checkRange(base, ringsEnd - base)) {
      throw new RangeError("Rings do not fit in guest memory");
    }
    memory.fill(base, ringsEnd - base, 0);
    // The available ring, viewed on its own: small offsets however far into its region it is.
    const rings = memory.findRegion(this.availRing)!;
    const at = rings.bytes.byteOffset + (this.availRing - rings.base);
    this.#availView = new DataView(rings.bytes.buffer, at, availRingSize(size));
    this.#availU16 = new Uint16Array(rings.bytes.buffer, at, availRingSize(size) >> 1);
    this.#bufferBase = options.bufferBase ?? Math.ceil(ringsEnd / 64) * 64;
    const region = memory.findRegion(this.#bufferBase);
    if (region === undefined) throw new RangeError("Buffer area is outside guest memory");
    this.#bufferEnd = options.bufferEnd ?? region.end;
    this.#next = this.#bufferBase;
    this.#gaps = options.gaps ?? true;
    this.eventIdx = options.eventIdx ?? false;
    this.inOrder = options.inOrder ?? false;
    for (let i = size - 1; i >= 0; i--) this.#free.push(i);
  }

  /**
   * Program a device-side queue with this layout, as a driver does through
   * the transport registers, and mark it ready.
   * @param queue The device's queue.
   */
  program(queue: Virtqueue): void {
    queue.size = this.size;
    queue.descTable = this.descTable;
    queue.availRing = this.availRing;
    queue.usedRing = this.usedRing;
    queue.eventIdx = this.eventIdx;
    queue.ready = true;
  }

  /** Number of free descriptors in the table. */
  get freeDescriptors(): number {
    return this.#free.length;
  }

  /** The driver's `avail.idx`. */
  get availIdx(): number {
    return this.#availIdx;
  }

  #random(n: number): number {
    // xorshift32: deterministic gaps, no dependency on Math.random.
    let x = this.#seed;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#seed = x >>> 0;
    return this.#seed % n;
  }

  /**
   * Reserve `len` bytes of buffer space (wrapping to the start of the area
   * when its end is reached; the caller keeps at most an area's worth live).
   * @param len Bytes.
   * @param align Alignment (default 8).
   * @returns Guest address.
   * @throws {RangeError} When the area is too small for `len`.
   */
  alloc(len: number, align = 8): number {
    const gap = this.#gaps ? this.#random(8) * 8 : 0;
    let addr = Math.ceil((this.#next + gap) / align) * align;
    if (addr + len > this.#bufferEnd) {
      addr = Math.ceil(this.#bufferBase / align) * align;
      if (addr + len > this.#bufferEnd) throw new RangeError(`No room for a ${len}-byte buffer`);
    }
    this.#next = addr + len;
    return addr;
  }

  /**
   * Write one descriptor into the table (no validation: tests use this to be hostile).
   * @param index Descriptor index.
   * @param desc The descriptor.
   * @param table Guest address of the table (default: the queue's own).
   */
  writeDescriptor(index: number, desc: RawDescriptor, table = this.descTable): void {
    // Built aside and copied in one write, so an indirect table may straddle two regions.
    const v = this.#descView;
    v.setBigUint64(0, BigInt.asUintN(64, BigInt(desc.addr)), true);
    v.setUint32(8, desc.len, true);
    v.setUint16(12, desc.flags, true);
    v.setUint16(14, desc.next, true);
    this.memory.write(table + DESCRIPTOR_SIZE * index, this.#descBytes);
  }

  /**
   * Add a chain of buffers and make it available; readable buffers are filled
   * with their bytes. The descriptors come from the free list (or one
   * descriptor pointing at an indirect table, when `indirect` is set).
   * @param buffers Readable buffers first, then writable ones (not enforced).
   * @param options `indirect` to put the chain in an indirect table (at `indirectAt` when given,
   *   a 16-aligned guest address); `publish: false` to only build it.
   * @returns The head index.
   * @throws {RangeError} When there are not enough free descriptors.
   */
  addChain(
    buffers: DriverBuffer[],
    options: { indirect?: boolean; indirectAt?: number; publish?: boolean } = {},
  ): number {
    const indirect = options.indirect ?? (options.indirectAt !== undefined);
    const needed = indirect ? 1 : buffers.length;
    if (buffers.length === 0 || needed > this.#free.length) {
      throw new RangeError(`Chain of ${buffers.length} does not fit (${this.#free.length} free)`);
    }
    const descs: number[] = [];
    const writable: { addr: number; len: number }[] = [];
    const placed = buffers.map((b) => {
      if ("readable" in b) {
        const addr = b.at ?? this.alloc(Math.max(b.readable.length, 1));
        this.memory.write(addr, b.readable);
        return { addr, len: b.readable.length, flags: 0 };
      }
      const addr = b.at ?? this.alloc(Math.max(b.writable, 1));
      writable.push({ addr, len: b.writable });
      return { addr, len: b.writable, flags: VIRTQ_DESC_F_WRITE };
    });
    let head: number;
    if (indirect) {
      const table = options.indirectAt ?? this.alloc(DESCRIPTOR_SIZE * placed.length, 16);
      placed.forEach((p, i) => {
        const last = i === placed.length - 1;
        this.writeDescriptor(i, {
          addr: p.addr,
          len: p.len,
          flags: p.flags | (last ? 0 : VIRTQ_DESC_F_NEXT),
          next: last ? 0 : i + 1,
        }, table);
      });
      head = this.#free.pop()!;
      descs.push(head);
      this.writeDescriptor(head, {
        addr: table,
        len: DESCRIPTOR_SIZE * placed.length,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      });
    } else {
      for (let i = 0; i < placed.length; i++) descs.push(this.#free.pop()!);
      placed.forEach((p, i) => {
        const last = i === placed.length - 1;
        this.writeDescriptor(descs[i], {
          addr: p.addr,
          len: p.len,
          flags: p.flags | (last ? 0 : VIRTQ_DESC_F_NEXT),
          next: last ? 0 : descs[i + 1],
        });
      });
      head = descs[0];
    }
    this.#outstanding.set(head, { descs, writable });
    if (options.publish ?? true) this.publish(head);
    return head;
  }

  /**
   * Put a head in the available ring and move `avail.idx` (with release
   * ordering, as a driver's write barrier would).
   * @param head Descriptor index to publish (any value: tests use this to be hostile).
   */
  publish(head: number): void {
    const slot = this.#availIdx & (this.size - 1);
    this.#availView.setUint16(4 + 2 * slot, head, true);
    if (this.inOrder) this.#order.push(head);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    Atomics.store(this.#availU16, 1, this.#availIdx);
  }

  /**
   * Put several heads in the available ring, then move `avail.idx` once past all of them (a
   * driver adding a burst of buffers before it exposes them, as DPDK's virtio driver does).
   * @param heads Descriptor indexes to publish, in order (at most the queue size).
   * @throws {RangeError} When there are more heads than the ring has entries.
   */
  publishMany(heads: readonly number[]): void {
    if (heads.length > this.size) {
      throw new RangeError(`${heads.length} heads do not fit a ring of ${this.size}`);
    }
    const view = this.#availView;
    const mask = this.size - 1;
    let idx = this.#availIdx;
    for (let i = 0; i < heads.length; i++) {
      view.setUint16(4 + 2 * (idx & mask), heads[i], true);
      idx = (idx + 1) & 0xffff;
    }
    if (this.inOrder) this.#order.push(...heads);
    this.#availIdx = idx;
    Atomics.store(this.#availU16, 1, idx);
  }

  /**
   * Force `avail.idx` to a value (for hostile tests and wrap-around tests).
   * @param idx The new index.
   */
  setAvailIdx(idx: number): void {
    this.#availIdx = idx & 0xffff;
    this.#lastKickIdx = this.#availIdx;
    this.#storeU16(this.availRing + 2, this.#availIdx);
  }

  /**
   * Set where the driver expects the next used entry (used.idx) to be, for wrap-around tests.
   * @param idx The used index the driver has consumed up to.
   */
  setLastUsed(idx: number): void {
    this.#lastUsed = idx & 0xffff;
  }

  // The rings lie in one region (checked by the constructor): no allocation per access.
  #ringRegion(addr: number): GuestRegion {
    const region = this.memory.regionOf(addr, 2);
    if (region === undefined) throw new RangeError(`Ring index at 0x${addr.toString(16)}`);
    return region;
  }

  #storeU16(addr: number, value: number): void {
    const region = this.#ringRegion(addr);
    Atomics.store(region.u16, (addr - region.base) / 2, value);
  }

  #loadU16(addr: number): number {
    const region = this.#ringRegion(addr);
    return Atomics.load(region.u16, (addr - region.base) / 2);
  }

  /**
   * Whether the driver must notify the device now, per VIRTQ_USED_F_NO_NOTIFY
   * or, with EVENT_IDX, `avail_event` (virtio 1.2 §2.7.10). Records the kick.
   * @returns `true` when a notification is due.
   */
  kickNeeded(): boolean {
    const newIdx = this.#availIdx;
    const old = this.#lastKickIdx;
    this.#lastKickIdx = newIdx;
    if (newIdx === old) return false;
    if (this.eventIdx) {
      const availEvent = this.#loadU16(this.usedRing + 4 + 8 * this.size);
      return ((newIdx - availEvent - 1) & 0xffff) < ((newIdx - old) & 0xffff);
    }
    return (this.#loadU16(this.usedRing) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * Ask for no used-buffer notifications (`VIRTQ_AVAIL_F_NO_INTERRUPT`), or re-enable them.
   * @param suppress `true` to suppress.
   */
  suppressInterrupts(suppress: boolean): void {
    this.#storeU16(this.availRing, suppress ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0);
  }

  /**
   * With EVENT_IDX: ask to be notified only once `used.idx` passes `idx`.
   * @param idx The `used_event` value.
   */
  setUsedEvent(idx: number): void {
    this.#storeU16(this.availRing + 4 + 2 * this.size, idx & 0xffff);
  }

  /** The device's `used.idx`. */
  usedIdx(): number {
    return this.#loadU16(this.usedRing + 2);
  }

  /** Number of used buffers not yet taken (with IN_ORDER, batches count every buffer). */
  pendingUsed(): number {
    return this.#ready.length + ((this.usedIdx() - this.#lastUsed) & 0xffff);
  }

  /**
   * Take the next used entry, free its descriptors and return what the device wrote.
   * With EVENT_IDX the driver then re-arms `used_event` at its new position, as
   * a driver re-enabling callbacks does, unless `autoUsedEvent` is off.
   * @returns The entry, or `null` when the used ring has nothing new.
   */
  takeUsed(): UsedEntry | null {
    const entry = this.#takeOne();
    if (entry !== null && this.eventIdx && this.autoUsedEvent) this.setUsedEvent(this.#lastUsed);
    return entry;
  }

  #takeOne(): UsedEntry | null {
    if (this.inOrder) return this.#takeInOrder();
    if (this.pendingUsed() === 0) return null;
    const slot = this.#lastUsed & (this.size - 1);
    const at = this.usedRing + 4 + 8 * slot;
    const id = this.memory.readU32(at);
    const len = this.memory.readU32(at + 4);
    this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
    return this.#complete(id, len);
  }

  // virtio 1.2 §2.7.9: the entry at the next used slot names the last buffer of a batch; the
  // buffers made available before it are used completely, and the used index skips them all.
  #takeInOrder(): UsedEntry | null {
    const queued = this.#ready.shift();
    if (queued !== undefined) return queued;
    if (((this.usedIdx() - this.#lastUsed) & 0xffff) === 0) return null;
    const at = this.usedRing + 4 + 8 * (this.#lastUsed & (this.size - 1));
    const id = this.memory.readU32(at);
    const len = this.memory.readU32(at + 4);
    const batch: number[] = [];
    while (this.#order.length > 0) {
      const head = this.#order.shift()!;
      batch.push(head);
      if (head === id) break;
    }
    this.#lastUsed = (this.#lastUsed + batch.length) & 0xffff;
    for (const head of batch) {
      const out = this.#outstanding.get(head);
      const full = out === undefined ? 0 : out.writable.reduce((n, w) => n + w.len, 0);
      this.#ready.push(this.#complete(head, head === id ? len : full));
    }
    return this.#ready.shift() ?? null;
  }

  #complete(id: number, len: number): UsedEntry {
    const out = this.#outstanding.get(id);
    let written = new Uint8Array(0);
    if (out !== undefined) {
      this.#outstanding.delete(id);
      for (const d of out.descs) this.#free.push(d);
      const total = out.writable.reduce((n, w) => n + w.len, 0);
      written = new Uint8Array(total);
      let off = 0;
      for (const w of out.writable) {
        this.memory.read(w.addr, written.subarray(off, off + w.len));
        off += w.len;
      }
    }
    return { id, len, written };
  }

  /**
   * Take every pending used entry.
   * @returns The entries, oldest first.
   */
  takeAllUsed(): UsedEntry[] {
    const all: UsedEntry[] = [];
    let e: UsedEntry | null;
    while ((e = this.takeUsed()) !== null) all.push(e);
    return all;
  }
}
