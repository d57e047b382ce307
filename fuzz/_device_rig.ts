/**
 * The device side of the fuzzer: one device behind the virtio-mmio transport in a small guest
 * memory, split or packed rings set up by hand, and a driver that puts mutated chains on them
 * (requests from the device's generator with their payload, buffers and descriptors mutated,
 * now and then a wholly hostile chain or ring). After every iteration the oracle holds:
 * nothing escaped, no pass went past its budget (counted), nothing was written outside the
 * writable buffers the descriptor tables name and the used areas, no used length is larger
 * than the chain's writable bytes.
 *
 * @module
 */

import process from "node:process";
import { setImmediate } from "node:timers";
import { GuestMemory } from "../memory/guest_memory.ts";
import { MmioRegister, MmioTransport } from "../transport/mmio.ts";
import {
  DEFAULT_SERVE_BUDGET,
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  VIRTIO_F_RING_PACKED,
  type VirtioDevice,
} from "../devices/device.ts";
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../queue/split.ts";
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED } from "../queue/packed.ts";
import { DRIVER_OPT_IN_FEATURES, DriverQueue, type UsedEntry } from "../testing/queue_driver.ts";
import { ringDistance } from "../testing/_conformance_harness.ts";
import { PackedDriverQueue } from "../testing/packed_driver.ts";
import {
  BudgetOverrun,
  MemoryWatch,
  MeteredMemory,
  meterQueue,
  WorkMeter,
} from "../testing/_conformance_rig.ts";
import { INTERESTING_32, INTERESTING_64, mutateBytes, type Prng } from "./prng.ts";

/** One buffer of a request: readable bytes, or a writable length. */
export type FuzzBuffer = { bytes: Uint8Array } | { writable: number };

/** A request the device's generator made, before mutation. */
export interface FuzzRequest {
  queue: number;
  buffers: FuzzBuffer[];
}

/** What a device target supplies. */
export interface DeviceSpec {
  /** Target name. */
  name: string;
  /** A fresh device (a new episode). */
  create(r: Prng): VirtioDevice;
  /** A request, plausible or not. */
  request(r: Prng, rig: DeviceRig): FuzzRequest;
  /** Queues that hold writable buffers until the device has data (supplied by the rig). */
  lazy?: { queue: number; buffer: number }[];
  /** Host-side activity (frames arriving, connections), run now and then. */
  host?(r: Prng, rig: DeviceRig): void;
  /** Make the device take buffers from lazy queue `queue` now (a frame, an event). */
  stimulate?(rig: DeviceRig, queue: number): void;
  /** Release the device. */
  release?(device: VirtioDevice): void;
  /** The device may keep chains it took for a while (requests waiting for a lock). */
  holdsChains?: boolean;
  /** Queue size the driver sets up (default 16). */
  queueSize?: number;
  /** Guest memory size (default 64 KiB). */
  memorySize?: number;
}

/** A failure the oracle found. */
export interface FuzzFailure {
  /** Iteration it showed in. */
  iteration: number;
  /** What. */
  message: string;
}

interface QueueState {
  split?: DriverQueue;
  packed?: PackedDriverQueue;
  size: number;
  ringBase: number;
  ringBytes: number;
  bufBase: number;
  bufEnd: number;
  next: number;
  /** Split: free descriptor indices. */
  free: number[];
  /** Split: descriptors of each head in flight; packed: ids in flight. */
  inflight: Map<number, number[]>;
  /** Packed: free buffer ids. */
  freeIds: number[];
  /** Most bytes a known-shaped chain may report (head → writable bytes). */
  maxLen: Map<number, number>;
}

const RING_AREA = 0x1000;
const RING_STRIDE = 0x800;

/**
 * One device, its transport and the fuzzing driver. Iterations are synchronous; the caller
 * yields to the event loop now and then (`settle`) so continuations and timers run.
 */
export class DeviceRig {
  readonly spec: DeviceSpec;
  readonly device: VirtioDevice;
  readonly memory: GuestMemory;
  readonly devMemory: MeteredMemory;
  readonly meter: WorkMeter;
  readonly watch: MemoryWatch;
  readonly transport: MmioTransport;
  readonly size: number;
  packedRing = false;
  features = 0n;
  queues: QueueState[] = [];
  /** Iteration the rig is on (for failures). */
  iteration = 0;
  readonly failures: FuzzFailure[] = [];
  /** NEEDS_RESET seen (and reset) this episode. */
  resets = 0;
  /** Windows whose memory check was widened (a writable buffer over a ring or table). */
  widened = 0;
  #hostileRing = false;
  #uncaught: unknown[] = [];
  #unlisten: () => void;
  #usedAreas: [number, number][] = [];

  /**
   * Make the device and listen for uncaught errors.
   * @param spec The target.
   * @param r Generator (device options).
   */
  constructor(spec: DeviceSpec, r: Prng) {
    this.spec = spec;
    this.size = spec.memorySize ?? 64 << 10;
    const buffer = new ArrayBuffer(this.size);
    this.memory = new GuestMemory([{ base: 0, buffer }]);
    this.meter = new WorkMeter({
      chains: DEFAULT_SERVE_BUDGET.chains,
      bytes: 2 * DEFAULT_SERVE_BUDGET.bytes,
    });
    this.devMemory = new MeteredMemory(new GuestMemory([{ base: 0, buffer }]).regions, this.meter);
    this.watch = new MemoryWatch(new Uint8Array(buffer));
    this.device = spec.create(r);
    this.transport = new MmioTransport(this.device, this.devMemory);
    const onError = (e: unknown) => this.#uncaught.push(e);
    process.on("uncaughtException", onError);
    process.on("unhandledRejection", onError);
    this.#unlisten = () => {
      process.off("uncaughtException", onError);
      process.off("unhandledRejection", onError);
    };
  }

  /** Release the device and the listeners. */
  close(): void {
    try {
      this.transport.writeU32(MmioRegister.Status, 0);
      if (this.spec.release !== undefined) this.spec.release(this.device);
      else this.device.remove?.();
    } catch (err) {
      this.fail(`releasing the device threw: ${describe(err)}`);
    }
    this.#unlisten();
  }

  /**
   * Record a failure.
   * @param message What.
   */
  fail(message: string): void {
    if (this.failures.length < 16) this.failures.push({ iteration: this.iteration, message });
  }

  #call(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof BudgetOverrun) return; // reported by the meter
      this.fail(`${what} threw: ${describe(err)}`);
    }
  }

  #w(offset: number, value: number): void {
    this.#call(
      `register write 0x${offset.toString(16)}`,
      () => this.transport.writeU32(offset, value),
    );
  }

  #r(offset: number): number {
    let v = 0;
    this.#call(`register read 0x${offset.toString(16)}`, () => {
      v = this.transport.readU32(offset);
    });
    return v;
  }

  /**
   * (Re)initialise: reset, negotiate a random subset of the offered features, lay out rings.
   * @param r Generator.
   * @returns Whether the device is live.
   */
  init(r: Prng): boolean {
    const R = MmioRegister;
    this.#w(R.Status, 0);
    this.#w(R.Status, DEVICE_ACKNOWLEDGE);
    this.#w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
    let offered = 0n;
    for (let page = 0; page < 2; page++) {
      this.#w(R.DeviceFeaturesSel, page);
      offered |= BigInt(this.#r(R.DeviceFeatures)) << BigInt(32 * page);
    }
    this.packedRing = (offered & featureBit(VIRTIO_F_RING_PACKED)) !== 0n && r.chance(0.35);
    let f = offered & ~DRIVER_OPT_IN_FEATURES;
    if (this.packedRing) f |= featureBit(VIRTIO_F_RING_PACKED);
    if (r.chance(0.15)) f |= offered & featureBit(VIRTIO_F_IN_ORDER);
    // Now and then leave some device features out (never VERSION_1).
    if (r.chance(0.3)) {
      for (let bit = 0; bit < 32; bit++) if (r.chance(0.2)) f &= ~featureBit(bit);
    }
    if (r.chance(0.2)) f &= ~featureBit(VIRTIO_F_INDIRECT_DESC);
    if (r.chance(0.3)) f &= ~featureBit(VIRTIO_F_EVENT_IDX);
    for (let page = 0; page < 2; page++) {
      this.#w(R.DriverFeaturesSel, page);
      this.#w(R.DriverFeatures, Number((f >> BigInt(32 * page)) & 0xffffffffn));
    }
    this.#w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
    if ((this.#r(R.Status) & DEVICE_FEATURES_OK) === 0) {
      // A subset the device refuses (a dependency left out): take everything it offers.
      f = (offered & ~DRIVER_OPT_IN_FEATURES) |
        (this.packedRing ? featureBit(VIRTIO_F_RING_PACKED) : 0n);
      this.#w(R.Status, 0);
      this.#w(R.Status, DEVICE_ACKNOWLEDGE);
      this.#w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      for (let page = 0; page < 2; page++) {
        this.#w(R.DriverFeaturesSel, page);
        this.#w(R.DriverFeatures, Number((f >> BigInt(32 * page)) & 0xffffffffn));
      }
      this.#w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
    }
    this.features = f;
    const eventIdx = (f & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n;
    const inOrder = (f & featureBit(VIRTIO_F_IN_ORDER)) !== 0n;
    const n = this.transport.queues.length;
    const bufStart = RING_AREA + RING_STRIDE * n;
    const per = Math.floor((this.size - bufStart) / n / 64) * 64;
    this.queues = [];
    this.#usedAreas = [];
    for (let i = 0; i < n; i++) {
      this.#w(R.QueueSel, i);
      const max = this.#r(R.QueueNumMax);
      const size = Math.min(this.spec.queueSize ?? 16, max);
      const ringBase = RING_AREA + RING_STRIDE * i;
      const bufBase = bufStart + per * i;
      const q: QueueState = {
        size,
        ringBase,
        ringBytes: 0,
        bufBase,
        bufEnd: bufBase + per,
        next: bufBase,
        free: [],
        inflight: new Map(),
        freeIds: [],
        maxLen: new Map(),
      };
      let desc: number, avail: number, used: number;
      if (this.packedRing) {
        const p = new PackedDriverQueue(this.memory, {
          size,
          ringBase,
          bufferBase: bufBase,
          bufferEnd: bufBase + per,
          eventIdx,
          inOrder,
        });
        q.packed = p;
        for (let id = size - 1; id >= 0; id--) q.freeIds.push(id);
        desc = p.descTable;
        avail = p.availRing;
        used = p.usedRing;
        q.ringBytes = 16 * size + 8;
        this.#usedAreas.push([desc, 16 * size], [used, 4]);
      } else {
        const s = new DriverQueue(this.memory, {
          size,
          ringBase,
          bufferBase: bufBase,
          bufferEnd: bufBase + per,
          eventIdx,
          inOrder,
          gaps: false,
        });
        s.autoUsedEvent = true;
        q.split = s;
        for (let d = size - 1; d >= 0; d--) q.free.push(d);
        desc = s.descTable;
        avail = s.availRing;
        used = s.usedRing;
        q.ringBytes = used + 6 + 8 * size - desc;
        this.#usedAreas.push([used, 6 + 8 * size]);
      }
      this.#w(R.QueueNum, size);
      this.#w(R.QueueDescLow, desc);
      this.#w(R.QueueDescHigh, 0);
      this.#w(R.QueueDriverLow, avail);
      this.#w(R.QueueDriverHigh, 0);
      this.#w(R.QueueDeviceLow, used);
      this.#w(R.QueueDeviceHigh, 0);
      this.#w(R.QueueReady, 1);
      this.queues.push(q);
    }
    this.#w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK);
    this.transport.queues.forEach((q, i) => {
      meterQueue(q, this.meter, () => this.#onPop(i));
    });
    this.#refill = undefined;
    this.#hostileRing = false;
    this.watch.resnap();
    return (this.transport.core.status & DEVICE_DRIVER_OK) !== 0 && !this.needsReset();
  }

  /** Whether the device asks for a reset. */
  needsReset(): boolean {
    return (this.transport.core.status & DEVICE_NEEDS_RESET) !== 0;
  }

  /** Whether indirect descriptors were negotiated. */
  get indirect(): boolean {
    return (this.features & featureBit(VIRTIO_F_INDIRECT_DESC)) !== 0n;
  }

  /**
   * Whether feature `bit` was negotiated.
   * @param bit Feature bit.
   */
  has(bit: number): boolean {
    return (this.features & featureBit(bit)) !== 0n;
  }

  #alloc(q: QueueState, len: number, align = 8): number {
    let a = Math.ceil(q.next / align) * align;
    if (a + len > q.bufEnd) a = Math.ceil(q.bufBase / align) * align;
    if (a + len > q.bufEnd) return -1;
    q.next = a + len;
    return a;
  }

  /**
   * The oracle, for everything since the last iteration: uncaught errors, budget overruns,
   * writes outside the allowed ranges.
   */
  check(): void {
    for (const e of this.#uncaught.splice(0)) this.fail(`uncaught: ${describe(e)}`);
    if (this.meter.overrun !== undefined) {
      this.fail(`budget: ${this.meter.overrun}`);
      this.meter.overrun = undefined;
    }
    if (!this.#hostileRing && !this.spec.holdsChains && !this.needsReset()) {
      // Between passes every chain the device took has come back.
      this.transport.queues.forEach((dq, q) => {
        if (dq.broken !== undefined || !dq.ready) return;
        const lost = dq.format === "split"
          ? (dq.nextAvail - dq.nextUsed) & 0xffff
          : ringDistance(dq.nextUsed, dq.nextAvail, dq.size);
        if (lost !== 0) {
          this.fail(`queue ${q}: ${lost} chains (or descriptors) taken and never returned`);
          this.#hostileRing = true; // once is enough: start over
        }
      });
    }
    const v = this.watch.check();
    if (v.count > 0) {
      this.fail(
        `${v.count} bytes written outside the writable buffers and used areas, first at ${
          v.addrs.map((a) => "0x" + a.toString(16)).join(", ")
        }`,
      );
    }
  }

  /** Take what the device returned, freeing descriptors; check used lengths. */
  reap(): void {
    for (let qi = 0; qi < this.queues.length; qi++) {
      const q = this.queues[qi];
      const d = q.split ?? q.packed!;
      for (let guard = 0; guard < 4 * q.size; guard++) {
        let e: UsedEntry | null = null;
        try {
          e = d.takeUsed();
        } catch {
          // A used ring the device left inconsistent with what the driver expects (after a
          // hostile ring); the episode starts over.
          this.#hostileRing = true;
          break;
        }
        if (e === null) break;
        this.#returned(qi, q, e);
      }
    }
  }

  #returned(qi: number, q: QueueState, e: UsedEntry): void {
    const descs = q.inflight.get(e.id);
    if (descs === undefined) {
      if (!this.#hostileRing) {
        this.fail(`queue ${qi}: the device returned id ${e.id}, which is not in flight`);
      }
      return;
    }
    q.inflight.delete(e.id);
    const max = q.maxLen.get(e.id);
    q.maxLen.delete(e.id);
    // Once the driver's view of the ring is not its own any more (a hostile ring, a concurrent
    // refill publishing heads again, a window that let the device write the rings), which
    // chain a used entry stands for is not known either.
    if (max !== undefined && e.len > max && !this.#hostileRing) {
      this.fail(`queue ${qi}: used length ${e.len} for a chain of ${max} writable bytes`);
    }
    if (q.split !== undefined) {
      // A free descriptor is zeroed, so that the next scan does not take it for a live one.
      for (const d of descs) {
        q.free.push(d);
        this.memory.fill(q.split.descTable + 16 * d, 16, 0);
      }
    } else {
      q.freeIds.push(e.id);
    }
  }

  /** Whether the driver's view may be out of step (after a hostile ring): start over. */
  get desynced(): boolean {
    return this.#hostileRing;
  }

  /** Keep lazy queues supplied with writable buffers. */
  supplyLazy(r: Prng): void {
    for (const l of this.spec.lazy ?? []) {
      const q = this.queues[l.queue];
      if (q === undefined) continue;
      const want = q.size >> 1;
      let n = 0;
      while (q.inflight.size < want && n++ < want) {
        const len = r.chance(0.9) ? l.buffer : r.size(l.buffer * 2);
        if (!this.addRequest(r, { queue: l.queue, buffers: [{ writable: len }] }, 0)) break;
      }
    }
  }

  /**
   * Put a (mutated) request on its queue.
   * @param r Generator.
   * @param req The request.
   * @param mutation Probability of each mutation family (0: none).
   * @returns Whether it was added.
   */
  addRequest(r: Prng, req: FuzzRequest, mutation = 0.3): boolean {
    const q = this.queues[req.queue];
    if (q === undefined) return false;
    // Payload mutations.
    const buffers = req.buffers.map((b): FuzzBuffer =>
      "bytes" in b && r.chance(mutation) ? { bytes: mutateBytes(r, b.bytes.slice()) } : b
    );
    // Split buffers into pieces; swap directions; add or drop buffers.
    let parts: { addr: number; len: number; write: boolean }[] = [];
    for (const b of buffers) {
      const len = "bytes" in b ? b.bytes.length : b.writable;
      const addr = this.#alloc(q, Math.max(1, len));
      if (addr < 0) return false;
      if ("bytes" in b) this.memory.write(addr, b.bytes);
      const write = !("bytes" in b);
      if (len > 1 && r.chance(mutation / 2)) {
        const cut = 1 + r.int(len - 1);
        parts.push({ addr, len: cut, write }, { addr: addr + cut, len: len - cut, write });
      } else {
        parts.push({ addr, len, write });
      }
    }
    let known = true; // the device sees exactly these buffers
    if (r.chance(mutation / 3) && parts.length > 0) {
      known = false;
      const i = r.int(parts.length);
      const p = parts[i];
      switch (r.int(9)) {
        case 0:
          p.write = !p.write;
          break;
        case 1:
          p.len = r.pick(INTERESTING_32);
          break;
        case 2:
          p.addr = r.int(this.size);
          break;
        case 3:
          p.addr = this.size - r.int(16);
          break;
        case 4:
          parts.splice(i, 1);
          break;
        case 5:
          parts.push({ ...p });
          break;
        case 6:
          // Self-feeding: a writable buffer over this queue's own rings.
          parts.push({
            addr: q.ringBase + r.int(q.ringBytes),
            len: 1 + r.int(q.ringBytes),
            write: true,
          });
          break;
        case 7:
          p.len = 0;
          break;
        default:
          parts = parts.reverse();
      }
    }
    if (parts.length === 0) parts.push({ addr: 0, len: 0, write: false });
    let bigAddr: bigint | undefined;
    if (r.chance(mutation / 20)) {
      bigAddr = r.pick(INTERESTING_64);
      known = false;
    }
    const useIndirect = (this.indirect || r.chance(0.02)) &&
      (r.chance(mutation > 0 ? 0.25 : 0) || parts.length > q.size - 1);
    let maxLen = 0;
    for (const p of parts) if (p.write) maxLen += p.len;
    if (q.split !== undefined) {
      return this.#addSplit(
        r,
        q,
        parts,
        useIndirect,
        mutation,
        known ? maxLen : undefined,
        bigAddr,
      );
    }
    return this.#addPacked(r, q, parts, useIndirect, mutation, known ? maxLen : undefined, bigAddr);
  }

  #indirectTable(
    r: Prng,
    q: QueueState,
    parts: { addr: number; len: number; write: boolean }[],
    packed: boolean,
    mutation: number,
  ): { addr: number; len: number } | undefined {
    const table = this.#alloc(q, 16 * parts.length, 16);
    if (table < 0) return undefined;
    const v = this.memory.dataView(table, 16 * parts.length);
    parts.forEach((p, i) => {
      const o = 16 * i;
      v.setBigUint64(o, BigInt(p.addr), true);
      v.setUint32(o + 8, p.len >>> 0, true);
      let flags = p.write ? VIRTQ_DESC_F_WRITE : 0;
      if (!packed && i < parts.length - 1) flags |= VIRTQ_DESC_F_NEXT;
      if (r.chance(mutation / 20)) flags |= r.pick([VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT]);
      v.setUint16(o + 12, flags, true);
      v.setUint16(
        o + 14,
        packed ? 0 : r.chance(mutation / 20) ? r.int(parts.length + 2) : i + 1,
        true,
      );
    });
    let len = 16 * parts.length;
    if (r.chance(mutation / 20)) len = r.pick([0, 1, 15, 17, len + 16, 0xfffffff0]);
    return { addr: table, len };
  }

  #addSplit(
    r: Prng,
    q: QueueState,
    parts: { addr: number; len: number; write: boolean }[],
    indirect: boolean,
    mutation: number,
    maxLen: number | undefined,
    bigAddr: bigint | undefined,
  ): boolean {
    const dq = q.split!;
    let list = parts.map((p) => ({
      addr: BigInt(p.addr),
      len: p.len,
      flags: p.write ? VIRTQ_DESC_F_WRITE : 0,
    }));
    if (indirect) {
      const t = this.#indirectTable(r, q, parts, false, mutation);
      if (t === undefined) return false;
      list = [{ addr: BigInt(t.addr), len: t.len, flags: VIRTQ_DESC_F_INDIRECT }];
      if (t.len !== 16 * parts.length) maxLen = undefined;
    }
    if (list.length > q.free.length) return false;
    if (bigAddr !== undefined) list[r.int(list.length)].addr = bigAddr;
    const idx: number[] = [];
    for (let i = 0; i < list.length; i++) idx.push(q.free.pop()!);
    list.forEach((d, i) => {
      const last = i === list.length - 1;
      let flags = d.flags | (last ? 0 : VIRTQ_DESC_F_NEXT);
      let next = last ? 0 : idx[i + 1];
      if (r.chance(mutation / 15)) {
        maxLen = undefined;
        // A link anywhere: a loop, out of range, another chain's descriptors.
        flags |= VIRTQ_DESC_F_NEXT;
        next = r.pick([idx[0], q.size, 0xffff, r.int(q.size)]);
      }
      if (r.chance(mutation / 30)) {
        maxLen = undefined;
        flags ^= 1 << r.int(3);
      }
      dq.writeDescriptor(idx[i], { addr: d.addr, len: d.len, flags, next });
    });
    const head = idx[0];
    q.inflight.set(head, idx);
    if (maxLen !== undefined) q.maxLen.set(head, maxLen);
    dq.publish(head);
    return true;
  }

  #addPacked(
    r: Prng,
    q: QueueState,
    parts: { addr: number; len: number; write: boolean }[],
    indirect: boolean,
    mutation: number,
    maxLen: number | undefined,
    bigAddr: bigint | undefined,
  ): boolean {
    const p = q.packed!;
    let list = parts.map((x) => ({
      addr: BigInt(x.addr) as bigint,
      len: x.len,
      flags: x.write ? VIRTQ_DESC_F_WRITE : 0,
    }));
    if (indirect || list.length > q.size) {
      const t = this.#indirectTable(r, q, parts, true, mutation);
      if (t === undefined) return false;
      list = [{ addr: BigInt(t.addr), len: t.len, flags: VIRTQ_DESC_F_INDIRECT }];
      if (t.len !== 16 * parts.length) maxLen = undefined;
    }
    if (list.length > p.freeDescriptors || q.freeIds.length === 0) return false;
    if (bigAddr !== undefined) list[r.int(list.length)].addr = bigAddr;
    if (list.length > 1 && r.chance(mutation / 15)) {
      // INDIRECT inside a list.
      list[r.int(list.length)].flags |= VIRTQ_DESC_F_INDIRECT;
      maxLen = undefined;
    }
    const id = q.freeIds.pop()!;
    p.addRaw(list.map((d) => ({ addr: d.addr, len: d.len, id, flags: d.flags })));
    q.inflight.set(id, []);
    if (maxLen !== undefined) q.maxLen.set(id, maxLen);
    return true;
  }

  // A driver on another CPU refilling a ring as the device takes from it: each pop publishes
  // the same head again, up to a limit (the meter fails a pass that does not stop at its budget).
  #refill: { queue: number; head: number; left: number } | undefined;

  #onPop(queue: number): void {
    const f = this.#refill;
    if (f === undefined || f.queue !== queue || f.left <= 0) return;
    f.left--;
    const dq = this.queues[queue]?.split;
    if (dq === undefined) return;
    dq.publish(f.head);
    this.watch.sync(dq.availRing, 6 + 2 * dq.size);
  }

  /**
   * Refill queue `qi` concurrently from now on with its last published chain (split rings),
   * well formed or not; the driver's view is lost: the episode starts over afterwards.
   * @param r Generator.
   * @param qi Queue.
   */
  concurrentRefill(r: Prng, qi: number): void {
    const q = this.queues[qi];
    if (q?.split === undefined) return;
    let head: number;
    if (r.chance(0.5) && q.free.length > 0) {
      // A malformed chain (a buffer past 2^64 - 4096), refused and returned empty each time.
      head = q.free.pop()!;
      q.split.writeDescriptor(head, {
        addr: (1n << 64n) - 4096n,
        len: 64,
        flags: VIRTQ_DESC_F_WRITE,
        next: 0,
      });
      q.split.publish(head);
      q.inflight.set(head, [head]);
    } else {
      if (q.inflight.size === 0) return;
      head = r.pick([...q.inflight.keys()]);
    }
    this.#refill = { queue: qi, head, left: 3 * DEFAULT_SERVE_BUDGET.chains + 7 };
    if (this.spec.lazy?.some((l) => l.queue === qi)) this.#stimulate = qi;
    this.#hostileRing = true;
  }

  #stimulate: number | undefined;

  /** Run the stimulus a refill asked for (after the kicks: the device works in the window). */
  stimulate(): void {
    const q = this.#stimulate;
    this.#stimulate = undefined;
    if (q === undefined || this.spec.stimulate === undefined) return;
    this.meter.cut();
    this.#call(`stimulating queue ${q}`, () => this.spec.stimulate!(this, q));
    this.meter.cut();
  }

  /**
   * A hostile ring action (the ring is not usable afterwards; the episode starts over).
   * @param r Generator.
   * @param qi Queue.
   */
  hostileRing(r: Prng, qi: number): void {
    const q = this.queues[qi];
    if (q === undefined) return;
    this.#hostileRing = true;
    if (q.split !== undefined) {
      const dq = q.split;
      switch (r.int(5)) {
        case 0:
          dq.setAvailIdx(dq.availIdx + q.size + 1 + r.int(1000));
          break;
        case 1:
          dq.setAvailIdx(dq.availIdx - 1 - r.int(3));
          break;
        case 2:
          dq.publish(q.size + r.int(0x10000 - q.size));
          break;
        case 3:
          this.memory.writeU16(dq.availRing, r.u32());
          this.memory.writeU16(dq.availRing + 4 + 2 * q.size, r.u32());
          break;
        default:
          for (let i = 0; i < 1 + r.int(q.size); i++) dq.publish(r.int(q.size));
      }
    } else {
      const p = q.packed!;
      const pos = p.availPosition & 0x7fff;
      const at = p.descTable + 16 * pos;
      switch (r.int(4)) {
        case 0:
          p.addRaw([{ addr: 0x100, len: 8, id: q.size + r.int(100), flags: 0 }]);
          break;
        case 1: {
          const n = Math.min(q.size, p.freeDescriptors);
          if (n > 0) {
            p.addRaw(
              Array.from(
                { length: n },
                () => ({ addr: 0x100, len: 8, id: 0, flags: VIRTQ_DESC_F_NEXT }),
              ),
            );
          }
          break;
        }
        case 2:
          this.memory.writeU16(at + 14, r.u32() | VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED);
          break;
        default:
          this.memory.writeU32(p.availRing, r.u32());
      }
    }
  }

  /**
   * Scan the descriptor tables and rings: every range a descriptor says is writable may be
   * written until the next check; a writable range over a ring or a table opens everything
   * (the device's own writes then make new descriptors). Then snapshot.
   */
  arm(): void {
    const w = this.watch;
    w.clearRanges();
    for (const [a, n] of this.#usedAreas) w.allow(a, n);
    const mem = this.memory;
    // First every writable range and every indirect table the tables name (an indirect table
    // holds descriptors of its ring's format: flags at offset 12, split, or 14, packed), then
    // whether a writable range lies over a ring or a table: the device's own writes there
    // would make new descriptors.
    const writable: number[] = [];
    const tables: [number, number, number][] = [];
    for (const q of this.queues) {
      const base = q.split?.descTable ?? q.packed!.descTable;
      const flagsAt = q.split !== undefined ? 12 : 14;
      for (let i = 0; i < q.size; i++) {
        const o = base + 16 * i;
        const lo = mem.readU32(o);
        const hi = mem.readU32(o + 4);
        const len = mem.readU32(o + 8);
        const flags = mem.readU16(o + flagsAt);
        if (flags & VIRTQ_DESC_F_INDIRECT) {
          if (hi === 0 && lo < this.size && len >= 16) {
            const n = Math.min(Math.floor(len / 16), Math.floor((this.size - lo) / 16));
            tables.push([lo, 16 * n, flagsAt]);
          }
        } else if ((flags & VIRTQ_DESC_F_WRITE) && hi === 0 && len > 0) {
          writable.push(lo, len);
        }
      }
    }
    for (const [addr, bytes, flagsAt] of tables) {
      for (let o = addr; o + 16 <= addr + bytes; o += 16) {
        const flags = mem.readU16(o + flagsAt);
        const len = mem.readU32(o + 8);
        if ((flags & VIRTQ_DESC_F_WRITE) && mem.readU32(o + 4) === 0 && len > 0) {
          writable.push(mem.readU32(o), len);
        }
      }
    }
    const spans: [number, number][] = this.queues.map((q) => [q.ringBase, q.ringBytes]);
    for (const [a, n] of tables) spans.push([a, n]);
    let wide = false;
    for (let k = 0; k < writable.length; k += 2) {
      const lo = writable[k];
      const end = lo + writable[k + 1];
      w.allow(lo, writable[k + 1]);
      for (const [a, n] of spans) if (lo < a + n && end > a) wide = true;
    }
    if (wide) {
      // The device may now write its rings' bytes as data: the driver's view of them cannot be
      // trusted after this window, so the episode starts over at the next iteration.
      w.allow(0, this.size);
      this.widened++;
      this.#hostileRing = true;
    }
    w.resnap();
  }

  /**
   * Notify queue `q` (any number: notifications of missing queues are part of the input).
   * @param q Queue.
   */
  kick(q: number): void {
    this.meter.cut();
    this.#w(MmioRegister.QueueNotify, q >>> 0);
    this.meter.cut();
  }
}

/**
 * One turn of the event loop.
 * @param timer A timer turn (for devices that continue with `setTimeout`).
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
 */
export function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}
