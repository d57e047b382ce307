/**
 * One device on the virtio-mmio transport with the instruments of the conformance suite: the
 * driver harnesses set it up, the cases attack it, and the harness checks what must hold
 * afterwards. Private to `testing/`.
 *
 * @module
 */

import process from "node:process";
import { setImmediate } from "node:timers";
import { GuestMemory } from "../memory/guest_memory.ts";
import { type MmioError, MmioRegister, MmioTransport } from "../transport/mmio.ts";
import {
  DEFAULT_SERVE_BUDGET,
  DEVICE_DRIVER_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  type VirtioDevice,
} from "../devices/device.ts";
import { usedRingSize, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import {
  DRIVER_OPT_IN_FEATURES,
  type DriverBuffer,
  type DriverQueue,
  type UsedEntry,
} from "./queue_driver.ts";
import type { PackedDriverQueue } from "./packed_driver.ts";
import { MmioDriver } from "./mmio_driver.ts";
import { MeteredMemory, meterQueue, RegionsWatch, WorkMeter } from "./_conformance_rig.ts";

/** A well-formed request, for the "a valid request afterwards still works" checks. */
export interface ConformanceRequest {
  /** Queue it goes on. */
  queue: number;
  /** The chain: readable buffers first, then writable ones. */
  buffers: DriverBuffer[];
  /**
   * Check what the device returned; a string says what is wrong (default: any used entry).
   * @param used The used entry (`written` holds the chain's writable bytes).
   */
  check?: (used: UsedEntry) => string | undefined;
}

/** What a device's conformance run may be told about it (all optional). */
export interface ConformanceHints {
  /** Name in reports (default: `device type N`). */
  name?: string;
  /** Queues attacked with malformed rings and chains (default: every queue). */
  queues?: readonly number[];
  /**
   * Queues the device takes buffers from only when it has something to put in them (receive
   * and event queues): a chain still waiting there is not a failure.
   */
  lazyQueues?: readonly number[];
  /**
   * Builds a well-formed request. Without it, "still works" only checks that the device
   * initialises again, and the cases that need a real request use writable-only chains.
   */
  validRequest?: () => ConformanceRequest;
  /**
   * A buffer for lazy queue `queue` (a receive buffer, an event buffer): before checking that a
   * valid request still works, the suite fills lazy queues with these, so a device that waits
   * for room to answer (vsock's replies, say) can go on.
   */
  lazyBuffer?: (queue: number) => DriverBuffer | undefined;
  /**
   * Make the device take buffers from lazy queue `queue` now (a frame arriving from its
   * backend, an event to deliver), so the attacks reach the device's own receive loops.
   * @param device The device.
   * @param queue A lazy queue.
   */
  stimulate?: (device: VirtioDevice, queue: number) => void;
  /** Most chains one pass may take (default {@linkcode DEFAULT_SERVE_BUDGET}'s). */
  maxChainsPerPass?: number;
  /** Most guest bytes one pass may touch (default twice {@linkcode DEFAULT_SERVE_BUDGET}'s). */
  maxBytesPerPass?: number;
  /** Guest memory size in bytes (default and least 4 MiB). */
  memorySize?: number;
  /**
   * Queue size the driver sets up (default: the device maximum, at most 256). Cases put
   * several chains on a ring at once: below 8 some of them do not fit.
   */
  queueSize?: number;
  /**
   * The device may keep chains it took without returning them for a while (a request waiting
   * for a lock, say): skip the check that every chain taken came back (default false).
   */
  holdsChains?: boolean;
  /** Release a device after its case (default: `device.remove?.()`). */
  cleanup?: (device: VirtioDevice) => void | Promise<void>;
}

/** Ring layout a case runs on. */
export type RingFormat = "split" | "packed";

/** Options of {@linkcode Rig.create}. */
export interface RigOptions {
  /** Ring format (default split). */
  format?: RingFormat;
  /** Driver features (default: all but the opt-in ones); the packed bit is added for packed. */
  features?: bigint;
  /** Initialise the device (default true); MMIO cases start from a reset device. */
  init?: boolean;
  /** virtio-mmio version (default 2). */
  version?: 1 | 2;
}

/** A factory of devices under test. */
export type DeviceFactory = () => VirtioDevice | Promise<VirtioDevice>;

const MIN_MEMORY = 4 << 20;
const QUEUE_RING_BASE = 0x10000;

/** A placed buffer: where the harness put it. */
export interface Placed {
  addr: number;
  len: number;
  writable: boolean;
}

/**
 * A device on the MMIO transport, its driver and the instruments.
 */
export class Rig {
  readonly device: VirtioDevice;
  readonly hints: ConformanceHints;
  /** Driver-side memory (uncounted). */
  readonly memory: GuestMemory;
  /** Device-side memory (counted). */
  readonly devMemory: MeteredMemory;
  readonly transport: MmioTransport;
  readonly driver: MmioDriver;
  readonly meter: WorkMeter;
  readonly watch: RegionsWatch;
  readonly format: RingFormat;
  /** Transport errors reported (driver misuse, device errors). */
  readonly errors: MmioError[] = [];
  /** What went wrong: the case fails when non-empty. */
  readonly failures: string[] = [];
  /** Notes for the report. */
  readonly notes: string[] = [];
  split: DriverQueue[] = [];
  packed: PackedDriverQueue[] = [];
  features: bigint;
  /** Called after each chain the device takes (a concurrent driver, say). */
  onPop: ((q: Virtqueue, chain: DescriptorChain | null) => void) | undefined;
  #refused: { queue: number; id: number; what: string }[] = [];
  // Writable buffers of the chains added through `addChain`, allowed again by each `arm`.
  #chainRanges: [number, number][] = [];
  #broken: { queue: number; what: string }[] = [];
  #hostile: number[] = [];
  #uncaught: unknown[] = [];
  #listeners: (() => void) | undefined;
  #interrupts = 0;

  private constructor(
    device: VirtioDevice,
    hints: ConformanceHints,
    format: RingFormat,
    version: 1 | 2 = 2,
  ) {
    this.device = device;
    this.hints = hints;
    this.format = format;
    const size = Math.max(MIN_MEMORY, hints.memorySize ?? 4 << 20) & ~0xfff;
    // Two adjacent regions, as a frontend may describe guest RAM: buffers that run from one
    // into the other are valid and must be served (the rings and the driver's buffer areas
    // are in the first).
    const half = size / 2;
    const lo = new ArrayBuffer(half);
    const hi = new ArrayBuffer(size - half);
    const layout = [{ base: 0, buffer: lo }, { base: half, buffer: hi }];
    this.memory = new GuestMemory(layout);
    this.meter = new WorkMeter({
      chains: hints.maxChainsPerPass ?? DEFAULT_SERVE_BUDGET.chains,
      bytes: hints.maxBytesPerPass ?? 2 * DEFAULT_SERVE_BUDGET.bytes,
    });
    this.devMemory = new MeteredMemory(
      new GuestMemory(layout).regions,
      this.meter,
    );
    this.watch = new RegionsWatch(this.memory);
    this.features = 0n;
    this.transport = new MmioTransport(device, this.devMemory, {
      version,
      interrupt: () => {
        this.#interrupts++;
      },
      onError: (e) => this.errors.push(e),
    });
    this.driver = new MmioDriver(this.transport, this.memory);
  }

  /**
   * Make a device and, unless told otherwise, initialise it as a driver would.
   * @param factory Makes the device.
   * @param hints What the suite knows about it.
   * @param options Ring format, features, version.
   * @returns The rig.
   */
  static async create(
    factory: DeviceFactory,
    hints: ConformanceHints,
    options: RigOptions = {},
  ): Promise<Rig> {
    const device = await factory();
    const rig = new Rig(device, hints, options.format ?? "split", options.version);
    rig.#listen();
    if (options.init ?? true) rig.init(options.features);
    return rig;
  }

  /** Memory size in bytes. */
  get memorySize(): number {
    return this.memory.totalSize;
  }

  /** Where the first memory region ends and the second begins. */
  get regionBoundary(): number {
    return this.memory.regions[0].end;
  }

  /** Interrupts raised so far. */
  get interrupts(): number {
    return this.#interrupts;
  }

  #listen(): void {
    const onError = (e: unknown) => this.#uncaught.push(e);
    process.on("uncaughtException", onError);
    process.on("unhandledRejection", onError);
    this.#listeners = () => {
      process.off("uncaughtException", onError);
      process.off("unhandledRejection", onError);
    };
  }

  /** Release the device and the process hooks. */
  async close(): Promise<void> {
    this.onPop = undefined;
    try {
      this.transport.writeU32(MmioRegister.Status, 0);
      if (this.hints.cleanup !== undefined) await this.hints.cleanup(this.device);
      else this.device.remove?.();
    } catch (err) {
      this.failures.push(`releasing the device threw: ${describe(err)}`);
    }
    // Timers the device cancelled must not fire; let anything due run while we still listen.
    await turn();
    this.#listeners?.();
    this.#listeners = undefined;
  }

  /**
   * Run a driver-side action; an exception escaping the transport or device is a failure.
   * @param what What is being done (for the failure message).
   * @param fn The action.
   * @returns Its result, or `undefined` when it threw.
   */
  call<T>(what: string, fn: () => T): T | undefined {
    try {
      return fn();
    } catch (err) {
      this.failures.push(`${what} threw: ${describe(err)}`);
      return undefined;
    }
  }

  /** Device status register. */
  status(): number {
    return this.transport.core.status;
  }

  /** Whether the device says it needs a reset. */
  needsReset(): boolean {
    return (this.status() & DEVICE_NEEDS_RESET) !== 0;
  }

  /** How many queues the device has (control queue included). */
  get queueCount(): number {
    return this.transport.queues.length;
  }

  /** Queues attacked. */
  attackQueues(): number[] {
    const all = this.transport.queues.map((_, i) => i);
    return [...(this.hints.queues ?? all)].filter((q) => q >= 0 && q < all.length);
  }

  /** Whether queue `q` is lazy (the device takes its buffers only when it has data). */
  isLazy(q: number): boolean {
    return this.hints.lazyQueues?.includes(q) ?? false;
  }

  /**
   * Negotiate and set up every queue (reset first), and count every pop.
   * @param features Driver features (default: all but the opt-in ones).
   * @returns Whether the device is live afterwards.
   */
  init(features?: bigint): boolean {
    const all = ~DRIVER_OPT_IN_FEATURES & 0xffff_ffff_ffff_ffffn;
    const f = features ?? all;
    const queueSize = this.hints.queueSize;
    const ok = this.call("initialising the device", () => {
      if (this.format === "packed") {
        this.packed = this.driver.initPacked({ features: f, queueSize });
        this.split = [];
      } else {
        this.split = this.driver.init({ features: f, queueSize });
        this.packed = [];
      }
      return true;
    });
    this.features = this.driver.features;
    this.#hostile = this.transport.queues.map((q) => q.size);
    this.instrument();
    return ok === true && (this.status() & DEVICE_DRIVER_OK) !== 0 && !this.needsReset();
  }

  /** Count pops on the transport's current queue objects (after every (re)initialisation). */
  instrument(): void {
    for (const q of this.transport.queues) {
      meterQueue(q, this.meter, (qq, c) => this.onPop?.(qq, c));
    }
  }

  /** Whether the driver negotiated indirect descriptors. */
  get indirect(): boolean {
    return (this.features & featureBit(VIRTIO_F_INDIRECT_DESC)) !== 0n;
  }

  /** Queue size of driver queue `q`. */
  size(q: number): number {
    return this.format === "packed" ? this.packed[q].size : this.split[q].size;
  }

  /**
   * A descriptor index for a hand-written chain, from the top of the table down (the driver
   * harness allocates from the bottom up).
   * @param q Queue.
   * @returns The index.
   */
  hostileIndex(q: number): number {
    const size = this.size(q);
    this.#hostile[q] = (this.#hostile[q] ?? size) - 1;
    if (this.#hostile[q] < size >>> 1) this.#hostile[q] = size - 1;
    return this.#hostile[q];
  }

  /**
   * Buffer space on queue `q`'s area.
   * @param q Queue.
   * @param len Bytes.
   * @param align Alignment.
   * @returns Guest address.
   */
  alloc(q: number, len: number, align = 8): number {
    return this.format === "packed"
      ? this.packed[q].alloc(Math.max(1, len), align)
      : this.split[q].alloc(Math.max(1, len), align);
  }

  /**
   * Place a request's buffers (readable bytes written) at addresses the harness knows.
   * @param q Queue whose area they come from.
   * @param buffers The buffers.
   * @returns The buffers with their addresses, and where they are.
   */
  place(q: number, buffers: DriverBuffer[]): { buffers: DriverBuffer[]; placed: Placed[] } {
    const out: DriverBuffer[] = [];
    const placed: Placed[] = [];
    for (const b of buffers) {
      if ("readable" in b) {
        const addr = b.at ?? this.alloc(q, b.readable.length);
        this.memory.write(addr, b.readable);
        out.push({ readable: b.readable, at: addr });
        placed.push({ addr, len: b.readable.length, writable: false });
      } else {
        const addr = b.at ?? this.alloc(q, b.writable);
        out.push({ writable: b.writable, at: addr });
        placed.push({ addr, len: b.writable, writable: true });
      }
    }
    return { buffers: out, placed };
  }

  /**
   * Add a request through the driver harness, allowing its writable buffers.
   * @param q Queue.
   * @param buffers The buffers.
   * @param options `indirect`, `publish`.
   * @returns The head (split) or buffer id (packed).
   */
  addChain(
    q: number,
    buffers: DriverBuffer[],
    options: { indirect?: boolean; publish?: boolean } = {},
  ): number {
    const { buffers: at, placed } = this.place(q, buffers);
    for (const p of placed) {
      if (!p.writable) continue;
      this.watch.allow(p.addr, p.len);
      this.#chainRanges.push([p.addr, p.len]);
    }
    if (this.format === "packed") return this.packed[q].addChain(at, options);
    return this.split[q].addChain(at, options);
  }

  /**
   * A request for the cases that need one: the hint's, or one writable 64-byte buffer.
   * @param q Queue (the hint's own queue wins when it has one).
   * @returns The request.
   */
  request(q?: number): ConformanceRequest {
    const v = this.hints.validRequest?.();
    if (v !== undefined && (q === undefined || v.queue === q)) return v;
    return { queue: q ?? 0, buffers: [{ writable: 64 }] };
  }

  /** Let the device write its used rings (and, packed, the descriptor rings and event areas). */
  allowUsedAreas(): void {
    if (this.format === "packed") {
      for (const p of this.packed) {
        this.watch.allow(p.descTable, 16 * p.size);
        this.watch.allow(p.usedRing, 4);
      }
    } else {
      for (const s of this.split) this.watch.allow(s.usedRing, usedRingSize(s.size));
    }
  }

  /** Start watching: snapshot memory, allow the used areas, zero the work counts. */
  arm(): void {
    this.watch.arm();
    this.allowUsedAreas();
    for (const [a, n] of this.#chainRanges) this.watch.allow(a, n);
    this.meter.resetCounts();
  }

  /**
   * Notify queue `q` (a new pass).
   * @param q Queue index (any value: hostile cases notify queues that do not exist).
   */
  kick(q: number): void {
    this.meter.cut();
    this.call(`notifying queue ${q}`, () => {
      if (q >= 0 && q < this.queueCount && (this.split[q] ?? this.packed[q]) !== undefined) {
        this.driver.kick(q, true);
      } else {
        this.transport.writeU32(MmioRegister.QueueNotify, q >>> 0);
      }
    });
    this.meter.cut();
  }

  /**
   * Give the device a reason to take buffers from lazy queue `q` (the hint's `stimulate`);
   * nothing for other queues.
   * @param q Queue.
   */
  stimulate(q: number): void {
    if (!this.isLazy(q) || this.hints.stimulate === undefined) return;
    this.meter.cut();
    this.call(`stimulating queue ${q}`, () => this.hints.stimulate!(this.device, q));
    this.meter.cut();
  }

  /**
   * A chain the device must refuse: returned with used length 0, or NEEDS_RESET.
   * @param queue Queue.
   * @param id Head (split) or buffer id (packed).
   * @param what Description.
   */
  expectRefused(queue: number, id: number, what: string): void {
    this.#refused.push({ queue, id, what });
  }

  /**
   * A ring the device cannot go on with: NEEDS_RESET is required.
   * @param queue Queue.
   * @param what Description.
   */
  expectBroken(queue: number, what: string): void {
    this.#broken.push({ queue, what });
  }

  #progress(): string {
    let s = `${this.meter.totalChains}`;
    for (const q of this.transport.queues) s += `,${q.nextAvail},${q.nextUsed}`;
    return s;
  }

  #pending(): boolean {
    for (let i = 0; i < this.queueCount; i++) {
      if (this.transport.core.hasContinuation(i)) return true;
    }
    return false;
  }

  /**
   * Let the device finish: turns of the event loop until nothing moves for a while (bounded).
   * @param maxTurns Most turns.
   */
  async settle(maxTurns = 300): Promise<void> {
    let quiet = 0;
    for (let t = 0; t < maxTurns && quiet < 4; t++) {
      const before = this.#progress();
      this.meter.cut();
      await turn(t % 4 === 3);
      this.meter.cut();
      if (this.#progress() === before && !this.#pending()) quiet++;
      else quiet = 0;
    }
  }

  /**
   * Take every used entry of queue `q` the driver has not taken.
   * @param q Queue.
   * @returns The entries.
   */
  takeUsed(q: number): UsedEntry[] {
    const out: UsedEntry[] = [];
    const d = this.format === "packed" ? this.packed[q] : this.split[q];
    if (d === undefined) return out;
    const guard = 4 * d.size + 16;
    for (let i = 0; i < guard; i++) {
      const e = this.call(`reading the used ring of queue ${q}`, () => d.takeUsed());
      if (e === undefined || e === null) break;
      out.push(e);
    }
    // Taking entries moves the driver's own event fields (used_event, or the packed driver
    // event suppression area): the harness wrote them, not the device.
    if (this.format === "packed") this.watch.sync(d.availRing, 4);
    else this.watch.sync(d.availRing + 4 + 2 * d.size, 2);
    return out;
  }

  /**
   * The checks every case ends with, for the attack part: nothing escaped, the work of every
   * pass stayed within its budget, nothing was written outside the allowed ranges, and bad
   * chains were refused (or the device asked for a reset).
   * @returns The used entries per queue, for the case's own checks.
   */
  verify(): UsedEntry[][] {
    if (this.#uncaught.length > 0) {
      for (const e of this.#uncaught.splice(0)) {
        this.failures.push(`uncaught exception: ${describe(e)}`);
      }
    }
    if (this.meter.overrun !== undefined) {
      this.failures.push(`budget: ${this.meter.overrun}`);
      this.meter.overrun = undefined;
    }
    const v = this.watch.check();
    if (v.count > 0) {
      this.failures.push(
        `${v.count} guest bytes written outside the chains' writable buffers and the used ` +
          `rings, first at ${v.addrs.map((a) => "0x" + a.toString(16)).join(", ")}`,
      );
    }
    const used = this.transport.queues.map((_, q) => this.takeUsed(q));
    const reset = this.needsReset();
    for (const r of this.#refused) {
      const e = used[r.queue]?.find((u) => u.id === r.id);
      if (e !== undefined) {
        if (e.len !== 0) {
          this.failures.push(
            `${r.what} (queue ${r.queue}, id ${r.id}) came back with used length ${e.len}, ` +
              `not 0 (nothing was written into it)`,
          );
        }
      } else if (!reset && !this.#waiting(r.queue)) {
        this.failures.push(
          `${r.what} (queue ${r.queue}, id ${r.id}) never came back, and the device is not in ` +
            `NEEDS_RESET`,
        );
      }
    }
    if (!reset && !this.hints.holdsChains) {
      // Every chain the device took came back: the ring positions it took and returned from
      // meet (a chain taken and never returned is lost to the driver for good).
      this.transport.queues.forEach((dq, q) => {
        if (dq.broken !== undefined || !dq.ready) return;
        const lost = dq.format === "split"
          ? (dq.nextAvail - dq.nextUsed) & 0xffff
          : ringDistance(dq.nextUsed, dq.nextAvail, dq.size);
        if (lost !== 0) {
          this.failures.push(
            `queue ${q}: ${lost} ${
              dq.format === "split" ? "chains" : "descriptors"
            } taken by the device never came back (used position ${dq.nextUsed}, available ${dq.nextAvail})`,
          );
        }
      });
    }
    for (const b of this.#broken) {
      if (!reset && !this.#waiting(b.queue)) {
        this.failures.push(
          `${b.what} (queue ${b.queue}): the ring cannot go on, but the device is not in ` +
            `NEEDS_RESET (virtio 1.2 §2.1.2)`,
        );
      }
    }
    this.#refused = [];
    this.#broken = [];
    this.#chainRanges = [];
    return used;
  }

  /** Fill every lazy queue's free descriptors (up to half the ring) with the hint's buffers. */
  supplyLazy(): void {
    const make = this.hints.lazyBuffer;
    if (make === undefined) return;
    for (const q of this.hints.lazyQueues ?? []) {
      const d = this.format === "packed" ? this.packed[q] : this.split[q];
      if (d === undefined) continue;
      this.takeUsed(q); // what the device put there is read and dropped
      let added = 0;
      while (d.freeDescriptors > d.size / 2 && added < d.size / 2) {
        const b = make(q);
        if (b === undefined) break;
        if (this.call(`adding a buffer to queue ${q}`, () => this.addChain(q, [b])) === undefined) {
          break;
        }
        added++;
      }
      if (added > 0) this.kick(q);
    }
  }

  // Chains made available on queue q that the device has not taken.
  #backlog(q: number): number {
    const dev = this.transport.queues[q];
    try {
      if (dev.format === "split") return (this.split[q].availIdx - dev.nextAvail) & 0xffff;
      return dev.hasPending(this.devMemory) ? 1 : 0;
    } catch {
      return 0;
    }
  }

  // A lazy queue may leave chains on the ring: the device has not looked at them yet.
  #waiting(q: number): boolean {
    if (!this.isLazy(q)) return false;
    try {
      return this.transport.queues[q].hasPending(this.devMemory) ||
        this.transport.queues[q].broken !== undefined;
    } catch {
      return true;
    }
  }

  /**
   * A valid request afterwards still works: on the same rings when the device did not ask for
   * a reset (and `sameRings`), else after a reset and a new initialisation.
   * @param sameRings Whether the rings are still the driver's own (hostile set-ups are not).
   */
  async validAfter(sameRings = true): Promise<void> {
    this.onPop = undefined;
    const live = (this.status() & DEVICE_DRIVER_OK) !== 0 && !this.needsReset();
    if (!sameRings || !live) {
      if (!this.init()) {
        this.failures.push(
          `after a reset, the device did not initialise again (status 0x${
            this.status().toString(16)
          })`,
        );
        return;
      }
    }
    const v = this.hints.validRequest?.();
    if (v === undefined) return;
    // Room on the lazy queues, for devices that wait for it before they go on.
    this.supplyLazy();
    await this.settle();
    if (this.#backlog(v.queue) > 0) {
      // Still busy with what the attack left (waiting for room it will not get): start over.
      this.notes.push(
        `queue ${v.queue} still held the attack's chains: reset before the valid request`,
      );
      if (!this.init()) {
        this.failures.push("after a reset, the device did not initialise again");
        return;
      }
      this.supplyLazy();
      await this.settle();
    }
    const before = this.failures.length;
    const head = this.call("adding a valid request", () => this.addChain(v.queue, v.buffers));
    if (head === undefined) return;
    this.kick(v.queue);
    await this.settle();
    if (this.failures.length > before) return;
    const entries = this.takeUsed(v.queue);
    const e = entries.find((u) => u.id === head);
    if (e === undefined) {
      this.failures.push(
        `a valid request on queue ${v.queue} afterwards did not complete (status 0x${
          this.status().toString(16)
        }${sameRings && live ? ", same rings" : ", after a reset"})`,
      );
      return;
    }
    const problem = v.check?.(e);
    if (problem !== undefined) this.failures.push(`a valid request afterwards: ${problem}`);
    if (this.#uncaught.length > 0) {
      for (const x of this.#uncaught.splice(0)) {
        this.failures.push(`uncaught exception: ${describe(x)}`);
      }
    }
  }

  /**
   * Write a control register as a hostile driver would (errors reported, never thrown).
   * @param offset Register offset.
   * @param value Value.
   */
  w(offset: number, value: number): void {
    this.call(
      `writing 0x${value.toString(16)} at 0x${offset.toString(16)}`,
      () => this.transport.writeU32(offset, value),
    );
  }

  /**
   * Read a control register.
   * @param offset Register offset.
   * @returns The value (0 when the read threw).
   */
  r(offset: number): number {
    return this.call(`reading at 0x${offset.toString(16)}`, () => this.transport.readU32(offset)) ??
      0;
  }
}

/**
 * Descriptors from packed position `from` to `to` (index in bits 0–14, wrap in bit 15).
 * @param from Start position.
 * @param to End position.
 * @param size Ring size.
 * @returns The distance, 0 to 2 * size - 1.
 */
export function ringDistance(from: number, to: number, size: number): number {
  const a = (from & 0x7fff) + ((from >> 15) & 1) * size;
  const b = (to & 0x7fff) + ((to >> 15) & 1) * size;
  return (b - a + 2 * size) % (2 * size);
}

/**
 * One turn of the event loop (a timer turn when `timer`, for devices that continue with
 * `setTimeout`).
 * @param timer Wait for a timer rather than an immediate.
 */
export function turn(timer = false): Promise<void> {
  return new Promise((resolve) => {
    if (timer) setTimeout(resolve, 0);
    else setImmediate(resolve);
  });
}

/**
 * An error in one line.
 * @param err Anything thrown.
 * @returns Its description.
 */
export function describe(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}

/** Where the first queue's rings go (the driver harness's default). */
export const RING_BASE = QUEUE_RING_BASE;
