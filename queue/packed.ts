/**
 * The packed virtqueue, device side (virtio 1.2 §2.8): one descriptor ring written by both
 * sides, told apart by the AVAIL/USED flag bits and the two ring wrap counters, and two event
 * suppression structures.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { DescriptorChain } from "./chain.ts";
import { QueueError, type QueueErrorCode } from "./error.ts";
import { ChainBuilder, chainProblem, DescriptorTable } from "./_chain_builder.ts";
import type { Virtqueue, VirtqueueState } from "./virtqueue.ts";
import {
  DESCRIPTOR_SIZE,
  MAX_INDIRECT_ENTRIES,
  MAX_QUEUE_SIZE,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "./split.ts";

/** Descriptor made available by the driver (matches the driver's wrap counter). */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
/** Descriptor used by the device (matches the device's wrap counter). */
export const VIRTQ_DESC_F_USED = 1 << 15;
/** Event suppression: notify. */
export const RING_EVENT_FLAGS_ENABLE = 0x0;
/** Event suppression: do not notify. */
export const RING_EVENT_FLAGS_DISABLE = 0x1;
/** Event suppression: notify when the given descriptor is reached (with EVENT_IDX). */
export const RING_EVENT_FLAGS_DESC = 0x2;
/** Bytes of an event suppression structure. */
export const EVENT_SUPPRESSION_SIZE = 4;

// virtio 1.2 §2.8.1: available when AVAIL matches the wrap counter and USED does not.
function isAvail(flags: number, wrap: number): boolean {
  return (flags & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) ===
    (wrap !== 0 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED);
}

/**
 * The device side of one packed virtqueue. Same interface as {@linkcode SplitQueue}: devices
 * pop validated chains and add used ones without knowing the format.
 *
 * Positions (`nextAvail`, `nextUsed`) carry the ring index in bits 0–14 and the wrap counter
 * in bit 15, as vhost-user's vring base does. A chain's `head` is its buffer id (virtio 1.2
 * §2.8.6: the id of the last descriptor of the list); ids must be below the queue size, and the
 * queue remembers how many ring descriptors each id's list took so that `addUsed` can skip
 * them (§2.8.7).
 *
 * Memory ordering: the driver makes a list available by storing the first descriptor's flags
 * last; the device loads those flags with `Atomics.load` before reading anything else of the
 * list (acquire), and writes a used descriptor's id and length before storing its flags with
 * `Atomics.store` (release), which also orders it before the following load of the driver's
 * event suppression structure (§2.8.21).
 *
 * @example Serve a queue
 * ```ts ignore
 * let chain;
 * while ((chain = queue.pop(mem)) !== null) queue.addUsed(mem, chain.head, chain.writer.write(reply));
 * if (queue.needsNotification(mem)) notifier.notify();
 * ```
 */
export class PackedQueue implements Virtqueue {
  /** The ring format. */
  readonly format = "packed" as const;
  /** Maximum size the device offers. */
  readonly maxSize: number;
  /** Size the driver chose (any value from 1 to `maxSize`: no power-of-two rule). */
  size: number;
  /** Whether the driver marked the queue ready. */
  ready = false;
  /** Whether VIRTIO_F_EVENT_IDX is in effect (RING_EVENT_FLAGS_DESC). */
  eventIdx = false;
  /** Whether VIRTIO_F_INDIRECT_DESC is in effect. */
  indirect = false;
  /** Whether VIRTIO_F_IN_ORDER is in effect (used descriptors batched, see `flushUsed`). */
  inOrder = false;
  #addr = new Uint32Array(6);
  // Writable bytes of each id in flight, and the in-order batch not yet published.
  readonly #writable: Uint32Array;
  #batchDescs = 0;
  #batchId = 0;
  #batchLen = 0;
  #availIdx = 0;
  #availWrap = 1;
  #usedIdx = 0;
  #usedWrap = 1;
  #lastAvail = 0; // for undoPop: position and wrap before the last pop
  #lastAvailWrap = 1;
  // Ring descriptors each buffer id's list took, for skipping on addUsed.
  #listLen: Uint16Array;
  // Scratch of addUsedMany: ids already seen in one call.
  readonly #marks: Uint8Array;
  #signalled: number | undefined; // used position at the last notification decision
  #broken: QueueError | undefined;
  #mem: GuestMemory | undefined;
  // Views over exactly the ring and the two structures, so that every offset into them is a
  // small integer (see memory/_int.ts), whatever their place in a large region.
  #ringView!: DataView;
  #ringU16!: Uint16Array; // descriptor i's flags at [8 * i + 7]
  #driverEvent!: Uint16Array; // [0] off_wrap, [1] flags
  #deviceEvent!: Uint16Array;
  readonly #table = new DescriptorTable();
  readonly #builder = new ChainBuilder();

  /**
   * Create it.
   * @param maxSize Largest size the device accepts: 1 to 32768.
   * @throws {RangeError} When `maxSize` is out of range.
   */
  constructor(maxSize: number) {
    if (!Number.isInteger(maxSize) || maxSize < 1 || maxSize > MAX_QUEUE_SIZE) {
      throw new RangeError(`Queue max size must be 1 to 32768, got ${maxSize}`);
    }
    this.maxSize = maxSize;
    this.size = maxSize;
    this.#listLen = new Uint16Array(maxSize);
    this.#marks = new Uint8Array(maxSize);
    this.#writable = new Uint32Array(maxSize);
  }

  /** Next available position: index in bits 0–14, wrap counter in bit 15. */
  get nextAvail(): number {
    return this.#availIdx | (this.#availWrap << 15);
  }
  set nextAvail(v: number) {
    this.#availIdx = (v & 0x7fff) % Math.max(this.size, 1);
    this.#availWrap = (v >> 15) & 1;
  }

  /** Next used position: index in bits 0–14, wrap counter in bit 15. */
  get nextUsed(): number {
    return this.#usedIdx | (this.#usedWrap << 15);
  }
  set nextUsed(v: number) {
    this.#usedIdx = (v & 0x7fff) % Math.max(this.size, 1);
    this.#usedWrap = (v >> 15) & 1;
    this.#signalled = undefined;
  }

  /** The fatal error that stopped this queue, if any. */
  get broken(): QueueError | undefined {
    return this.#broken;
  }

  /** Guest address of the descriptor ring. */
  get descTable(): number {
    return this.#addr[1] * 0x1_0000_0000 + this.#addr[0];
  }
  set descTable(addr: number) {
    this.setDescTableAddress(addr % 0x1_0000_0000, Math.floor(addr / 0x1_0000_0000));
  }

  /** Guest address of the driver event suppression structure (driver area). */
  get availRing(): number {
    return this.#addr[3] * 0x1_0000_0000 + this.#addr[2];
  }
  set availRing(addr: number) {
    this.setAvailRingAddress(addr % 0x1_0000_0000, Math.floor(addr / 0x1_0000_0000));
  }

  /** Guest address of the device event suppression structure (device area). */
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
   * Set the descriptor ring address, or one half of it.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setDescTableAddress(low?: number, high?: number): void {
    this.#setHalves(0, low, high);
  }

  /**
   * Set the driver event suppression address, or one half of it.
   * @param low Bits 0–31.
   * @param high Bits 32–63.
   */
  setAvailRingAddress(low?: number, high?: number): void {
    this.#setHalves(2, low, high);
  }

  /**
   * Set the device event suppression address, or one half of it.
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

  /** Return to the state after device reset: both wrap counters at 1 (virtio 1.2 §2.8.1). */
  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.#addr.fill(0);
    this.eventIdx = false;
    this.indirect = false;
    this.inOrder = false;
    this.#batchDescs = 0;
    this.#availIdx = 0;
    this.#availWrap = 1;
    this.#usedIdx = 0;
    this.#usedWrap = 1;
    this.#lastAvail = 0;
    this.#lastAvailWrap = 1;
    this.#listLen.fill(0);
    this.#signalled = undefined;
    this.#broken = undefined;
    this.#mem = undefined;
  }

  /**
   * Check size and placement (virtio 1.2 §2.8.10: ring 16-aligned, 16 bytes per entry; event
   * suppression structures 4-aligned, 4 bytes).
   * @param mem Guest memory.
   * @throws {QueueError} `QueueNotReady`, `InvalidSize` or `InvalidRing`.
   */
  validate(mem: GuestMemory): void {
    if (!this.ready) throw new QueueError("QueueNotReady", "queue is not ready", { fatal: true });
    const size = this.size;
    if (!Number.isInteger(size) || size < 1 || size > this.maxSize) {
      throw new QueueError("InvalidSize", `queue size ${size} (max ${this.maxSize})`, {
        fatal: true,
      });
    }
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
      return {
        view: new DataView(region.bytes.buffer, at, len),
        u16: new Uint16Array(region.bytes.buffer, at, len >> 1),
      };
    };
    const d = area("descriptor ring", this.descTable, DESCRIPTOR_SIZE * size, 16);
    const drv = area("driver event suppression", this.availRing, EVENT_SUPPRESSION_SIZE, 4);
    const dev = area("device event suppression", this.usedRing, EVENT_SUPPRESSION_SIZE, 4);
    this.#ringView = d.view;
    this.#ringU16 = d.u16;
    this.#driverEvent = drv.u16;
    this.#deviceEvent = dev.u16;
    this.#mem = mem;
    if (this.#availIdx >= size) this.#availIdx %= size;
    if (this.#usedIdx >= size) this.#usedIdx %= size;
  }

  /**
   * Whether the queue is ready and its rings are valid in `mem`.
   * @param mem Guest memory.
   * @returns The answer.
   */
  isValid(mem: GuestMemory): boolean {
    try {
      this.validate(mem);
      return true;
    } catch {
      return false;
    }
  }

  #ensure(mem: GuestMemory): void {
    if (this.#broken !== undefined) throw this.#broken;
    if (this.#mem !== mem) this.validate(mem);
  }

  #fail(err: QueueError): never {
    if (err.fatal) this.#broken = err;
    throw err;
  }

  #flags(index: number): number {
    return Atomics.load(this.#ringU16, 7 + 8 * index);
  }

  /**
   * Whether the driver has made a buffer available that the device has not taken.
   * @param mem Guest memory.
   * @returns `true` when `pop` would return a chain (or throw for it).
   * @throws {QueueError} When the queue is not valid.
   */
  hasPending(mem: GuestMemory): boolean {
    this.#ensure(mem);
    return isAvail(this.#flags(this.#availIdx), this.#availWrap);
  }

  /**
   * Take the next available list. A list whose later descriptors are not made available, or
   * whose buffer id is not below the queue size, breaks the queue (fatal); a list with a bad
   * buffer is consumed and reported with its id as `head` (return it with length 0).
   * @param mem Guest memory.
   * @returns The chain, or `null` when nothing is available.
   * @throws {QueueError} For every violation of the ring rules.
   */
  pop(mem: GuestMemory): DescriptorChain | null {
    this.#ensure(mem);
    // Acquire: the driver stores the first descriptor's flags last (virtio 1.2 §2.8.21.1), so
    // once they read available, the rest of the list is visible.
    const flags = Atomics.load(this.#ringU16, 7 + 8 * this.#availIdx);
    if (!isAvail(flags, this.#availWrap)) return null;
    return this.#take(mem, flags);
  }

  // Take the list at the available position, whose first flags (`first`) read available.
  #take(mem: GuestMemory, first: number): DescriptorChain {
    const size = this.size;
    const start = this.#availIdx;
    const startWrap = this.#availWrap;
    let flags = first;
    // One pass over the list: its extent and buffer id (the id of its last descriptor,
    // §2.8.6), and its buffers. A broken buffer rule is remembered and reported once the id
    // is known; a list that is not wholly available or never ends breaks the queue.
    const view = this.#ringView;
    const chain = this.#builder;
    chain.start();
    let idx = start;
    let wrap = startWrap;
    let count = 0;
    let id = 0;
    let problem: QueueErrorCode | undefined;
    let problemMsg = "";
    let indirectAddr = -1;
    let indirectLen = 0;
    for (;;) {
      if (count === size) {
        this.#fail(
          new QueueError("ChainTooLong", `list longer than the ring (${size})`, { fatal: true }),
        );
      }
      const off = DESCRIPTOR_SIZE * idx;
      // Buffer id (bytes 12–13) and flags (14–15) in one read.
      const idFlags = view.getUint32(off + 12, true);
      if (count > 0) {
        flags = idFlags >>> 16;
        if (!isAvail(flags, wrap)) {
          this.#fail(
            new QueueError(
              "InvalidChain",
              `descriptor ${idx} of the list at ${start} is not available`,
              { fatal: true },
            ),
          );
        }
      }
      count++;
      id = idFlags & 0xffff;
      if (problem === undefined) {
        const lo = view.getUint32(off, true);
        const hi = view.getUint32(off + 4, true);
        const len = view.getUint32(off + 8, true);
        chain.descriptorCount++;
        if (hi > 0x1fffff) {
          problem = "DescriptorOutOfBounds";
          problemMsg = "address above 2^53";
        } else {
          const addr = hi === 0 ? lo : hi * 0x1_0000_0000 + lo;
          if (flags & VIRTQ_DESC_F_INDIRECT) {
            // virtio 1.2 §2.8.19: only with the feature, and alone in its list.
            if (!this.indirect) {
              problem = "IndirectNotNegotiated";
              problemMsg = "INDIRECT flag without the feature";
            } else if (count !== 1 || (flags & VIRTQ_DESC_F_NEXT) !== 0) {
              problem = "IndirectWithNext";
              problemMsg = "INDIRECT descriptor in a list";
            } else {
              indirectAddr = addr;
              indirectLen = len;
            }
          } else {
            problem = chain.add(mem, addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
            if (problem !== undefined) problemMsg = chainProblem(problem, idx, addr, len);
          }
        }
      }
      idx++;
      if (idx === size) {
        idx = 0;
        wrap ^= 1;
      }
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
    }
    if (id >= size) {
      this.#fail(
        new QueueError("HeadOutOfRange", `buffer id ${id} >= queue size ${size}`, {
          fatal: true,
        }),
      );
    }
    this.#lastAvail = start;
    this.#lastAvailWrap = startWrap;
    this.#availIdx = idx;
    this.#availWrap = wrap;
    this.#listLen[id] = count;
    // A refused list goes back with an explicit length, never inside an in-order batch.
    this.#writable[id] = 0xffffffff;
    if (problem !== undefined) {
      throw new QueueError(problem, `${problemMsg} (buffer ${id})`, { head: id });
    }
    if (indirectAddr >= 0) this.#indirect(mem, indirectAddr, indirectLen, id);
    const result = chain.finish(mem, id);
    this.#writable[id] = result.writableBytes;
    return result;
  }

  // An indirect table: consecutive packed descriptors; only WRITE counts (virtio 1.2 §2.8.7).
  #indirect(mem: GuestMemory, addr: number, len: number, id: number): void {
    const bad = (code: QueueErrorCode, msg: string): never => {
      throw new QueueError(code, `${msg} (buffer ${id})`, { head: id });
    };
    if (len === 0 || len % DESCRIPTOR_SIZE !== 0) {
      bad("InvalidIndirectLength", `indirect table length ${len}`);
    }
    const n = len / DESCRIPTOR_SIZE;
    if (n > MAX_INDIRECT_ENTRIES) bad("InvalidIndirectLength", `${n} indirect entries`);
    const table = this.#table;
    if (!table.span(mem, addr, len)) {
      bad("DescriptorOutOfBounds", `indirect table at 0x${addr.toString(16)} (+${len})`);
    }
    const chain = this.#builder;
    for (let i = 0; i < n; i++) {
      table.at(i);
      const v = table.view;
      const o = table.offset;
      const lo = v.getUint32(o, true);
      const hi = v.getUint32(o + 4, true);
      const blen = v.getUint32(o + 8, true);
      const flags = v.getUint16(o + 14, true);
      chain.descriptorCount++;
      if (hi > 0x1fffff) bad("DescriptorOutOfBounds", "address above 2^53");
      const baddr = hi === 0 ? lo : hi * 0x1_0000_0000 + lo;
      const problem = chain.add(mem, baddr, blen, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (problem !== undefined) bad(problem, chainProblem(problem, i, baddr, blen));
    }
  }

  /** Put back the chain just popped: the next `pop` returns it again. */
  undoPop(): void {
    this.#availIdx = this.#lastAvail;
    this.#availWrap = this.#lastAvailWrap;
  }

  /**
   * Write a used descriptor for buffer `head` at the next used position and skip the rest of
   * its list (virtio 1.2 §2.8.7).
   * @param mem Guest memory.
   * @param head The buffer id (from `pop`).
   * @param len Bytes the device wrote.
   * @throws {QueueError} `InvalidUsedHead` for an id that was never handed out.
   */
  addUsed(mem: GuestMemory, head: number, len: number): void {
    this.#ensure(mem);
    const count = Number.isInteger(head) && head >= 0 && head < this.size ? this.#listLen[head] : 0;
    if (count === 0) {
      throw new QueueError("InvalidUsedHead", `buffer id ${head} is not in flight`);
    }
    this.#listLen[head] = 0;
    if (this.inOrder) {
      // virtio 1.2 §2.8.8: one used descriptor (the last buffer's id) for a batch of buffers
      // used in order, the others completely; the ring skips every list of the batch.
      this.#batchDescs += count;
      this.#batchId = head;
      this.#batchLen = len;
      if (len !== this.#writable[head]) this.flushUsed(mem);
      return;
    }
    this.#writeUsed(head, len, count);
  }

  /**
   * Return several buffers so that the driver sees all of them or none: every used
   * descriptor is written, the first one's flags last (the driver reads used descriptors in
   * ring order, so it sees none of them before the first). A batch held back by
   * VIRTIO_F_IN_ORDER goes first.
   * @param mem Guest memory.
   * @param heads Buffer ids, in order.
   * @param lens Bytes written into each.
   * @param count How many of `heads`/`lens` (default all of `heads`).
   * @throws {QueueError} `InvalidUsedHead` for an id not in flight, or given twice (nothing is
   *   published).
   */
  addUsedMany(
    mem: GuestMemory,
    heads: readonly number[],
    lens: readonly number[],
    count: number = heads.length,
  ): void {
    this.#ensure(mem);
    const listLen = this.#listLen;
    const marks = this.#marks;
    // Check every id, marking each (a second use of the same id then fails the check).
    for (let i = 0; i < count; i++) {
      const head = heads[i];
      const ok = Number.isInteger(head) && head >= 0 && head < this.size &&
        listLen[head] !== 0 && marks[head] === 0;
      if (!ok) {
        for (let j = 0; j < i; j++) marks[heads[j]] = 0;
        throw new QueueError("InvalidUsedHead", `buffer id ${head} is not in flight`);
      }
      marks[head] = 1;
    }
    this.flushUsed(mem);
    const view = this.#ringView;
    const u16 = this.#ringU16;
    let idx = this.#usedIdx;
    let wrap = this.#usedWrap;
    let firstFlags = 0;
    const first = idx;
    for (let i = 0; i < count; i++) {
      const head = heads[i];
      const len = lens[i];
      const descs = listLen[head];
      listLen[head] = 0;
      marks[head] = 0;
      const off = DESCRIPTOR_SIZE * idx;
      view.setUint32(off + 8, len >>> 0, true);
      view.setUint16(off + 12, head, true);
      const flags = (wrap !== 0 ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0) |
        (len > 0 ? VIRTQ_DESC_F_WRITE : 0);
      if (i === 0) firstFlags = flags;
      else Atomics.store(u16, 7 + 8 * idx, flags);
      idx += descs;
      if (idx >= this.size) {
        idx -= this.size;
        wrap ^= 1;
      }
    }
    // Release: everything above is visible before the first descriptor turns used.
    if (count > 0) Atomics.store(u16, 7 + 8 * first, firstFlags);
    this.#usedIdx = idx;
    this.#usedWrap = wrap;
  }

  /**
   * Publish the used descriptor held back by VIRTIO_F_IN_ORDER batching (a no-op otherwise).
   * `needsNotification` and `enableNotification` flush first.
   * @param mem Guest memory.
   * @throws {QueueError} When the queue is not valid.
   */
  flushUsed(mem: GuestMemory): void {
    if (this.#batchDescs === 0) return;
    this.#ensure(mem);
    const n = this.#batchDescs;
    this.#batchDescs = 0;
    this.#writeUsed(this.#batchId, this.#batchLen, n);
  }

  #writeUsed(head: number, len: number, count: number): void {
    const idx = this.#usedIdx;
    const off = DESCRIPTOR_SIZE * idx;
    const view = this.#ringView;
    view.setUint32(off + 8, len >>> 0, true);
    view.setUint16(off + 12, head, true);
    const wrapBits = this.#usedWrap !== 0 ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0;
    // Release: id and length are visible before the flags that make the descriptor used.
    Atomics.store(
      this.#ringU16,
      7 + 8 * idx,
      wrapBits | (len > 0 ? VIRTQ_DESC_F_WRITE : 0),
    );
    let next = idx + count;
    if (next >= this.size) {
      next -= this.size;
      this.#usedWrap ^= 1;
    }
    this.#usedIdx = next;
  }

  /**
   * Whether the driver wants a used-buffer notification now (virtio 1.2 §2.8.10 and the
   * driver event suppression structure). Call once after a batch of `addUsed`.
   * @param mem Guest memory.
   * @returns `true` when the device must notify the driver.
   * @throws {QueueError} When the queue is not valid.
   */
  needsNotification(mem: GuestMemory): boolean {
    this.#ensure(mem);
    this.flushUsed(mem);
    const u16 = this.#driverEvent;
    const flags = Atomics.load(u16, 1) & 0x3;
    const used = this.#usedIdx;
    const old = this.#signalled;
    this.#signalled = used;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.eventIdx) return true;
    if (old === undefined) return true;
    // The event descriptor, shifted one ring back when it belongs to the previous wrap, against
    // the used positions passed since the last decision (vring_need_event on ring positions).
    const offWrap = Atomics.load(u16, 0);
    let off = offWrap & 0x7fff;
    if ((offWrap >> 15) !== this.#usedWrap) off -= this.size;
    return ((used - off - 1) & 0xffff) < ((used - old) & 0xffff);
  }

  /**
   * Ask the driver to notify the device (device event suppression: ENABLE, or with EVENT_IDX
   * the next position to be made available), then report whether buffers arrived meanwhile.
   * @param mem Guest memory.
   * @returns `true` when a buffer is available that was not taken.
   * @throws {QueueError} When the queue is not valid.
   */
  enableNotification(mem: GuestMemory): boolean {
    this.#ensure(mem);
    this.flushUsed(mem);
    const u16 = this.#deviceEvent;
    if (this.eventIdx) {
      Atomics.store(u16, 0, this.#availIdx | (this.#availWrap << 15));
      Atomics.store(u16, 1, RING_EVENT_FLAGS_DESC);
    } else {
      Atomics.store(u16, 1, RING_EVENT_FLAGS_ENABLE);
    }
    return isAvail(this.#flags(this.#availIdx), this.#availWrap);
  }

  /**
   * Ask the driver not to notify the device.
   * @param mem Guest memory.
   * @throws {QueueError} When the queue is not valid.
   */
  disableNotification(mem: GuestMemory): void {
    this.#ensure(mem);
    Atomics.store(this.#deviceEvent, 1, RING_EVENT_FLAGS_DISABLE);
  }

  /** Whether the positions moved from their reset values (index 0, wrap counters 1). */
  inUse(): boolean {
    return this.nextAvail !== 1 << 15 || this.nextUsed !== 1 << 15;
  }

  /**
   * Where the device stands, as vhost-user reports it (QEMU's encoding): `nextAvail` in bits
   * 0–15, `nextUsed` in bits 16–31.
   * @returns The base.
   */
  vringBase(): number {
    return (this.nextAvail | (this.nextUsed << 16)) >>> 0;
  }

  /**
   * Resume at `base` after the rings were set up again: bits 0–15 the available position,
   * bits 16–31 the used position (QEMU sends both; chains between them are in flight and the
   * driver still expects their used descriptors).
   * @param mem Guest memory.
   * @param base The position to resume at.
   * @throws {QueueError} When the queue is not valid.
   */
  resume(mem: GuestMemory, base: number): void {
    this.#ensure(mem);
    const avail = base & 0xffff;
    this.nextAvail = avail;
    this.nextUsed = base >>> 16;
  }

  /** A plain copy of the queue's state. */
  state(): VirtqueueState {
    return {
      format: "packed",
      maxSize: this.maxSize,
      size: this.size,
      ready: this.ready,
      descTable: this.descTable,
      availRing: this.availRing,
      usedRing: this.usedRing,
      nextAvail: this.nextAvail,
      nextUsed: this.nextUsed,
      eventIdx: this.eventIdx,
      indirect: this.indirect,
    };
  }
}
