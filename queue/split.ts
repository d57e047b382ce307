/**
 * The split virtqueue, device side (virtio 1.2 §2.7).
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { DescriptorChain } from "./chain.ts";
import type { Virtqueue, VirtqueueState } from "./virtqueue.ts";
import {
  CHAIN_SEGMENT_LIMIT,
  ChainBuilder,
  chainProblem,
  DescriptorTable,
} from "./_chain_builder.ts";
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
/** Feature bit: the device uses buffers in the order they were made available. */
export const VIRTIO_F_IN_ORDER = 35;
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
export const MAX_CHAIN_SEGMENTS: number = CHAIN_SEGMENT_LIMIT;

/** Plain saved state of a split queue (for migration and vhost-user). */
export interface SplitQueueState extends VirtqueueState {
  /** Always `"split"`. */
  format: "split";
}

/** Bytes taken by the available ring of a queue of `size` entries (with `used_event`). */
export function availRingSize(size: number): number {
  return 6 + 2 * size;
}

/** Bytes taken by the used ring of a queue of `size` entries (with `avail_event`). */
export function usedRingSize(size: number): number {
  return 6 + 8 * size;
}

// A chain broke a rule: it is consumed and goes back to the driver with length 0.
function chainError(head: number, code: QueueError["code"], msg: string): never {
  throw new QueueError(code, `${msg} (chain ${head})`, { head });
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
 * aligned `Uint16Array` over the ring: `Atomics.load(avail.idx)` happens
 * before the ring entries and descriptors it covers are read (the read barrier of
 * virtio 1.2 §2.7.13.1 seen from the device; one load covers every entry the
 * driver had published, so `pop` loads it again only once it has taken them
 * all), `Atomics.store(used.idx)` happens
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
export class SplitQueue implements Virtqueue {
  /** The ring format. */
  readonly format = "split" as const;
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
  /** Whether VIRTIO_F_IN_ORDER is in effect (used entries batched, see `flushUsed`). */
  inOrder = false;
  // Writable bytes of each head handed out, and the in-order batch not yet published.
  readonly #writable: Uint32Array;
  #batch = 0;
  #batchHead = 0;
  #batchLen = 0;
  #nextAvail = 0;
  // The last avail.idx read: the entries up to it are known to be published, so `pop` reads
  // avail.idx again (one Atomics.load) only once it has taken all of them.
  #availSeen = 0;
  #nextUsed = 0;
  #signalledUsed: number | undefined;
  #broken: QueueError | undefined;
  // Cached resolution of the three rings in `#mem`.
  #mem: GuestMemory | undefined;
  // Views over exactly the three rings, so that every offset into them is a small integer
  // (see memory/_int.ts for why that matters), whatever the rings' place in a large region.
  #descView!: DataView;
  #availView!: DataView;
  #availU16!: Uint16Array; // [0] flags, [1] idx, [2 + i] ring[i], [2 + size] used_event
  #usedView!: DataView;
  #usedU16!: Uint16Array; // [0] flags, [1] idx, [2 + 4 * size] avail_event
  readonly #table = new DescriptorTable();
  readonly #builder = new ChainBuilder();

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
    this.#writable = new Uint32Array(maxSize);
  }

  /** Next available-ring index the device will read (wraps at 2^16). */
  get nextAvail(): number {
    return this.#nextAvail;
  }
  set nextAvail(v: number) {
    this.#nextAvail = v & 0xffff;
    this.#availSeen = this.#nextAvail;
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
    this.inOrder = (features & (1n << BigInt(VIRTIO_F_IN_ORDER))) !== 0n;
  }

  /** Return to the state after device reset (virtio 1.2 §2.4). */
  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.#addr.fill(0);
    this.eventIdx = false;
    this.indirect = false;
    this.inOrder = false;
    this.#batch = 0;
    this.#nextAvail = 0;
    this.#availSeen = 0;
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
      const at = region.bytes.byteOffset + (addr - region.base);
      if (at % align !== 0) {
        throw new QueueError("InvalidRing", `${name} is misaligned in its backing buffer`, {
          fatal: true,
        });
      }
      // Views over the area alone (its start is even, checked above, and so is its length).
      return {
        view: new DataView(region.bytes.buffer, at, len),
        u16: new Uint16Array(region.bytes.buffer, at, len >> 1),
      };
    };
    // virtio 1.2 §2.7: descriptor table 16-aligned, driver area 2, device area 4.
    // Each ring must lie inside one guest memory region, unlike the buffers and indirect tables
    // a chain points to, which may run on into an adjacent region: the rings are resolved once
    // here to views over their own bytes, and their 16-bit indices are accessed with Atomics on
    // a Uint16Array, which cannot span two backing buffers. A driver allocates each ring as one
    // block; one that crosses a region boundary is refused here, at activation, visibly.
    const d = area("descriptor table", this.descTable, DESCRIPTOR_SIZE * size, 16);
    const a = area("available ring", this.availRing, availRingSize(size), 2);
    const u = area("used ring", this.usedRing, usedRingSize(size), 4);
    this.#descView = d.view;
    this.#availView = a.view;
    this.#availU16 = a.u16;
    this.#usedView = u.view;
    this.#usedU16 = u.u16;
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
    return Atomics.load(this.#availU16, 1);
  }

  /**
   * The `used.idx` currently in guest memory.
   * @param mem Guest memory.
   * @returns The index.
   * @throws {QueueError} When the queue is not valid.
   */
  usedIdx(mem: GuestMemory): number {
    this.#ensure(mem);
    return Atomics.load(this.#usedU16, 1);
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
    const next = this.#nextAvail;
    if (next === this.#availSeen) {
      // Everything seen so far is taken: look at avail.idx again.
      const availIdx = Atomics.load(this.#availU16, 1);
      const pending = (availIdx - next) & 0xffff;
      if (pending === 0) return null;
      if (pending > size) {
        this.#fail(
          new QueueError(
            "AvailIdxJump",
            `avail.idx ${availIdx} is ${pending} entries past ${next} (size ${size})`,
            { fatal: true },
          ),
        );
      }
      this.#availSeen = availIdx;
    }
    const slot = this.#nextAvail & (size - 1);
    const head = this.#availView.getUint16(4 + 2 * slot, true);
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    if (head >= size) {
      this.#fail(
        new QueueError("HeadOutOfRange", `head ${head} >= queue size ${size}`, { fatal: true }),
      );
    }
    let chain: DescriptorChain;
    try {
      chain = this.#parse(mem, head);
    } catch (err) {
      // A refused chain goes back with an explicit length, never inside an in-order batch.
      this.#writable[head] = 0xffffffff;
      throw err;
    }
    this.#writable[head] = chain.writableBytes;
    return chain;
  }

  #parse(mem: GuestMemory, head: number): DescriptorChain {
    const chain = this.#builder;
    chain.start();
    const size = this.size;
    // The descriptor table is read in place while the chain stays in it; an indirect table
    // (which may run across regions) is read through `#table`.
    const ring = this.#descView;
    const table = this.#table;
    let entries = size;
    let ttl = size;
    let inIndirect = false;
    let idx = head;
    for (;;) {
      if (idx >= entries) {
        chainError(head, "DescriptorIndexOutOfRange", `descriptor ${idx} >= table size ${entries}`);
      }
      if (ttl-- === 0) chainError(head, "ChainTooLong", `more than ${entries} descriptors`);
      chain.descriptorCount++;
      let view = ring;
      let off = DESCRIPTOR_SIZE * idx;
      if (inIndirect) {
        table.at(idx);
        view = table.view;
        off = table.offset;
      }
      const lo = view.getUint32(off, true);
      const hi = view.getUint32(off + 4, true);
      const len = view.getUint32(off + 8, true);
      // Flags (bytes 12–13) and next (14–15) in one read.
      const flagsNext = view.getUint32(off + 12, true);
      const flags = flagsNext & 0xffff;
      if (hi > 0x1fffff) chainError(head, "DescriptorOutOfBounds", "address above 2^53");
      const addr = hi === 0 ? lo : hi * 0x1_0000_0000 + lo;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // virtio 1.2 §2.7.5.3.1 / §2.7.5.3.2
        if (!this.indirect) {
          chainError(head, "IndirectNotNegotiated", "INDIRECT flag without the feature");
        }
        if (inIndirect) {
          chainError(head, "NestedIndirect", "indirect descriptor in an indirect table");
        }
        if (flags & VIRTQ_DESC_F_NEXT) {
          chainError(head, "IndirectWithNext", "INDIRECT and NEXT both set");
        }
        if (len === 0 || len % DESCRIPTOR_SIZE !== 0) {
          chainError(head, "InvalidIndirectLength", `indirect table length ${len}`);
        }
        const n = len / DESCRIPTOR_SIZE;
        if (n > MAX_INDIRECT_ENTRIES) {
          chainError(head, "InvalidIndirectLength", `${n} indirect entries`);
        }
        // An indirect table is ordinary driver memory, read across adjacent regions;
        // a table over a hole is out of bounds.
        if (!table.span(mem, addr, len)) {
          chainError(
            head,
            "DescriptorOutOfBounds",
            `indirect table at 0x${addr.toString(16)} (+${len})`,
          );
        }
        entries = n;
        ttl = n;
        inIndirect = true;
        idx = 0;
        continue;
      }
      const problem = chain.add(mem, addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (problem !== undefined) chainError(head, problem, chainProblem(problem, idx, addr, len));
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain.finish(mem, head);
      idx = flagsNext >>> 16;
    }
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
    if (this.inOrder) {
      // virtio 1.2 §2.7.9: buffers are used in order, so one used entry (the last buffer's)
      // can stand for a batch whose other buffers were filled completely. A buffer filled
      // less than completely ends its batch, with its own length.
      this.#batch++;
      this.#batchHead = head;
      this.#batchLen = len;
      if (len !== this.#writable[head]) this.flushUsed(mem);
      return;
    }
    this.#writeUsed(head, len, 1);
  }

  /**
   * Publish used entries held back by VIRTIO_F_IN_ORDER batching (a no-op otherwise).
   * `needsNotification` and `enableNotification` flush first, so callers need not.
   * @param mem Guest memory.
   * @throws {QueueError} When the queue is not valid.
   */
  flushUsed(mem: GuestMemory): void {
    if (this.#batch === 0) return;
    this.#ensure(mem);
    const n = this.#batch;
    this.#batch = 0;
    this.#writeUsed(this.#batchHead, this.#batchLen, n);
  }

  // One used element at the next used slot, then the index moved by `count` (release).
  #writeUsed(head: number, len: number, count: number): void {
    const slot = this.#nextUsed & (this.size - 1);
    const off = 4 + 8 * slot;
    const view = this.#usedView;
    view.setUint32(off, head, true);
    view.setUint32(off + 4, len >>> 0, true);
    const next = (this.#nextUsed + count) & 0xffff;
    this.#nextUsed = next;
    // Release: the element above is visible before the new index.
    Atomics.store(this.#usedU16, 1, next);
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
    this.flushUsed(mem);
    const view = this.#usedView;
    let next = this.#nextUsed;
    for (let i = 0; i < count; i++) {
      const off = 4 + 8 * (next & (this.size - 1));
      view.setUint32(off, heads[i], true);
      view.setUint32(off + 4, lens[i] >>> 0, true);
      next = (next + 1) & 0xffff;
    }
    this.#nextUsed = next;
    // Release: every element above is visible before the new index.
    Atomics.store(this.#usedU16, 1, next);
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
    this.flushUsed(mem);
    const used = this.#nextUsed;
    if (!this.eventIdx) {
      const flags = Atomics.load(this.#availU16, 0);
      return (flags & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    const old = this.#signalledUsed;
    this.#signalledUsed = used;
    if (old === undefined) return true;
    const usedEvent = Atomics.load(this.#availU16, 2 + this.size);
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
    this.flushUsed(mem);
    if (this.eventIdx) {
      Atomics.store(this.#usedU16, 2 + 4 * this.size, this.#nextAvail);
    } else {
      Atomics.store(this.#usedU16, 0, 0);
    }
    return Atomics.load(this.#availU16, 1) !== this.#nextAvail;
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
      Atomics.store(this.#usedU16, 0, VIRTQ_USED_F_NO_NOTIFY);
    }
  }

  /** Whether the indices moved from 0 (the rings were used before). */
  inUse(): boolean {
    return this.#nextAvail !== 0 || this.#nextUsed !== 0;
  }

  /** The next available index, as vhost-user's GET_VRING_BASE reports it. */
  vringBase(): number {
    return this.#nextAvail;
  }

  /**
   * Resume at `base` after the rings were set up again (a vhost-user backend restarting a
   * ring): the used index is what the used ring says, and when it is behind `base`, chains
   * were in flight when the previous server stopped: they are served again.
   * @param mem Guest memory.
   * @param base The next available index.
   * @throws {QueueError} When the queue is not valid.
   */
  resume(mem: GuestMemory, base: number): void {
    const used = this.usedIdx(mem);
    this.nextUsed = used;
    this.nextAvail = used !== (base & 0xffff) ? used : base;
  }

  /** A plain copy of the queue's state. */
  state(): SplitQueueState {
    return {
      format: "split",
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
