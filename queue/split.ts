/**
 * The split virtqueue, device side (virtio 1.2 §2.7).
 *
 * @module
 */

import type { GuestMemory, GuestRegion } from "../memory/guest_memory.ts";
import { DescriptorChain } from "./chain.ts";
import { CHAIN_TOKEN } from "./_chain_token.ts";
import { QueueError } from "./error.ts";

/** Descriptor continues via the `next` field (virtio 1.2 §2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
/** Buffer is device-writable. */
export const VIRTQ_DESC_F_WRITE = 2;
/** Buffer holds a table of indirect descriptors (virtio 1.2 §2.7.5.3). */
export const VIRTQ_DESC_F_INDIRECT = 4;
/** Device asks the driver not to notify it (virtio 1.2 §2.7.10). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** Driver asks the device not to interrupt it (virtio 1.2 §2.7.7). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** Feature bit: indirect descriptors. */
export const VIRTIO_F_INDIRECT_DESC = 28;
/** Feature bit: `used_event` / `avail_event` notification suppression. */
export const VIRTIO_F_EVENT_IDX = 29;
/** Largest split queue size (virtio 1.2 §2.7). */
export const MAX_QUEUE_SIZE = 32768;
/** Bytes per descriptor. */
export const DESCRIPTOR_SIZE = 16;
/** Most entries accepted in one indirect table. */
export const MAX_INDIRECT_ENTRIES = 65536;
/**
 * Most segments one chain may have. A chain has at most a queue's worth of
 * descriptors plus one full indirect table (just under 2^17); a buffer that
 * crosses from one guest memory region into the next adds a segment per
 * region it touches, and this bounds what a hostile memory table of many tiny
 * regions can make the device hold for one chain.
 */
export const MAX_CHAIN_SEGMENTS = 1 << 17;

// One descriptor copied out of an indirect table when it straddles two regions.
const descScratch = new Uint8Array(DESCRIPTOR_SIZE);
const descScratchView = new DataView(descScratch.buffer);

/** Plain saved state of a split queue (for migration and vhost-user). */
export interface SplitQueueState {
  /** Maximum size the device offers. */
  maxSize: number;
  /** Size chosen by the driver. */
  size: number;
  /** Whether the driver marked the queue ready. */
  ready: boolean;
  /** Guest address of the descriptor table. */
  descTable: number;
  /** Guest address of the available ring (driver area). */
  availRing: number;
  /** Guest address of the used ring (device area). */
  usedRing: number;
  /** Next available-ring index the device will read. */
  nextAvail: number;
  /** Next used-ring index the device will write. */
  nextUsed: number;
  /** Whether VIRTIO_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** Whether VIRTIO_F_INDIRECT_DESC was negotiated. */
  indirect: boolean;
}

/** Bytes taken by the available ring of a queue of `size` entries (with `used_event`). */
export function availRingSize(size: number): number {
  return 6 + 2 * size;
}

/** Bytes taken by the used ring of a queue of `size` entries (with `avail_event`). */
export function usedRingSize(size: number): number {
  return 6 + 8 * size;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * The device side of one split virtqueue.
 *
 * Setters mirror the transport registers; the ring addresses are validated
 * once by {@linkcode SplitQueue.validate} (called on activation) and the
 * resolved ring locations are cached per `GuestMemory`.
 *
 * Memory ordering: the rings are shared with a driver running concurrently on
 * another CPU. The 16-bit ring indices are accessed with `Atomics` on an
 * aligned `Uint16Array` over the region: `Atomics.load(avail.idx)` happens
 * before the ring entry and descriptors are read (the read barrier of
 * virtio 1.2 §2.7.13.1 seen from the device), `Atomics.store(used.idx)` happens
 * after the used element is written (the write barrier of §2.7.8.2), and the
 * sequentially consistent store is ordered before the following
 * `Atomics.load` of `used_event`/`avail.flags` (the full barrier needed before
 * deciding on a notification, §2.7.7.2). Plain `DataView` accesses would let
 * the compiler reorder these.
 *
 * @example Serve a queue
 * ```ts ignore
 * let chain;
 * while ((chain = queue.pop(mem)) !== null) {
 *   const n = chain.writer.write(reply);
 *   queue.addUsed(mem, chain.head, n);
 * }
 * if (queue.needsNotification(mem)) notifier.notify();
 * ```
 */
export class SplitQueue {
  /** Maximum size the device offers. */
  readonly maxSize: number;
  /** Size the driver chose (defaults to `maxSize`). */
  size: number;
  /** Whether the driver marked the queue ready. */
  ready = false;
  // Low and high 32-bit halves of the descriptor, available and used ring addresses.
  #addr = new Uint32Array(6);
  /** Whether VIRTIO_F_EVENT_IDX is in effect. */
  eventIdx = false;
  /** Whether VIRTIO_F_INDIRECT_DESC is in effect. */
  indirect = false;
  #nextAvail = 0;
  #nextUsed = 0;
  #signalledUsed: number | undefined;
  #broken: QueueError | undefined;
  // Cached resolution of the three rings in `#mem`.
  #mem: GuestMemory | undefined;
  #desc!: GuestRegion;
  #descOff = 0;
  #avail!: GuestRegion;
  #availOff = 0;
  #availIdxIndex = 0;
  #used!: GuestRegion;
  #usedOff = 0;
  #usedIdxIndex = 0;

  /**
   * Create it.
   * @param maxSize Largest size the device accepts: a power of two up to 32768.
   * @throws {RangeError} When `maxSize` is not a valid queue size.
   */
  constructor(maxSize: number) {
    if (!isPowerOfTwo(maxSize) || maxSize > MAX_QUEUE_SIZE) {
      throw new RangeError(`Queue max size must be a power of two up to 32768, got ${maxSize}`);
    }
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  /** Next available-ring index the device will read (wraps at 2^16). */
  get nextAvail(): number {
    return this.#nextAvail;
  }
  set nextAvail(v: number) {
    this.#nextAvail = v & 0xffff;
  }

  /** Next used-ring index the device will write (wraps at 2^16). */
  get nextUsed(): number {
    return this.#nextUsed;
  }
  set nextUsed(v: number) {
    this.#nextUsed = v & 0xffff;
    this.#signalledUsed = undefined;
  }

  /** The fatal error that stopped this queue, if any. */
  get broken(): QueueError | undefined {
    return this.#broken;
  }

  /** Guest address of the descriptor table (not a safe integer when invalid). */
  get descTable(): number {
    return this.#addr[1] * 0x1_0000_0000 + this.#addr[0];
  }
  set descTable(addr: number) {
    this.setDescTableAddress(addr % 0x1_0000_0000, Math.floor(addr / 0x1_0000_0000));
  }

  /** Guest address of the available ring (driver area). */
  get availRing(): number {
    return this.#addr[3] * 0x1_0000_0000 + this.#addr[2];
  }
  set availRing(addr: number) {
    this.setAvailRingAddress(addr % 0x1_0000_0000, Math.floor(addr / 0x1_0000_0000));
  }

  /** Guest address of the used ring (device area). */
  get usedRing(): number {
    return this.#addr[5] * 0x1_0000_0000 + this.#addr[4];
  }
  set usedRing(addr: number) {
    this.setUsedRingAddress(addr % 0x1_0000_0000, Math.floor(addr / 0x1_0000_0000));
  }

  #setHalves(i: number, low: number | undefined, high: number | undefined): void {
    if (low !== undefined) this.#addr[i] = low;
    if (high !== undefined) this.#addr[i + 1] = high;
    this.#mem = undefined;
  }

  /**
   * Set the descriptor table address, or one 32-bit half of it (a transport
   * register write). `undefined` leaves that half unchanged.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setDescTableAddress(low?: number, high?: number): void {
    this.#setHalves(0, low, high);
  }

  /**
   * Set the available ring (driver area) address, or one half of it.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setAvailRingAddress(low?: number, high?: number): void {
    this.#setHalves(2, low, high);
  }

  /**
   * Set the used ring (device area) address, or one half of it.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setUsedRingAddress(low?: number, high?: number): void {
    this.#setHalves(4, low, high);
  }

  /**
   * Apply the negotiated features that change ring behaviour.
   * @param features The acknowledged feature bits.
   */
  setFeatures(features: bigint): void {
    this.eventIdx = (features & (1n << BigInt(VIRTIO_F_EVENT_IDX))) !== 0n;
    this.indirect = (features & (1n << BigInt(VIRTIO_F_INDIRECT_DESC))) !== 0n;
  }

  /** Return to the state after device reset (virtio 1.2 §2.4). */
  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.#addr.fill(0);
    this.eventIdx = false;
    this.indirect = false;
    this.#nextAvail = 0;
    this.#nextUsed = 0;
    this.#signalledUsed = undefined;
    this.#broken = undefined;
    this.#mem = undefined;
  }

  /**
   * Check size and ring placement against guest memory (virtio 1.2 §2.7: sizes
   * and alignment of the three areas).
   * @param mem Guest memory.
   * @throws {QueueError} `QueueNotReady`, `InvalidSize` or `InvalidRing`.
   */
  validate(mem: GuestMemory): void {
    if (!this.ready) throw new QueueError("QueueNotReady", "queue is not ready", { fatal: true });
    const size = this.size;
    if (!isPowerOfTwo(size) || size > this.maxSize) {
      throw new QueueError("InvalidSize", `queue size ${size} (max ${this.maxSize})`, {
        fatal: true,
      });
    }
    this.#resolve(mem);
  }

  /** Whether the queue is ready and its rings are valid in `mem`. */
  isValid(mem: GuestMemory): boolean {
    try {
      this.validate(mem);
      return true;
    } catch {
      return false;
    }
  }

  #resolve(mem: GuestMemory): void {
    const size = this.size;
    const area = (name: string, addr: number, len: number, align: number) => {
      if (!Number.isSafeInteger(addr) || addr % align !== 0) {
        throw new QueueError("InvalidRing", `${name} at 0x${addr.toString(16)} misaligned`, {
          fatal: true,
        });
      }
      const region = mem.regionOf(addr, len);
      if (region === undefined) {
        throw new QueueError(
          "InvalidRing",
          `${name} at 0x${addr.toString(16)} (+${len}) is outside guest memory`,
          { fatal: true },
        );
      }
      const offset = addr - region.base;
      if ((region.bytes.byteOffset + offset) % align !== 0) {
        throw new QueueError("InvalidRing", `${name} is misaligned in its backing buffer`, {
          fatal: true,
        });
      }
      return { region, offset };
    };
    // virtio 1.2 §2.7: descriptor table 16-aligned, driver area 2, device area 4.
    // Each ring must lie inside one guest memory region, unlike the buffers and indirect tables
    // a chain points to, which may run on into an adjacent region: the rings are resolved once
    // here to a region and offset, and their 16-bit indices are accessed with Atomics on that
    // region's Uint16Array, which cannot span two backing buffers. A driver allocates each ring
    // as one block; one that crosses a region boundary is refused here, at activation, visibly.
    const d = area("descriptor table", this.descTable, DESCRIPTOR_SIZE * size, 16);
    const a = area("available ring", this.availRing, availRingSize(size), 2);
    const u = area("used ring", this.usedRing, usedRingSize(size), 4);
    this.#desc = d.region;
    this.#descOff = d.offset;
    this.#avail = a.region;
    this.#availOff = a.offset;
    this.#availIdxIndex = (a.offset + 2) >>> 1;
    this.#used = u.region;
    this.#usedOff = u.offset;
    this.#usedIdxIndex = (u.offset + 2) >>> 1;
    this.#mem = mem;
  }

  #ensure(mem: GuestMemory): void {
    if (this.#broken !== undefined) throw this.#broken;
    if (this.#mem !== mem) this.validate(mem);
  }

  #fail(err: QueueError): never {
    if (err.fatal) this.#broken = err;
    throw err;
  }

  /**
   * The driver's current `avail.idx`.
   * @param mem Guest memory.
   * @returns The index.
   * @throws {QueueError} When the queue is not valid.
   */
  availIdx(mem: GuestMemory): number {
    this.#ensure(mem);
    return Atomics.load(this.#avail.u16, this.#availIdxIndex);
  }

  /**
   * The `used.idx` currently in guest memory.
   * @param mem Guest memory.
   * @returns The index.
   * @throws {QueueError} When the queue is not valid.
   */
  usedIdx(mem: GuestMemory): number {
    this.#ensure(mem);
    return Atomics.load(this.#used.u16, this.#usedIdxIndex);
  }

  /**
   * Whether the driver has made buffers available that the device has not taken.
   * @param mem Guest memory.
   * @returns `true` when `pop` would return a chain (or throw for it).
   * @throws {QueueError} When the queue is not valid.
   */
  hasPending(mem: GuestMemory): boolean {
    return this.availIdx(mem) !== this.#nextAvail;
  }

  /**
   * Take the next available descriptor chain.
   *
   * A non-fatal `QueueError` concerns one chain: it has been consumed, and its
   * `head` should be returned with `addUsed(mem, err.head, 0)`. A fatal one
   * breaks the queue: every later call throws it again until `reset()`.
   *
   * @param mem Guest memory.
   * @returns The chain, or `null` when the driver has made nothing available.
   * @throws {QueueError} For every violation of the ring rules.
   */
  pop(mem: GuestMemory): DescriptorChain | null {
    this.#ensure(mem);
    const size = this.size;
    const availIdx = Atomics.load(this.#avail.u16, this.#availIdxIndex);
    const pending = (availIdx - this.#nextAvail) & 0xffff;
    if (pending === 0) return null;
    if (pending > size) {
      this.#fail(
        new QueueError(
          "AvailIdxJump",
          `avail.idx ${availIdx} is ${pending} entries past ${this.#nextAvail} (size ${size})`,
          { fatal: true },
        ),
      );
    }
    const slot = this.#nextAvail & (size - 1);
    const head = this.#avail.view.getUint16(this.#availOff + 4 + 2 * slot, true);
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    if (head >= size) {
      this.#fail(
        new QueueError("HeadOutOfRange", `head ${head} >= queue size ${size}`, { fatal: true }),
      );
    }
    return this.#parse(mem, head);
  }

  #parse(mem: GuestMemory, head: number): DescriptorChain {
    const addrs: number[] = [];
    const lens: number[] = [];
    let readableCount = 0;
    let readableBytes = 0;
    let writableBytes = 0;
    let descriptorCount = 0;
    // The table descriptors are read from: a region and the table's offset in it, or, for an
    // indirect table that crosses into an adjacent region, `undefined` and its guest address.
    let table: GuestRegion | undefined = this.#desc;
    let base = this.#descOff;
    let entries = this.size;
    let ttl = this.size;
    let inIndirect = false;
    let sawWritable = false;
    let total = 0;
    let idx = head;
    const bad = (code: QueueError["code"], msg: string): never => {
      throw new QueueError(code, `${msg} (chain ${head})`, { head });
    };
    for (;;) {
      if (idx >= entries) {
        bad("DescriptorIndexOutOfRange", `descriptor ${idx} >= table size ${entries}`);
      }
      if (ttl-- === 0) bad("ChainTooLong", `more than ${entries} descriptors`);
      descriptorCount++;
      let view: DataView;
      let off: number;
      if (table !== undefined) {
        view = table.view;
        off = base + DESCRIPTOR_SIZE * idx;
      } else {
        const at = base + DESCRIPTOR_SIZE * idx;
        const region = mem.regionOf(at, DESCRIPTOR_SIZE);
        if (region !== undefined) {
          view = region.view;
          off = at - region.base;
        } else {
          // This descriptor itself straddles the boundary (the table was checked whole).
          mem.read(at, descScratch);
          view = descScratchView;
          off = 0;
        }
      }
      const lo = view.getUint32(off, true);
      const hi = view.getUint32(off + 4, true);
      const len = view.getUint32(off + 8, true);
      const flags = view.getUint16(off + 12, true);
      const next = view.getUint16(off + 14, true);
      if (hi > 0x1fffff) bad("DescriptorOutOfBounds", "address above 2^53");
      const addr = hi * 0x1_0000_0000 + lo;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // virtio 1.2 §2.7.5.3.1 / §2.7.5.3.2
        if (!this.indirect) bad("IndirectNotNegotiated", "INDIRECT flag without the feature");
        if (inIndirect) bad("NestedIndirect", "indirect descriptor in an indirect table");
        if (flags & VIRTQ_DESC_F_NEXT) bad("IndirectWithNext", "INDIRECT and NEXT both set");
        if (len === 0 || len % DESCRIPTOR_SIZE !== 0) {
          bad("InvalidIndirectLength", `indirect table length ${len}`);
        }
        const n = len / DESCRIPTOR_SIZE;
        if (n > MAX_INDIRECT_ENTRIES) bad("InvalidIndirectLength", `${n} indirect entries`);
        // An indirect table is ordinary driver memory (virtio 1.2 §2.7.5.3 puts no region rule
        // on it), so one that runs on into an adjacent region is read descriptor by descriptor.
        // Refusing it would fail valid requests at random, wherever the guest's allocator
        // happened to put a table; a table over a hole is out of bounds.
        const region = mem.regionOf(addr, len);
        if (region !== undefined) {
          table = region;
          base = addr - region.base;
        } else if (mem.checkSpan(addr, len)) {
          table = undefined;
          base = addr;
        } else {
          return bad("DescriptorOutOfBounds", `indirect table at 0x${addr.toString(16)} (+${len})`);
        }
        entries = n;
        ttl = n;
        inIndirect = true;
        idx = 0;
        continue;
      }
      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (writable) sawWritable = true;
      else if (sawWritable) bad("ReadableAfterWritable", `descriptor ${idx}`);
      if (len > 0) {
        const pieces = this.#addBuffer(addrs, lens, mem, addr, len);
        if (pieces === 0) {
          bad("DescriptorOutOfBounds", `buffer at 0x${addr.toString(16)} (+${len})`);
        }
        if (pieces < 0) bad("TooManySegments", `more than ${MAX_CHAIN_SEGMENTS} segments`);
        total += len;
        if (total > 0xffffffff) bad("ChainTooLarge", "total length above 2^32 - 1");
        if (writable) writableBytes += len;
        else {
          readableCount += pieces;
          readableBytes += len;
        }
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) {
        return new DescriptorChain(CHAIN_TOKEN, {
          memory: mem,
          head,
          addrs,
          lens,
          readableCount,
          readableBytes,
          writableBytes,
          descriptorCount,
        });
      }
      idx = next;
    }
  }

  /**
   * Append buffer `[addr, addr + len)` (`len` > 0) to the chain as one segment per guest memory
   * region it lies in: a buffer may run from one region into the next when they are adjacent
   * (virtio 1.2 §2.7.5 knows nothing of regions; frontends split RAM into several), never
   * across a hole. Allocates nothing beyond the chain's own arrays.
   * @returns The number of segments added; 0 when a byte is not backed; -1 past the limit.
   */
  #addBuffer(
    addrs: number[],
    lens: number[],
    mem: GuestMemory,
    addr: number,
    len: number,
  ): number {
    let i = mem.findRegionIndex(addr);
    if (i < 0) return 0;
    const regions = mem.regions;
    let r = regions[i];
    if (addrs.length >= MAX_CHAIN_SEGMENTS) return -1;
    if (addr + len <= r.end) {
      addrs.push(addr);
      lens.push(len);
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
    if (addrs.length + pieces > MAX_CHAIN_SEGMENTS) return -1;
    a = addr;
    while (a < end) {
      const n = Math.min(end, r.end) - a;
      addrs.push(a);
      lens.push(n);
      a += n;
      r = regions[++i];
    }
    return pieces;
  }

  /**
   * Put a chain back: the next `pop` returns the same head again.
   * Only valid right after popping it.
   */
  undoPop(): void {
    this.#nextAvail = (this.#nextAvail - 1) & 0xffff;
  }

  /**
   * Return a chain to the driver through the used ring.
   * @param mem Guest memory.
   * @param head Head index of the chain (from `pop`).
   * @param len Bytes the device wrote into the chain's writable buffers.
   * @throws {QueueError} `InvalidUsedHead` for a head outside the table.
   */
  addUsed(mem: GuestMemory, head: number, len: number): void {
    this.#ensure(mem);
    if (!Number.isInteger(head) || head < 0 || head >= this.size) {
      throw new QueueError("InvalidUsedHead", `head ${head} >= queue size ${this.size}`);
    }
    const slot = this.#nextUsed & (this.size - 1);
    const off = this.#usedOff + 4 + 8 * slot;
    const view = this.#used.view;
    view.setUint32(off, head, true);
    view.setUint32(off + 4, len >>> 0, true);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
    // Release: the element above is visible before the new index.
    Atomics.store(this.#used.u16, this.#usedIdxIndex, this.#nextUsed);
  }

  /**
   * Return several chains at once: every element is written first, then `used.idx` moves
   * once, so the driver sees all of them or none. A received packet spread over several
   * buffers (virtio-net with VIRTIO_F_MRG_RXBUF, virtio 1.2 §5.1.6.4) needs this: the driver
   * reads its `num_buffers` entries as soon as it sees the first.
   * @param mem Guest memory.
   * @param heads Head indices of the chains, in order.
   * @param lens Bytes written into each chain.
   * @param count How many of `heads`/`lens` to return (default all of `heads`).
   * @throws {QueueError} `InvalidUsedHead` for a head outside the table (nothing is published).
   */
  addUsedMany(
    mem: GuestMemory,
    heads: readonly number[],
    lens: readonly number[],
    count: number = heads.length,
  ): void {
    this.#ensure(mem);
    for (let i = 0; i < count; i++) {
      const head = heads[i];
      if (!Number.isInteger(head) || head < 0 || head >= this.size) {
        throw new QueueError("InvalidUsedHead", `head ${head} >= queue size ${this.size}`);
      }
    }
    const view = this.#used.view;
    let next = this.#nextUsed;
    for (let i = 0; i < count; i++) {
      const off = this.#usedOff + 4 + 8 * (next & (this.size - 1));
      view.setUint32(off, heads[i], true);
      view.setUint32(off + 4, lens[i] >>> 0, true);
      next = (next + 1) & 0xffff;
    }
    this.#nextUsed = next;
    // Release: every element above is visible before the new index.
    Atomics.store(this.#used.u16, this.#usedIdxIndex, next);
  }

  /**
   * Whether the driver wants a used-buffer notification now (virtio 1.2 §2.7.7.2).
   * Call once after a batch of `addUsed`.
   * @param mem Guest memory.
   * @returns `true` when the device must notify the driver.
   * @throws {QueueError} When the queue is not valid.
   */
  needsNotification(mem: GuestMemory): boolean {
    this.#ensure(mem);
    const used = this.#nextUsed;
    if (!this.eventIdx) {
      const flags = Atomics.load(this.#avail.u16, this.#availIdxIndex - 1);
      return (flags & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    const old = this.#signalledUsed;
    this.#signalledUsed = used;
    if (old === undefined) return true;
    const usedEvent = Atomics.load(this.#avail.u16, this.#availIdxIndex + 1 + this.size);
    // vring_need_event(): notify when used_event lies in (old, used].
    return ((used - usedEvent - 1) & 0xffff) < ((used - old) & 0xffff);
  }

  /**
   * Ask the driver to notify the device of new buffers (virtio 1.2 §2.7.10),
   * then report whether buffers arrived meanwhile.
   * @param mem Guest memory.
   * @returns `true` when the available ring holds buffers not yet popped.
   * @throws {QueueError} When the queue is not valid.
   */
  enableNotification(mem: GuestMemory): boolean {
    this.#ensure(mem);
    const idx = this.#usedIdxIndex;
    if (this.eventIdx) {
      Atomics.store(this.#used.u16, idx + 1 + 4 * this.size, this.#nextAvail);
    } else {
      Atomics.store(this.#used.u16, idx - 1, 0);
    }
    return Atomics.load(this.#avail.u16, this.#availIdxIndex) !== this.#nextAvail;
  }

  /**
   * Ask the driver not to notify the device (only possible without EVENT_IDX;
   * with it the device simply does not move `avail_event`).
   * @param mem Guest memory.
   * @throws {QueueError} When the queue is not valid.
   */
  disableNotification(mem: GuestMemory): void {
    this.#ensure(mem);
    if (!this.eventIdx) {
      Atomics.store(this.#used.u16, this.#usedIdxIndex - 1, VIRTQ_USED_F_NO_NOTIFY);
    }
  }

  /** A plain copy of the queue's state. */
  state(): SplitQueueState {
    return {
      maxSize: this.maxSize,
      size: this.size,
      ready: this.ready,
      descTable: this.descTable,
      availRing: this.availRing,
      usedRing: this.usedRing,
      nextAvail: this.#nextAvail,
      nextUsed: this.#nextUsed,
      eventIdx: this.eventIdx,
      indirect: this.indirect,
    };
  }
}
