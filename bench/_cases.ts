/**
 * Benchmark cases shared by the `deno bench` files and the mitata runner:
 * each case is built once (guest memory, rings, pre-built chains) and exposes
 * one `run()` that does a fixed batch of work, plus what that batch is worth
 * in descriptors or bytes so runners can derive rates.
 *
 * Runtime-neutral: no `Deno` or `Bun` here.
 *
 * @module
 */

import { GuestMemory } from "../memory/guest_memory.ts";
import {
  DESCRIPTOR_SIZE,
  SplitQueue,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../queue/split.ts";
import {
  EVENT_SUPPRESSION_SIZE,
  PackedQueue,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
} from "../queue/packed.ts";
import { type DriverBuffer, DriverQueue } from "../testing/queue_driver.ts";
import { RngDevice } from "../devices/rng.ts";
import { MmioRegister, MmioTransport } from "../transport/mmio.ts";
import { MmioDriver } from "../testing/mmio_driver.ts";
import { VirtioDeviceConfig, VirtioQueueConfig } from "../devices/device.ts";
import {
  BlockDevice,
  blockRequestHeader,
  type BlockRequestLimits,
  FileBackend,
  parseRequest,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from "../devices/block.ts";
import { writeBenchImage } from "./_image.ts";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { close as closeFd, ftruncate, memfdCreate, mmapFd } from "../sys/mod.ts";

/** One benchmark workload: `run()` does `batch` operations. */
export interface BenchCase {
  /** Benchmark name, stating the batch. */
  name: string;
  /** Group the case belongs to. */
  group: "queue" | "rng" | "block" | "net";
  /** Operations (chains or requests) per `run()`. */
  batch: number;
  /** Descriptors processed per `run()` (queue cases). */
  descriptors: number;
  /** Bytes of payload produced or moved per `run()` (rng, block and net cases). */
  bytes: number;
  /** Do one batch. */
  run(): void;
}

/** Chains per `run()` of a queue case. */
export const QUEUE_BATCH = 256;

/** Descriptor counts per chain measured by the queue cases. */
export const CHAIN_LENGTHS: readonly number[] = [1, 3, 16];

function chainOf(descriptors: number): DriverBuffer[] {
  if (descriptors === 1) return [{ writable: 64 }];
  // A request header, payload segments, a status byte: the shape of a block request.
  const payload = Array.from({ length: descriptors - 2 }, () => ({ writable: 512 }));
  return [{ readable: new Uint8Array(16) }, ...payload, { writable: 1 }];
}

/** Ring formats measured by the queue cases. */
export type QueueFormat = "split" | "packed";

/**
 * Queue pop + addUsed for chains of `descriptors` descriptors, as a device's queue loop does
 * it: each `run()` makes `batch` chains available the way a driver adding a burst does, pops
 * them all, returns each with `addUsed` and asks `needsNotification` once.
 *
 * Split: the chains are built once in the descriptor table; the driver side writes the burst's
 * heads into the available ring and moves `avail.idx` once ({@linkcode DriverQueue.publishMany}).
 * Packed: the device's used descriptors overwrite the driver's, so the driver side writes
 * every descriptor of the burst again (copied from a prepared image of the ring: addresses,
 * lengths, buffer ids and flags for its wrap counter); the ring holds two bursts.
 * @param descriptors Descriptors per chain.
 * @param batch Chains per run.
 * @param format Ring format (default split).
 * @returns The case.
 */
export function queueCase(
  descriptors: number,
  batch: number = QUEUE_BATCH,
  format: QueueFormat = "split",
): BenchCase {
  return format === "split"
    ? splitQueueCase(descriptors, batch)
    : packedQueueCase(descriptors, batch);
}

function splitQueueCase(descriptors: number, batch: number): BenchCase {
  const size = 4096;
  if (descriptors * batch > size) throw new RangeError("Batch does not fit the queue");
  const mem = GuestMemory.create(16 << 20);
  const driver = new DriverQueue(mem, { size });
  const queue = new SplitQueue(size);
  driver.program(queue);
  queue.validate(mem);
  const heads = Array.from(
    { length: batch },
    () => driver.addChain(chainOf(descriptors), { publish: false }),
  );
  let sink = 0;
  return {
    name: `split queue pop+addUsed, ${descriptors}-descriptor chains (batch ${batch})`,
    group: "queue",
    batch,
    descriptors: descriptors * batch,
    bytes: 0,
    run() {
      driver.publishMany(heads);
      let chain;
      let popped = 0;
      while ((chain = queue.pop(mem)) !== null) {
        sink += chain.length;
        popped++;
        queue.addUsed(mem, chain.head, 0);
      }
      if (queue.needsNotification(mem)) sink++;
      if (popped !== batch || sink < 0) throw new Error(`popped ${popped} of ${batch}`);
    },
  };
}

function packedQueueCase(descriptors: number, batch: number): BenchCase {
  const burst = descriptors * batch; // ring descriptors per run
  const size = 2 * burst;
  if (size > 32768) throw new RangeError("Batch does not fit the queue");
  const mem = GuestMemory.create(16 << 20);
  const ringAddr = 0x1000;
  const queue = new PackedQueue(size);
  queue.size = size;
  queue.descTable = ringAddr;
  queue.availRing = ringAddr + DESCRIPTOR_SIZE * size;
  queue.usedRing = queue.availRing + EVENT_SUPPRESSION_SIZE;
  queue.ready = true;
  queue.validate(mem);
  // The ring as the driver writes it, once per value of its wrap counter: list j takes
  // positions j*descriptors … under buffer id j, each descriptor its own buffer.
  const images = [0, 1].map((wrap) => {
    const image = new Uint8Array(DESCRIPTOR_SIZE * size);
    const v = new DataView(image.buffer);
    const wrapFlags = wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
    let buffer = 0x100000;
    for (let j = 0; j < size / descriptors; j++) {
      const shape = chainOf(descriptors);
      shape.forEach((b, k) => {
        const off = DESCRIPTOR_SIZE * (j * descriptors + k);
        const len = "readable" in b ? b.readable.length : b.writable;
        v.setUint32(off, buffer, true);
        v.setUint32(off + 4, 0, true);
        v.setUint32(off + 8, len, true);
        v.setUint16(off + 12, j, true);
        const flags = ("readable" in b ? 0 : VIRTQ_DESC_F_WRITE) |
          (k < shape.length - 1 ? VIRTQ_DESC_F_NEXT : 0) | wrapFlags;
        v.setUint16(off + 14, flags, true);
        buffer += Math.ceil(len / 64) * 64;
      });
    }
    return image;
  });
  const ring = mem.slice(ringAddr, DESCRIPTOR_SIZE * size);
  let pos = 0;
  let wrap = 1;
  let sink = 0;
  return {
    name: `packed queue pop+addUsed, ${descriptors}-descriptor chains (batch ${batch})`,
    group: "queue",
    batch,
    descriptors: burst,
    bytes: 0,
    run() {
      // One thread: the whole burst is written before the device looks, so the order in which
      // a driver must store the flags (each list's first descriptor last) does not matter here.
      const from = DESCRIPTOR_SIZE * pos;
      ring.set(images[wrap].subarray(from, from + DESCRIPTOR_SIZE * burst), from);
      pos += burst;
      if (pos === size) {
        pos = 0;
        wrap ^= 1;
      }
      let chain;
      let popped = 0;
      while ((chain = queue.pop(mem)) !== null) {
        sink += chain.length;
        popped++;
        queue.addUsed(mem, chain.head, 0);
      }
      if (queue.needsNotification(mem)) sink++;
      if (popped !== batch || sink < 0) throw new Error(`popped ${popped} of ${batch}`);
    },
  };
}

/**
 * Entropy requests of `size` writable bytes served by the rng device behind
 * the MMIO transport: each `run()` publishes `batch` pre-built requests and
 * writes QueueNotify once; the device fills them through `serveQueue`.
 * @param size Writable bytes per request.
 * @param batch Requests per run.
 * @returns The case.
 */
export function rngCase(size: number, batch: number): BenchCase {
  const mem = GuestMemory.create(8 << 20);
  const rng = new RngDevice({ queueSize: 256 });
  const transport = new MmioTransport(rng, mem, {
    onError: (e) => {
      throw e;
    },
  });
  const driver = new MmioDriver(transport, mem);
  const [queue] = driver.init({ bufferBase: 0x100000 });
  const heads = Array.from(
    { length: batch },
    () => queue.addChain([{ writable: size }], { publish: false }),
  );
  const label = size >= 1024 ? `${size / 1024} KiB` : `${size} B`;
  return {
    name: `rng ${label} requests via MMIO QueueNotify (batch ${batch})`,
    group: "rng",
    batch,
    descriptors: batch,
    bytes: size * batch,
    run() {
      for (let i = 0; i < heads.length; i++) queue.publish(heads[i]);
      transport.writeU32(MmioRegister.QueueNotify, 0);
    },
  };
}

const PARSE_LIMITS: BlockRequestLimits = {
  capacitySectors: 1 << 21,
  readOnly: false,
  blockSize: 512,
  discard: true,
  maxDiscardSegments: 32,
  maxDiscardSectors: 0x3fffff,
  writeZeroes: true,
  maxWriteZeroesSegments: 32,
  maxWriteZeroesSectors: 0x3fffff,
};

/**
 * The pure request parser on real chains: each `run()` re-publishes `batch` pre-built
 * 4 KiB IN requests, pops each, parses and validates it and returns it with `addUsed`: the
 * queue work of `queueCase(3)` plus the parse.
 * @param batch Requests per run.
 * @returns The case.
 */
export function blockParseCase(batch: number = QUEUE_BATCH): BenchCase {
  const mem = GuestMemory.create(16 << 20);
  const driver = new DriverQueue(mem, { size: 1024 });
  const queue = new SplitQueue(1024);
  driver.program(queue);
  queue.validate(mem);
  const heads = Array.from({ length: batch }, (_, i) =>
    driver.addChain([
      { readable: blockRequestHeader(VIRTIO_BLK_T_IN, i * 8) },
      { writable: 4096 },
      { writable: 1 },
    ], { publish: false }));
  let sink = 0;
  return {
    name: `block request pop+parse+addUsed, 4 KiB IN (batch ${batch})`,
    group: "block",
    batch,
    descriptors: 3 * batch,
    bytes: 0,
    run() {
      for (let i = 0; i < heads.length; i++) driver.publish(heads[i]);
      let chain;
      while ((chain = queue.pop(mem)) !== null) {
        const req = parseRequest(chain, PARSE_LIMITS);
        if (!req.ok) throw new Error(req.reason);
        sink += req.length;
        queue.addUsed(mem, chain.head, 0);
      }
      if (queue.needsNotification(mem)) sink++;
      if (sink < 0) throw new Error("unreachable");
    },
  };
}

/** Size of the image the in-process block cases serve (kept in the page cache by use). */
const BENCH_DISK = 64 << 20;
let benchDisk: string | undefined;

/** A 64 MiB image in the temporary directory, written once per process. */
function benchDiskPath(): string {
  if (benchDisk !== undefined) return benchDisk;
  const path = join(tmpdir(), "virtio-ts-bench-disk.img");
  writeBenchImage(path, BENCH_DISK >> 20);
  benchDisk = path;
  return path;
}

/** Options of {@linkcode blockDeviceCase}. */
export interface BlockDeviceCaseOptions {
  /** IN (read) or OUT (write). */
  op: "read" | "write";
  /** Payload bytes per request. */
  size: number;
  /** Requests per `run()`. */
  batch: number;
  /** Split each payload into segments of this many bytes (default: one segment). */
  segment?: number;
  /**
   * Guest memory mapped from a memfd, as a vhost-user backend has it (default: an
   * `ArrayBuffer`); scattered segments then go to the kernel as one iovec table.
   */
  mapped?: boolean;
}

/**
 * The in-process device path: driver harness → {@linkcode BlockDevice} → {@linkcode FileBackend}
 * on an image in the page cache. Each `run()` publishes `batch` pre-built requests at
 * successive offsets and calls `processQueue` once, which parses, does the I/O, writes the
 * status, adds the used entries and decides on the interrupt.
 * @param options The request shape.
 * @returns The case.
 */
export function blockDeviceCase(options: BlockDeviceCaseOptions): BenchCase {
  const { op, size, batch } = options;
  const segment = options.segment ?? size;
  // A pool of chains spread over the whole image, published `batch` at a time in turn, so
  // successive runs touch different pages of the file and of guest memory (4 KiB requests at
  // scattered offsets, larger ones in order).
  const pool = Math.max(batch, Math.min(256, Math.floor(BENCH_DISK / size)));
  const memSize = 2 * size * pool + (4 << 20);
  let memory: GuestMemory;
  if (options.mapped) {
    const fd = memfdCreate("bench-guest");
    ftruncate(fd, memSize);
    memory = new GuestMemory([{ base: 0, buffer: mmapFd(fd, memSize).buffer }]);
    closeFd(fd);
  } else {
    memory = GuestMemory.create(memSize);
  }
  const backend = new FileBackend(benchDiskPath());
  const blk = new BlockDevice({ backend, queueSize: 1024 });
  const driver = new DriverQueue(memory, { size: 1024, gaps: false });
  const queue = new SplitQueue(1024);
  driver.program(queue);
  const features = BigInt(blk.getAvailFeatures(0)) | (BigInt(blk.getAvailFeatures(1)) << 32n);
  blk.setAckedFeatures(0, Number(features & 0xffffffffn));
  blk.setAckedFeatures(1, Number(features >> 32n));
  let interrupts = 0;
  blk.activate(
    new VirtioDeviceConfig({
      memory,
      queues: [new VirtioQueueConfig(0, queue, { notify: () => interrupts++ })],
      deviceChangeNotifier: { notify() {} },
      ackedFeatures: blk.ackedFeatures(),
    }),
  );
  const type = op === "read" ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT;
  const sectors = size / 512;
  const slots = Math.floor(BENCH_DISK / size);
  const heads = Array.from({ length: pool }, (_, i) => {
    const slot = size < 65536 ? (i * 7919) % slots : i % slots;
    const header = { readable: blockRequestHeader(type, slot * sectors) };
    const data = Array.from(
      { length: size / segment },
      () => op === "read" ? { writable: segment } : { readable: new Uint8Array(segment).fill(i) },
    );
    return driver.addChain([header, ...data, { writable: 1 }], {
      publish: false,
      indirect: data.length > 8,
    });
  });
  let next = 0;
  const label = size >= 1 << 20 ? `${size >> 20} MiB` : `${size >> 10} KiB`;
  const shape = segment === size ? "" : ` in ${size / segment} segments`;
  return {
    name: `block ${op === "read" ? "IN" : "OUT"} ${label}${shape}, ` +
      `${options.mapped ? "memfd" : "ArrayBuffer"} guest memory, file in page cache ` +
      `(batch ${batch})`,
    group: "block",
    batch,
    descriptors: batch * (2 + size / segment),
    bytes: size * batch,
    run() {
      for (let i = 0; i < batch; i++) {
        driver.publish(heads[next]);
        next = next + 1 === pool ? 0 : next + 1;
      }
      blk.processQueue(0);
      driver.setLastUsed(driver.usedIdx());
      if (blk.stats.errors !== 0 || interrupts < 0) throw new Error("block request failed");
    },
  };
}

/** The block cases: parsing, then 4 KiB, 64 KiB and 1 MiB reads and writes in process. */
export function blockCases(): BenchCase[] {
  return [
    blockParseCase(),
    blockDeviceCase({ op: "read", size: 4096, batch: 64 }),
    blockDeviceCase({ op: "write", size: 4096, batch: 64 }),
    blockDeviceCase({ op: "read", size: 65536, batch: 16 }),
    blockDeviceCase({ op: "read", size: 1 << 20, batch: 4 }),
    blockDeviceCase({ op: "write", size: 1 << 20, batch: 4 }),
    blockDeviceCase({ op: "read", size: 1 << 20, batch: 4, segment: 4096, mapped: true }),
  ];
}

/** Every queue case: split and packed rings, chains of 1, 3 and 16 descriptors. */
export function queueCases(): BenchCase[] {
  const formats: QueueFormat[] = ["split", "packed"];
  return CHAIN_LENGTHS.flatMap((n) => formats.map((f) => queueCase(n, QUEUE_BATCH, f)));
}

/** Every rng case: 4 KiB and 64 KiB requests. */
export function rngCases(): BenchCase[] {
  return [rngCase(4096, 64), rngCase(65536, 8)];
}

/**
 * A rate line for a case from its mean time per `run()`.
 * @param c The case.
 * @param nsPerRun Mean nanoseconds per `run()`.
 * @returns E.g. `"4.10 M chains/s, 12.30 M descriptors/s"`, `"456.7 MB/s"`, `"80 k req/s, 328 MB/s"` or
 *   `"1.20 M frames/s, 0.61 Gbit/s"`.
 */
export function rate(c: BenchCase, nsPerRun: number): string {
  const perSecond = 1e9 / nsPerRun;
  if (c.group === "rng") return `${(c.bytes * perSecond / 1e6).toFixed(1)} MB/s`;
  if (c.group === "net") {
    const frames = c.batch * perSecond;
    const fps = frames >= 1e6 ? `${(frames / 1e6).toFixed(2)} M` : `${(frames / 1e3).toFixed(0)} k`;
    return `${fps} frames/s, ${(c.bytes * 8 * perSecond / 1e9).toFixed(2)} Gbit/s`;
  }
  if (c.group === "block") {
    const reqs = `${(c.batch * perSecond / 1e3).toFixed(0)} k req/s`;
    return c.bytes === 0 ? reqs : `${reqs}, ${(c.bytes * perSecond / 1e6).toFixed(0)} MB/s`;
  }
  const chains = `${(c.batch * perSecond / 1e6).toFixed(2)} M chains/s`;
  if (c.descriptors === c.batch) return chains;
  return `${chains}, ${(c.descriptors * perSecond / 1e6).toFixed(2)} M descriptors/s`;
}
