/**
 * A virtio-blk load generator on the driver side of one ring of a
 * {@linkcode VhostUserFrontend}: what a guest's `virtio_blk` driver does, but
 * with fixed request slots so the hot loop allocates nothing. Used by the
 * end-to-end benchmark (`bench/blk_e2e.ts`) against our backend and
 * qemu-storage-daemon, and by its test.
 *
 * Each slot owns three descriptors (header, data, status; virtio 1.2 §5.2.6)
 * at fixed indices `3 * slot …` and fixed buffers in the ring's buffer area,
 * so the load generator owns the ring: nothing else may add chains to it.
 *
 * @module
 */

import type { FrontendRing, VhostUserFrontend } from "../testing/vhost_user_frontend.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { firstDifference } from "../testing/bytes.ts";

const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_T_OUT = 1;
const VIRTIO_BLK_T_FLUSH = 4;
const VIRTQ_DESC_F_NEXT = 1;
const VIRTQ_DESC_F_WRITE = 2;
const SECTOR = 512;
const STATUS_PENDING = 0xff;

/** One benchmark workload. */
export interface Workload {
  /** Short name, e.g. `"4K randread QD32"`. */
  name: string;
  /** Reads (IN) or writes (OUT). */
  op: "read" | "write";
  /** Bytes per request: a multiple of 512. */
  blockSize: number;
  /** Requests kept in flight. */
  queueDepth: number;
  /** Uniformly random block-aligned offsets, or sequential (wrapping at the end). */
  random: boolean;
}

/** The workloads of the issue: 4 KiB random at QD1 and QD32, 1 MiB sequential. */
export const WORKLOADS: readonly Workload[] = [
  { name: "4K randread QD1", op: "read", blockSize: 4096, queueDepth: 1, random: true },
  { name: "4K randread QD32", op: "read", blockSize: 4096, queueDepth: 32, random: true },
  { name: "4K randwrite QD1", op: "write", blockSize: 4096, queueDepth: 1, random: true },
  { name: "4K randwrite QD32", op: "write", blockSize: 4096, queueDepth: 32, random: true },
  { name: "1M seqread QD8", op: "read", blockSize: 1 << 20, queueDepth: 8, random: false },
  { name: "1M seqwrite QD8", op: "write", blockSize: 1 << 20, queueDepth: 8, random: false },
];

/** What one run did. */
export interface LoadResult {
  /** Requests completed with VIRTIO_BLK_S_OK. */
  ops: number;
  /** Payload bytes moved. */
  bytes: number;
  /** Wall time from the first submission to the last completion. */
  seconds: number;
  /** `ops / seconds`. */
  iops: number;
  /** `bytes / seconds / 1e6`. */
  mbps: number;
}

/** Options of {@linkcode BlkLoad.run}. */
export interface RunOptions {
  /** Stop submitting after this long (default 3000 ms). */
  durationMs?: number;
  /** Stop submitting after this many requests (default: no limit). */
  maxOps?: number;
  /** Seed of the offset sequence (default 1): the same seed gives the same offsets. */
  seed?: number;
}

interface Slot {
  header: number;
  data: number;
  status: number;
}

/** xorshift32 with a non-zero state. */
function nextRandom(state: number): number {
  let x = state;
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

/** Thrown when a request completes with a bad status or used entry. */
export class BlkLoadError extends Error {
  /**
   * @param message What went wrong.
   */
  constructor(message: string) {
    super(message);
    this.name = "BlkLoadError";
  }
}

/**
 * The load generator. The ring must have been set up with at least
 * `3 * slots` descriptors and a buffer area of `slots * maxBlock` bytes plus
 * a page per slot.
 */
export class BlkLoad {
  readonly #frontend: VhostUserFrontend;
  readonly #ring: FrontendRing;
  readonly #mem: GuestMemory;
  readonly #slots: Slot[] = [];
  readonly #maxBlock: number;
  /** Disk size in bytes (`capacity` × 512). */
  readonly capacity: number;
  #lastUsed: number;
  // Set once a run or check failed: requests may still be in flight, so the ring's state is
  // unknown and the generator refuses further work (connect again instead).
  #failed: Error | undefined;

  /**
   * @param frontend A started frontend.
   * @param ringIndex The ring to drive (owned by the load generator from now on).
   * @param capacity Disk size in bytes, from the device's config space.
   * @param options Slot count (the largest queue depth) and the largest request.
   */
  constructor(
    frontend: VhostUserFrontend,
    ringIndex: number,
    capacity: number,
    options: { slots?: number; maxBlock?: number } = {},
  ) {
    const slots = options.slots ?? 32;
    this.#maxBlock = options.maxBlock ?? 1 << 20;
    this.#frontend = frontend;
    this.#ring = frontend.ring(ringIndex);
    this.#mem = frontend.memory;
    this.capacity = capacity;
    const driver = this.#ring.driver;
    if (driver.size < 3 * slots) {
      throw new RangeError(`Ring of ${driver.size} cannot hold ${slots} three-descriptor slots`);
    }
    for (let i = 0; i < slots; i++) {
      this.#slots.push({
        header: driver.alloc(16, 16),
        status: driver.alloc(1, 1),
        data: driver.alloc(this.#maxBlock, 4096),
      });
    }
    this.#lastUsed = driver.usedIdx();
  }

  /**
   * Lay out slot `s`'s chain: header, then `len` data bytes (none when 0), then
   * the status byte; the data is device-writable for a read.
   */
  #prepare(s: number, read: boolean, len: number): void {
    const slot = this.#slots[s];
    const d = this.#ring.driver;
    const base = 3 * s;
    d.writeDescriptor(base, {
      addr: slot.header,
      len: 16,
      flags: VIRTQ_DESC_F_NEXT,
      next: len > 0 ? base + 1 : base + 2,
    });
    if (len > 0) {
      d.writeDescriptor(base + 1, {
        addr: slot.data,
        len,
        flags: VIRTQ_DESC_F_NEXT | (read ? VIRTQ_DESC_F_WRITE : 0),
        next: base + 2,
      });
    }
    d.writeDescriptor(base + 2, { addr: slot.status, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
  }

  /** Fill in slot `s`'s header and make its chain available. */
  #submit(s: number, type: number, sector: number): void {
    const slot = this.#slots[s];
    const mem = this.#mem;
    mem.writeU32(slot.header, type);
    mem.writeU32(slot.header + 4, 0);
    mem.writeU32(slot.header + 8, sector % 0x1_0000_0000);
    mem.writeU32(slot.header + 12, Math.floor(sector / 0x1_0000_0000));
    mem.writeU8(slot.status, STATUS_PENDING);
    this.#ring.driver.publish(3 * s);
  }

  /**
   * Wait until the used ring moves past `this.#lastUsed`, re-arming `used_event` first so
   * the backend's next completion signals the call eventfd (virtio 1.2 §2.7.10).
   */
  async #waitUsed(signal: AbortSignal): Promise<number> {
    const d = this.#ring.driver;
    for (;;) {
      let used = d.usedIdx();
      if (used !== this.#lastUsed) return used;
      if (d.eventIdx) d.setUsedEvent(this.#lastUsed);
      used = d.usedIdx();
      if (used !== this.#lastUsed) return used;
      await this.#ring.call.wait({ signal });
    }
  }

  /**
   * Take used entry `idx`: check it names a slot in use, that the status is OK and that the
   * length is what the slot's request wrote (`expectLen(slot)`).
   * @returns The slot.
   */
  #complete(idx: number, inFlight: number, expectLen: (slot: number) => number): number {
    const d = this.#ring.driver;
    const at = d.usedRing + 4 + 8 * (idx & (d.size - 1));
    const id = this.#mem.readU32(at);
    const len = this.#mem.readU32(at + 4);
    const s = id / 3;
    if (!Number.isInteger(s) || s >= inFlight) {
      throw new BlkLoadError(`used entry names descriptor ${id}, not a slot head`);
    }
    const status = this.#mem.readU8(this.#slots[s].status);
    if (status !== 0) {
      throw new BlkLoadError(`request in slot ${s} completed with status ${status}`);
    }
    const want = expectLen(s);
    if (len !== want) {
      throw new BlkLoadError(`request in slot ${s}: used length ${len}, expected ${want}`);
    }
    return s;
  }

  /**
   * Run one workload: keep `queueDepth` requests in flight until the time or op budget is
   * spent, then drain.
   * @param w The workload.
   * @param options Duration, op budget and seed.
   * @returns What was done.
   * @throws {BlkLoadError} On a failed request or a used entry that names no slot; after any
   *   failure the generator refuses further work.
   * @throws {Error} When no completion arrives within 10 s.
   */
  run(w: Workload, options: RunOptions = {}): Promise<LoadResult> {
    return this.#guard(() => this.#run(w, options));
  }

  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#failed !== undefined) {
      throw new BlkLoadError(`load generator unusable after an earlier failure: ${this.#failed}`);
    }
    try {
      return await fn();
    } catch (err) {
      this.#failed = err instanceof Error ? err : new Error(String(err));
      throw err;
    }
  }

  async #run(w: Workload, options: RunOptions): Promise<LoadResult> {
    if (w.queueDepth > this.#slots.length || w.blockSize > this.#maxBlock) {
      throw new RangeError(`${w.name} needs more slots or larger buffers`);
    }
    if (w.blockSize % SECTOR !== 0 || w.blockSize > this.capacity) {
      throw new RangeError(`${w.name}: block size ${w.blockSize} does not fit the disk`);
    }
    const read = w.op === "read";
    const type = read ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT;
    const usedLen = read ? w.blockSize + 1 : 1;
    const expectLen = () => usedLen;
    const blocks = Math.floor(this.capacity / w.blockSize);
    const sectorsPerBlock = w.blockSize / SECTOR;
    let rnd = (options.seed ?? 1) >>> 0 || 1;
    let seq = 0;
    const nextSector = (): number => {
      let block: number;
      if (w.random) {
        rnd = nextRandom(rnd);
        block = rnd % blocks;
      } else {
        block = seq;
        seq = seq + 1 === blocks ? 0 : seq + 1;
      }
      return block * sectorsPerBlock;
    };
    for (let s = 0; s < w.queueDepth; s++) this.#prepare(s, read, w.blockSize);

    const maxOps = options.maxOps ?? Infinity;
    const durationMs = options.durationMs ?? 3000;
    const index = this.#ring.index;
    const d = this.#ring.driver;
    const start = performance.now();
    const deadline = start + durationMs;
    const ac = new AbortController();
    let timer = setTimeout(() => ac.abort(new Error(`${w.name}: no completion for 10 s`)), 10000);
    let submitted = 0;
    let completed = 0;
    let stopping = false;
    try {
      for (let s = 0; s < w.queueDepth && submitted < maxOps; s++) {
        this.#submit(s, type, nextSector());
        submitted++;
      }
      this.#frontend.kick(index);
      while (completed < submitted) {
        const used = await this.#waitUsed(ac.signal);
        while (this.#lastUsed !== used) {
          const s = this.#complete(this.#lastUsed, w.queueDepth, expectLen);
          this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
          completed++;
          if (!stopping && (submitted >= maxOps || performance.now() >= deadline)) stopping = true;
          if (!stopping) {
            this.#submit(s, type, nextSector());
            submitted++;
          }
        }
        d.setLastUsed(this.#lastUsed);
        this.#frontend.kick(index);
        clearTimeout(timer);
        timer = setTimeout(() => ac.abort(new Error(`${w.name}: no completion for 10 s`)), 10000);
      }
    } finally {
      clearTimeout(timer);
    }
    const seconds = (performance.now() - start) / 1000;
    const bytes = completed * w.blockSize;
    return {
      ops: completed,
      bytes,
      seconds,
      iops: completed / seconds,
      mbps: bytes / seconds / 1e6,
    };
  }

  /**
   * Submit a batch of requests (at most one per slot), wait for all of them and check each
   * completed OK.
   */
  async #batch(reqs: { type: number; sector: number; len: number }[]): Promise<void> {
    if (reqs.length > this.#slots.length) throw new RangeError("Batch larger than the slots");
    reqs.forEach((r, s) => {
      this.#prepare(s, r.type === VIRTIO_BLK_T_IN, r.len);
      this.#submit(s, r.type, r.sector);
    });
    this.#frontend.kick(this.#ring.index);
    const expectLen = (s: number) => reqs[s].type === VIRTIO_BLK_T_IN ? reqs[s].len + 1 : 1;
    const signal = AbortSignal.timeout(10000);
    let done = 0;
    while (done < reqs.length) {
      const used = await this.#waitUsed(signal);
      while (this.#lastUsed !== used) {
        this.#complete(this.#lastUsed, reqs.length, expectLen);
        this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
        done++;
      }
      this.#ring.driver.setLastUsed(this.#lastUsed);
    }
  }

  /**
   * The correctness check: write distinct bytes to `count` random 4 KiB blocks and one
   * 1 MiB extent, FLUSH, clear the buffers, read everything back and compare; then compare
   * with what `hostRead` (the image file, read by the host) holds at the same offsets.
   * @param hostRead Reads `length` bytes of the image at `offset`, bypassing the backend.
   * @param options Number of 4 KiB blocks (default 64) and the seed.
   * @returns The number of bytes checked.
   * @throws {BlkLoadError} On a failed request or any difference, naming the offset; after
   *   any failure the generator refuses further work.
   */
  verify(
    hostRead: (offset: number, length: number) => Uint8Array,
    options: { count?: number; seed?: number } = {},
  ): Promise<number> {
    return this.#guard(() => this.#verify(hostRead, options));
  }

  async #verify(
    hostRead: (offset: number, length: number) => Uint8Array,
    options: { count?: number; seed?: number },
  ): Promise<number> {
    const count = options.count ?? 64;
    let rnd = (options.seed ?? 0x9e3779b9) >>> 0 || 1;
    const blocks = Math.floor(this.capacity / 4096);
    const chosen = new Set<number>();
    while (chosen.size < Math.min(count, blocks)) {
      rnd = nextRandom(rnd);
      chosen.add(rnd % blocks);
    }
    const extents: { offset: number; data: Uint8Array }[] = [...chosen].map((b) => ({
      offset: b * 4096,
      data: new Uint8Array(4096),
    }));
    if (this.capacity >= 2 << 20 && this.#maxBlock >= 1 << 20) {
      const mib = Math.floor(this.capacity / (1 << 20));
      rnd = nextRandom(rnd);
      const off = (rnd % mib) * (1 << 20);
      // The 1 MiB extent goes first and is not overlapped by the 4 KiB blocks.
      for (let i = extents.length - 1; i >= 0; i--) {
        if (extents[i].offset >= off && extents[i].offset < off + (1 << 20)) extents.splice(i, 1);
      }
      extents.unshift({ offset: off, data: new Uint8Array(1 << 20) });
    }
    for (const [i, e] of extents.entries()) {
      for (let j = 0; j < e.data.length; j += 4) {
        rnd = nextRandom(rnd);
        new DataView(e.data.buffer).setUint32(j, rnd ^ i, true);
      }
    }
    const slots = this.#slots.length;
    const run = async (read: boolean) => {
      for (let at = 0; at < extents.length; at += slots) {
        const part = extents.slice(at, at + slots);
        part.forEach((e, s) => {
          if (read) this.#mem.fill(this.#slots[s].data, e.data.length, 0);
          else this.#mem.write(this.#slots[s].data, e.data);
        });
        await this.#batch(part.map((e) => ({
          type: read ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT,
          sector: e.offset / SECTOR,
          len: e.data.length,
        })));
        if (!read) continue;
        part.forEach((e, s) => {
          const got = new Uint8Array(e.data.length);
          this.#mem.read(this.#slots[s].data, got);
          const at = firstDifference(got, e.data);
          if (at >= 0) {
            throw new BlkLoadError(`read back differs from what was written at ${e.offset + at}`);
          }
        });
      }
    };
    await run(false);
    await this.#batch([{ type: VIRTIO_BLK_T_FLUSH, sector: 0, len: 0 }]);
    await run(true);
    let checked = 0;
    for (const e of extents) {
      const at = firstDifference(hostRead(e.offset, e.data.length), e.data);
      if (at >= 0) {
        throw new BlkLoadError(`image file differs from what was written at ${e.offset + at}`);
      }
      checked += e.data.length;
    }
    return checked;
  }
}

/**
 * Read the disk capacity in bytes from a virtio-blk config space (le64 sectors at offset 0).
 * @param frontend A frontend that negotiated VHOST_USER_PROTOCOL_F_CONFIG.
 * @returns The capacity in bytes.
 */
export async function readCapacity(frontend: VhostUserFrontend): Promise<number> {
  const cfg = await frontend.getConfig(0, 8);
  const v = new DataView(cfg.buffer, cfg.byteOffset, 8);
  return (v.getUint32(0, true) + v.getUint32(4, true) * 0x1_0000_0000) * SECTOR;
}
