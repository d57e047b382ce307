/**
 * The driver side of a packed virtqueue (virtio 1.2 §2.8), built in the same guest memory the
 * device reads: lay out the descriptor ring and the two event suppression structures, add
 * lists of readable and writable buffers (or one indirect table) under buffer ids, make them
 * available with the driver's wrap counter, kick, and collect used descriptors, skipping each
 * list's length as a driver does.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import {
  DESCRIPTOR_SIZE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../queue/split.ts";
import {
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
} from "../queue/packed.ts";
import type { DriverBuffer, UsedEntry } from "./queue_driver.ts";

/** A raw packed descriptor as the driver writes it. */
export interface RawPackedDescriptor {
  /** Guest-physical buffer address. */
  addr: number | bigint;
  /** Buffer length. */
  len: number;
  /** Buffer id. */
  id: number;
  /** `VIRTQ_DESC_F_*` flags, AVAIL and USED included. */
  flags: number;
}

/** Options of {@linkcode PackedDriverQueue}. */
export interface PackedDriverQueueOptions {
  /** Queue size: 1 to 32768 (default 256; no power-of-two rule). */
  size?: number;
  /** Guest address of the descriptor ring (16-aligned; default 0x1000). */
  ringBase?: number;
  /** First guest address of the buffer area (default: after the ring and the structures). */
  bufferBase?: number;
  /** End of the buffer area (default: end of the region holding `bufferBase`). */
  bufferEnd?: number;
  /** The driver negotiated VIRTIO_F_EVENT_IDX (default false). */
  eventIdx?: boolean;
  /** The driver negotiated VIRTIO_F_IN_ORDER (default false). */
  inOrder?: boolean;
}

interface InFlight {
  count: number;
  writable: { addr: number; len: number }[];
  /** Made available by `addRaw`: its id is not the driver's to hand out again. */
  raw?: boolean;
}

/**
 * A packed virtqueue, driver side.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { PackedQueue } from "../queue/packed.ts";
 * import { PackedDriverQueue } from "./packed_driver.ts";
 * const mem = GuestMemory.create(1 << 20);
 * const driver = new PackedDriverQueue(mem, { size: 8 });
 * const queue = new PackedQueue(8);
 * driver.program(queue);
 * driver.addChain([{ readable: new Uint8Array([1, 2]) }, { writable: 4 }]);
 * const chain = queue.pop(mem)!;
 * chain.writer.write(new Uint8Array([9]));
 * queue.addUsed(mem, chain.head, 1);
 * assert.equal(driver.takeUsed()?.written[0], 9);
 * ```
 */
export class PackedDriverQueue {
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** Queue size. */
  readonly size: number;
  /** Guest address of the descriptor ring. */
  readonly descTable: number;
  /** Guest address of the driver event suppression structure (driver area). */
  readonly availRing: number;
  /** Guest address of the device event suppression structure (device area). */
  readonly usedRing: number;
  /** Whether the driver uses EVENT_IDX. */
  eventIdx: boolean;
  /** With EVENT_IDX, ask for the next used descriptor in `takeUsed` (default true). */
  autoUsedEvent = true;
  /** Whether the driver negotiated VIRTIO_F_IN_ORDER. */
  inOrder: boolean;
  #order: number[] = [];
  #ready: UsedEntry[] = [];
  readonly #bufferBase: number;
  readonly #bufferEnd: number;
  #next: number;
  #availIdx = 0;
  #availWrap = 1;
  #usedIdx = 0;
  #usedWrap = 1;
  #free = 0; // free descriptors
  #ids: number[] = [];
  #inFlight = new Map<number, InFlight>();
  #lastKick = 0; // availIdx | wrap << 15 at the last kick decision
  readonly #descBytes = new Uint8Array(DESCRIPTOR_SIZE);
  readonly #descView = new DataView(this.#descBytes.buffer);

  /**
   * Lay out an empty queue.
   * @param memory Guest memory.
   * @param options Size, placement and driver features.
   * @throws {RangeError} When the rings or buffer area do not fit.
   */
  constructor(memory: GuestMemory, options: PackedDriverQueueOptions = {}) {
    const size = options.size ?? 256;
    if (!Number.isInteger(size) || size < 1 || size > 32768) {
      throw new RangeError(`Queue size must be 1 to 32768, got ${size}`);
    }
    this.memory = memory;
    this.size = size;
    this.descTable = options.ringBase ?? 0x1000;
    this.availRing = this.descTable + DESCRIPTOR_SIZE * size;
    this.usedRing = this.availRing + 4;
    const end = this.usedRing + 4;
    if (!memory.checkRange(this.descTable, end - this.descTable)) {
      throw new RangeError("Rings do not fit in guest memory");
    }
    memory.fill(this.descTable, end - this.descTable, 0);
    this.#bufferBase = options.bufferBase ?? Math.ceil(end / 64) * 64;
    const region = memory.findRegion(this.#bufferBase);
    if (region === undefined) throw new RangeError("Buffer area is outside guest memory");
    this.#bufferEnd = options.bufferEnd ?? region.end;
    this.#next = this.#bufferBase;
    this.eventIdx = options.eventIdx ?? false;
    this.inOrder = options.inOrder ?? false;
    this.#free = size;
    for (let i = size - 1; i >= 0; i--) this.#ids.push(i);
    this.#lastKick = this.#position();
  }

  /**
   * Program a device queue with this layout and mark it ready.
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

  /** Free descriptors in the ring. */
  get freeDescriptors(): number {
    return this.#free;
  }

  #position(): number {
    return this.#availIdx | (this.#availWrap << 15);
  }

  /**
   * Reserve buffer space (wrapping to the start of the area).
   * @param len Bytes.
   * @param align Alignment (default 8).
   * @returns Guest address.
   * @throws {RangeError} When the area is too small.
   */
  alloc(len: number, align = 8): number {
    let addr = Math.ceil(this.#next / align) * align;
    if (addr + len > this.#bufferEnd) {
      addr = Math.ceil(this.#bufferBase / align) * align;
      if (addr + len > this.#bufferEnd) throw new RangeError(`No room for a ${len}-byte buffer`);
    }
    this.#next = addr + len;
    return addr;
  }

  /**
   * Write one raw descriptor at ring position `index` (no validation: for hostile tests).
   * @param index Ring position.
   * @param desc The descriptor.
   * @param table Guest address of the table (default: the ring).
   */
  writeDescriptor(index: number, desc: RawPackedDescriptor, table = this.descTable): void {
    const v = this.#descView;
    v.setBigUint64(0, BigInt.asUintN(64, BigInt(desc.addr)), true);
    v.setUint32(8, desc.len, true);
    v.setUint16(12, desc.id, true);
    v.setUint16(14, desc.flags, true);
    this.memory.write(table + DESCRIPTOR_SIZE * index, this.#descBytes);
  }

  #availFlags(): number {
    return this.#availWrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /**
   * Add a list of buffers under a free buffer id and make it available (the first
   * descriptor's flags last, as virtio 1.2 §2.8.6 requires); readable buffers are filled.
   * @param buffers Readable buffers first, then writable ones.
   * @param options `indirect` to put the buffers in one indirect table.
   * @returns The buffer id.
   * @throws {RangeError} When there are not enough free descriptors or ids.
   */
  addChain(buffers: DriverBuffer[], options: { indirect?: boolean } = {}): number {
    const indirect = options.indirect ?? false;
    const needed = indirect ? 1 : buffers.length;
    if (buffers.length === 0 || needed > this.#free || this.#ids.length === 0) {
      throw new RangeError(`List of ${buffers.length} does not fit (${this.#free} free)`);
    }
    const id = this.#ids.pop()!;
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
    const ring = indirect
      ? [{
        addr: this.#indirectTable(placed),
        len: DESCRIPTOR_SIZE * placed.length,
        flags: VIRTQ_DESC_F_INDIRECT,
      }]
      : placed;
    const first = this.#availIdx;
    let firstFlags = 0;
    ring.forEach((p, i) => {
      const last = i === ring.length - 1;
      const flags = p.flags | (last ? 0 : VIRTQ_DESC_F_NEXT) | this.#availFlags();
      if (i === 0) {
        firstFlags = flags;
        this.writeDescriptor(this.#availIdx, { addr: p.addr, len: p.len, id, flags: 0 });
      } else {
        this.writeDescriptor(this.#availIdx, { addr: p.addr, len: p.len, id, flags });
      }
      if (++this.#availIdx === this.size) {
        this.#availIdx = 0;
        this.#availWrap ^= 1;
      }
    });
    // Release: the whole list is written before its first descriptor becomes available.
    const { region, offset } = this.memory.resolve(
      this.descTable + DESCRIPTOR_SIZE * first + 14,
      2,
    );
    Atomics.store(region.u16, offset >>> 1, firstFlags);
    this.#free -= ring.length;
    this.#inFlight.set(id, { count: ring.length, writable });
    if (this.inOrder) this.#order.push(id);
    return id;
  }

  /**
   * Make raw descriptors available as one list at the driver's position, with the driver's
   * AVAIL/USED bits added to each `flags` and the first descriptor's flags stored last (no
   * other validation: hostile tests put any id, address, length or flag there). The driver
   * then expects one used descriptor for the list, under the last descriptor's id.
   * @param descs The list, in ring order; `flags` without AVAIL and USED.
   * @returns The id the device should return (the last descriptor's).
   * @throws {RangeError} When the list is empty or longer than the ring.
   */
  addRaw(descs: readonly RawPackedDescriptor[]): number {
    if (descs.length === 0 || descs.length > this.size) {
      throw new RangeError(`A raw list of ${descs.length} does not fit a ring of ${this.size}`);
    }
    const first = this.#availIdx;
    let firstFlags = 0;
    descs.forEach((d, i) => {
      const flags = (d.flags & ~(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) | this.#availFlags();
      if (i === 0) firstFlags = flags;
      this.writeDescriptor(this.#availIdx, { ...d, flags: i === 0 ? 0 : flags });
      if (++this.#availIdx === this.size) {
        this.#availIdx = 0;
        this.#availWrap ^= 1;
      }
    });
    const { region, offset } = this.memory.resolve(
      this.descTable + DESCRIPTOR_SIZE * first + 14,
      2,
    );
    Atomics.store(region.u16, offset >>> 1, firstFlags);
    const id = descs[descs.length - 1].id;
    this.#free = Math.max(0, this.#free - descs.length);
    if (!this.#inFlight.has(id)) {
      this.#inFlight.set(id, { count: descs.length, writable: [], raw: true });
    }
    if (this.inOrder) this.#order.push(id);
    return id;
  }

  #indirectTable(placed: { addr: number; len: number; flags: number }[]): number {
    const table = this.alloc(DESCRIPTOR_SIZE * placed.length, 16);
    placed.forEach((p, i) => this.writeDescriptor(i, { ...p, id: 0 }, table));
    return table;
  }

  #load(addr: number): number {
    const { region, offset } = this.memory.resolve(addr, 2);
    return Atomics.load(region.u16, offset >>> 1);
  }

  #store(addr: number, value: number): void {
    const { region, offset } = this.memory.resolve(addr, 2);
    Atomics.store(region.u16, offset >>> 1, value);
  }

  /**
   * Whether the driver must notify the device now, per the device event suppression structure
   * (virtio 1.2 §2.8.10). Records the kick.
   * @returns `true` when a notification is due.
   */
  kickNeeded(): boolean {
    const now = this.#position();
    const old = this.#lastKick;
    this.#lastKick = now;
    if (now === old) return false;
    const flags = this.#load(this.usedRing + 2) & 3;
    if (flags === RING_EVENT_FLAGS_ENABLE) return true;
    if (flags !== RING_EVENT_FLAGS_DESC) return false;
    // The event descriptor between the last kick and now (ring positions, wrap-adjusted).
    const offWrap = this.#load(this.usedRing);
    let off = offWrap & 0x7fff;
    if ((offWrap >> 15) !== this.#availWrap) off -= this.size;
    const n = now & 0x7fff;
    const o = old & 0x7fff;
    return ((n - off - 1) & 0xffff) < ((n - o) & 0xffff);
  }

  /**
   * Ask for no used-buffer notifications, or for all of them again.
   * @param suppress `true` to suppress.
   */
  suppressInterrupts(suppress: boolean): void {
    this.#store(this.availRing + 2, suppress ? RING_EVENT_FLAGS_DISABLE : RING_EVENT_FLAGS_ENABLE);
  }

  /**
   * With EVENT_IDX: ask to be notified when the device uses the descriptor at `position`
   * (index in bits 0–14, wrap counter in bit 15).
   * @param position The event position.
   */
  setUsedEvent(position: number): void {
    this.#store(this.availRing, position & 0xffff);
    this.#store(this.availRing + 2, RING_EVENT_FLAGS_DESC);
  }

  /** Where the next available descriptor goes (index | wrap << 15), for notification data. */
  get availPosition(): number {
    return this.#position();
  }

  /** The next used position the driver will read (index | wrap << 15). */
  usedPosition(): number {
    return this.#usedIdx | (this.#usedWrap << 15);
  }

  #usedReady(): boolean {
    const flags = this.#load(this.descTable + DESCRIPTOR_SIZE * this.#usedIdx + 14);
    const avail = (flags & VIRTQ_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (flags & VIRTQ_DESC_F_USED) !== 0 ? 1 : 0;
    return avail === this.#usedWrap && used === this.#usedWrap;
  }

  /** Number of used descriptors ready to take (walking the ring). */
  pendingUsed(): number {
    let n = 0;
    let idx = this.#usedIdx;
    let wrap = this.#usedWrap;
    for (let guard = 0; guard < this.size; guard++) {
      const at = this.descTable + DESCRIPTOR_SIZE * idx;
      const flags = this.#load(at + 14);
      const a = (flags & VIRTQ_DESC_F_AVAIL) !== 0 ? 1 : 0;
      const u = (flags & VIRTQ_DESC_F_USED) !== 0 ? 1 : 0;
      if (a !== wrap || u !== wrap) break;
      const id = this.memory.readU16(at + 12);
      const count = this.#inFlight.get(id)?.count ?? 1;
      n++;
      idx += count;
      if (idx >= this.size) {
        idx -= this.size;
        wrap ^= 1;
      }
    }
    return n;
  }

  /**
   * Take the next used descriptor, free its list and return what the device wrote.
   * @returns The entry (`id` is the buffer id), or `null`.
   */
  takeUsed(): UsedEntry | null {
    if (this.inOrder) return this.#takeInOrder();
    if (!this.#usedReady()) return null;
    const at = this.descTable + DESCRIPTOR_SIZE * this.#usedIdx;
    const len = this.memory.readU32(at + 8);
    const id = this.memory.readU16(at + 12);
    const flight = this.#inFlight.get(id);
    const count = flight?.count ?? 1;
    this.#usedIdx += count;
    if (this.#usedIdx >= this.size) {
      this.#usedIdx -= this.size;
      this.#usedWrap ^= 1;
    }
    let written = new Uint8Array(0);
    if (flight !== undefined) {
      this.#inFlight.delete(id);
      if (!flight.raw) this.#ids.push(id);
      this.#free += count;
      const total = flight.writable.reduce((n, w) => n + w.len, 0);
      written = new Uint8Array(total);
      let off = 0;
      for (const w of flight.writable) {
        this.memory.read(w.addr, written.subarray(off, off + w.len));
        off += w.len;
      }
    }
    if (this.eventIdx && this.autoUsedEvent) this.setUsedEvent(this.usedPosition());
    return { id, len, written };
  }

  // virtio 1.2 §2.8.12: a used descriptor names the last list of a batch; the lists made
  // available before it are used completely, and the ring skips all of them.
  #takeInOrder(): UsedEntry | null {
    const queued = this.#ready.shift();
    if (queued !== undefined) return queued;
    if (!this.#usedReady()) return null;
    const at = this.descTable + DESCRIPTOR_SIZE * this.#usedIdx;
    const len = this.memory.readU32(at + 8);
    const id = this.memory.readU16(at + 12);
    while (this.#order.length > 0) {
      const next = this.#order.shift()!;
      const flight = this.#inFlight.get(next);
      if (flight === undefined) continue;
      const full = flight.writable.reduce((n, w) => n + w.len, 0);
      this.#ready.push(this.#finish(next, next === id ? len : full, flight));
      if (next === id) break;
    }
    if (this.eventIdx && this.autoUsedEvent) this.setUsedEvent(this.usedPosition());
    return this.#ready.shift() ?? null;
  }

  #finish(id: number, len: number, flight: InFlight): UsedEntry {
    this.#usedIdx += flight.count;
    if (this.#usedIdx >= this.size) {
      this.#usedIdx -= this.size;
      this.#usedWrap ^= 1;
    }
    this.#inFlight.delete(id);
    if (!flight.raw) this.#ids.push(id);
    this.#free += flight.count;
    const total = flight.writable.reduce((n, w) => n + w.len, 0);
    const written = new Uint8Array(total);
    let off = 0;
    for (const w of flight.writable) {
      this.memory.read(w.addr, written.subarray(off, off + w.len));
      off += w.len;
    }
    return { id, len, written };
  }

  /**
   * Take every used descriptor ready.
   * @returns The entries, oldest first.
   */
  takeAllUsed(): UsedEntry[] {
    const all: UsedEntry[] = [];
    let e: UsedEntry | null;
    while ((e = this.takeUsed()) !== null) all.push(e);
    return all;
  }
}
