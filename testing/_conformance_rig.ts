/**
 * The instruments of the hostile-driver conformance suite and of the fuzzer: a work meter that
 * counts what one pass of a device does (chains taken, guest bytes touched), guest memory that
 * reports to it, and a watch over guest memory that finds every byte written outside the
 * ranges a device may write. Private to `testing/` (and the fuzzer).
 *
 * @module
 */

import { GuestMemory, type GuestRegion } from "../memory/guest_memory.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import type { DescriptorChain } from "../queue/chain.ts";

/** Thrown by the meter when a pass runs far past its budget, to stop a device that would not. */
export class BudgetOverrun extends Error {
  /**
   * Create it.
   * @param message What ran over.
   */
  constructor(message: string) {
    super(message);
    this.name = "BudgetOverrun";
  }
}

/** Limits of a {@linkcode WorkMeter}. */
export interface WorkLimits {
  /** Most chains one pass may take. */
  chains: number;
  /** Most guest bytes one pass may touch. */
  bytes: number;
}

/**
 * Counts the work of each *pass*: everything a device does in one synchronous stretch, from
 * the first chain it takes until the JavaScript stack empties (a microtask marks the end, so a
 * device that serves in a loop without yielding is one long pass, whoever called it). The
 * caller may also `cut()` between two of its own calls in one stretch.
 */
export class WorkMeter {
  /** Chains taken in the current pass (all queues). */
  chains = 0;
  /** Guest bytes touched in the current pass. */
  bytes = 0;
  /** Most chains any pass took from one queue. */
  maxChains = 0;
  /** Most guest bytes any pass touched. */
  maxBytes = 0;
  /** Passes seen. */
  passes = 0;
  /** Chains taken in all. */
  totalChains = 0;
  /** Whether counting is on (the harness turns it off around its own memory accesses). */
  enabled = true;
  /** The first overrun, when a pass went past its limits. */
  overrun: string | undefined;
  readonly limits: WorkLimits;
  #armed = false;
  #gen = 0;
  #calls = 0;
  // Chains taken in the current pass, by queue (a pass may serve several rings, each with a
  // budget of its own: vsock answers on rx what tx asked for).
  #perQueue: number[] = [];

  /**
   * Create it.
   * @param limits What one pass may do.
   */
  constructor(limits: WorkLimits) {
    this.limits = limits;
  }

  #arm(): void {
    if (this.#armed) return;
    this.#armed = true;
    this.chains = 0;
    this.bytes = 0;
    this.#calls = 0;
    this.#perQueue.fill(0);
    this.passes++;
    const gen = ++this.#gen;
    queueMicrotask(() => {
      if (this.#gen === gen) this.#armed = false;
    });
  }

  /** End the current pass now (the caller starts another piece of work in the same stretch). */
  cut(): void {
    this.#armed = false;
    this.#gen++;
  }

  /**
   * A `pop()` call: `taken` when it returned a chain or refused one.
   * @param taken Whether a chain was taken.
   * @param queue Which queue (a small number: the budget is per queue and pass).
   * @throws {BudgetOverrun} Far past the limit (ten times), to stop a runaway pass.
   */
  pop(taken: boolean, queue = 0): void {
    if (!this.enabled) return;
    this.#arm();
    this.#calls++;
    if (taken) {
      this.chains++;
      this.totalChains++;
      const n = (this.#perQueue[queue] ?? 0) + 1;
      this.#perQueue[queue] = n;
      if (n > this.maxChains) this.maxChains = n;
      if (n > this.limits.chains) {
        this.overrun ??= `a pass took ${n} chains from one queue (budget ${this.limits.chains})`;
      }
    }
    if (this.#calls > 40 * this.limits.chains + 100) {
      this.overrun ??= `a pass called pop() ${this.#calls} times (budget ${this.limits.chains})`;
      throw new BudgetOverrun(this.overrun);
    }
  }

  /**
   * Guest bytes touched.
   * @param n Bytes.
   * @throws {BudgetOverrun} Far past the limit (eight times), to stop a runaway pass.
   */
  touch(n: number): void {
    if (!this.enabled) return;
    this.#arm();
    this.bytes += n;
    if (this.bytes > this.maxBytes) this.maxBytes = this.bytes;
    if (this.bytes > this.limits.bytes) {
      this.overrun ??= `a pass touched ${this.bytes} guest bytes (budget ${this.limits.bytes})`;
      if (this.bytes > 8 * this.limits.bytes) throw new BudgetOverrun(this.overrun);
    }
  }

  /** Forget the counts (not the overrun). */
  resetCounts(): void {
    this.maxChains = 0;
    this.maxBytes = 0;
    this.passes = 0;
    this.totalChains = 0;
    this.cut();
  }
}

/**
 * Guest memory whose bulk accesses (zero-copy views, copies, fills: what chain cursors and
 * device code use on buffers) are counted by a {@linkcode WorkMeter}. Give it to the device;
 * the driver side uses a plain {@linkcode GuestMemory} over the same regions.
 */
export class MeteredMemory extends GuestMemory {
  /** The meter. */
  readonly meter: WorkMeter;

  /**
   * Create it.
   * @param regions The regions (shared with the driver's memory).
   * @param meter The meter.
   */
  constructor(regions: readonly GuestRegion[], meter: WorkMeter) {
    super(regions);
    this.meter = meter;
  }

  /**
   * A counted zero-copy view.
   * @param addr Guest address.
   * @param len Bytes.
   * @returns The view.
   */
  override slice(addr: number, len: number): Uint8Array {
    this.meter.touch(len);
    return super.slice(addr, len);
  }

  /**
   * A counted DataView.
   * @param addr Guest address.
   * @param len Bytes.
   * @returns The view.
   */
  override dataView(addr: number, len: number): DataView {
    this.meter.touch(len);
    return super.dataView(addr, len);
  }

  /**
   * A counted copy out.
   * @param addr Guest address.
   * @param dst Destination.
   */
  override read(addr: number, dst: Uint8Array): void {
    this.meter.touch(dst.length);
    super.read(addr, dst);
  }

  /**
   * A counted copy in.
   * @param addr Guest address.
   * @param src Source.
   */
  override write(addr: number, src: Uint8Array): void {
    this.meter.touch(src.length);
    super.write(addr, src);
  }

  /**
   * A counted fill.
   * @param addr Guest address.
   * @param len Bytes.
   * @param value Byte value.
   */
  override fill(addr: number, len: number, value = 0): void {
    this.meter.touch(len);
    super.fill(addr, len, value);
  }
}

const counted = new WeakMap<Virtqueue, number>();
let nextQueueId = 0;

/**
 * Count every `pop()` of a queue (idempotent), and call `after` with each chain taken.
 * @param q The device's queue object.
 * @param meter The meter.
 * @param after Called after each chain taken (a driver refilling the ring, say).
 */
export function meterQueue(
  q: Virtqueue,
  meter: WorkMeter,
  after?: (q: Virtqueue, chain: DescriptorChain | null) => void,
): void {
  if (counted.has(q)) return;
  const id = nextQueueId++ & 0xff;
  counted.set(q, id);
  const pop = q.pop.bind(q);
  const hooked = (mem: GuestMemory): DescriptorChain | null => {
    let chain: DescriptorChain | null;
    try {
      chain = pop(mem);
    } catch (err) {
      meter.pop(true, id);
      after?.(q, null);
      throw err;
    }
    meter.pop(chain !== null, id);
    if (chain !== null) after?.(q, chain);
    return chain;
  };
  q.pop = hooked;
}

/** Where a device wrote outside what it may write. */
export interface WriteViolation {
  /** Bytes written outside the allowed ranges. */
  count: number;
  /** The first few addresses. */
  addrs: number[];
}

/**
 * Watches guest memory (one region starting at guest address `base`) for writes outside a set
 * of allowed ranges: `arm()` takes a snapshot, the harness `sync()`s what it writes itself, and
 * `check()` compares, reporting bytes that changed outside the ranges and catching up the
 * snapshot.
 */
export class MemoryWatch {
  readonly #bytes: Uint8Array;
  readonly #base: number;
  readonly #snap: Uint8Array;
  readonly #cur32: Int32Array;
  readonly #snap32: Int32Array;
  #ranges: [number, number][] = [];
  #sorted = true;

  /**
   * Watch `bytes`, which hold guest addresses from `base`.
   * @param bytes The region's bytes (length a multiple of 4, 4-aligned in its buffer).
   * @param base Guest address of `bytes[0]`.
   */
  constructor(bytes: Uint8Array, base = 0) {
    if (bytes.length % 4 !== 0 || bytes.byteOffset % 4 !== 0) {
      throw new RangeError("A watched region must be a 4-aligned multiple of 4 bytes");
    }
    this.#bytes = bytes;
    this.#base = base;
    this.#snap = new Uint8Array(bytes.length);
    this.#cur32 = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
    this.#snap32 = new Int32Array(this.#snap.buffer);
  }

  /** Snapshot memory and forget the allowed ranges. */
  arm(): void {
    this.resnap();
    this.clearRanges();
  }

  /** Snapshot memory, keeping the allowed ranges. */
  resnap(): void {
    this.#snap.set(this.#bytes);
  }

  /** Forget the allowed ranges. */
  clearRanges(): void {
    this.#ranges = [];
    this.#sorted = true;
  }

  /**
   * The harness wrote `[addr, addr + len)` itself: take it into the snapshot.
   * @param addr Guest address.
   * @param len Bytes.
   */
  sync(addr: number, len: number): void {
    const start = Math.max(0, addr - this.#base);
    const end = Math.min(this.#bytes.length, addr - this.#base + len);
    if (end > start) this.#snap.set(this.#bytes.subarray(start, end), start);
  }

  /**
   * Let the device write `[addr, addr + len)`; ranges outside the region are clipped.
   * @param addr Guest address.
   * @param len Bytes.
   */
  allow(addr: number, len: number): void {
    if (!Number.isFinite(addr) || !Number.isFinite(len) || len <= 0) return;
    const start = Math.max(0, addr - this.#base);
    const end = Math.min(this.#bytes.length, addr - this.#base + len);
    if (end <= start) return;
    this.#ranges.push([start, end]);
    this.#sorted = false;
  }

  #merge(): [number, number][] {
    if (this.#sorted) return this.#ranges;
    const r = this.#ranges.sort((a, b) => a[0] - b[0]);
    const out: [number, number][] = [];
    for (const x of r) {
      const last = out[out.length - 1];
      if (last !== undefined && x[0] <= last[1]) last[1] = Math.max(last[1], x[1]);
      else out.push([x[0], x[1]]);
    }
    this.#ranges = out;
    this.#sorted = true;
    return out;
  }

  /**
   * Compare memory with the snapshot: every changed byte outside the allowed ranges is a
   * violation. The snapshot catches up with memory.
   * @returns The violations (count 0 when none).
   */
  check(): WriteViolation {
    const cur = this.#cur32;
    const snap = this.#snap32;
    const ranges = this.#merge();
    const out: WriteViolation = { count: 0, addrs: [] };
    const n = cur.length;
    let r = 0;
    for (let i = 0; i < n; i++) {
      if (cur[i] === snap[i]) continue;
      const off = i << 2;
      for (let b = off; b < off + 4; b++) {
        if (this.#bytes[b] === this.#snap[b]) continue;
        while (r < ranges.length && ranges[r][1] <= b) r++;
        const inside = r < ranges.length && ranges[r][0] <= b;
        if (!inside) {
          out.count++;
          if (out.addrs.length < 8) out.addrs.push(this.#base + b);
        }
      }
      snap[i] = cur[i];
    }
    return out;
  }
}

/**
 * A {@linkcode MemoryWatch} over each region of a guest memory, used as one.
 */
export class RegionsWatch {
  readonly #watches: MemoryWatch[];

  /**
   * Watch every region of `memory` (each a 4-aligned multiple of 4 bytes).
   * @param memory The memory.
   */
  constructor(memory: GuestMemory) {
    this.#watches = memory.regions.map((r) => new MemoryWatch(r.bytes, r.base));
  }

  /** Snapshot memory and forget the allowed ranges. */
  arm(): void {
    for (const w of this.#watches) w.arm();
  }

  /** Snapshot memory, keeping the allowed ranges. */
  resnap(): void {
    for (const w of this.#watches) w.resnap();
  }

  /** Forget the allowed ranges. */
  clearRanges(): void {
    for (const w of this.#watches) w.clearRanges();
  }

  /**
   * The harness wrote `[addr, addr + len)`.
   * @param addr Guest address.
   * @param len Bytes.
   */
  sync(addr: number, len: number): void {
    for (const w of this.#watches) w.sync(addr, len);
  }

  /**
   * Let the device write `[addr, addr + len)`.
   * @param addr Guest address.
   * @param len Bytes.
   */
  allow(addr: number, len: number): void {
    for (const w of this.#watches) w.allow(addr, len);
  }

  /**
   * Compare every region with its snapshot.
   * @returns The violations of all regions.
   */
  check(): WriteViolation {
    const out: WriteViolation = { count: 0, addrs: [] };
    for (const w of this.#watches) {
      const v = w.check();
      out.count += v.count;
      for (const a of v.addrs) if (out.addrs.length < 8) out.addrs.push(a);
    }
    return out;
  }
}
