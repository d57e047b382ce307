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
import { SplitQueue } from "../queue/split.ts";
import { type DriverBuffer, DriverQueue } from "../queue/testing.ts";
import { RngDevice } from "../devices/rng.ts";
import { MmioRegister, MmioTransport } from "../transport/mmio.ts";
import { MmioDriver } from "../transport/mmio_driver.ts";

/** One benchmark workload: `run()` does `batch` operations. */
export interface BenchCase {
  /** Benchmark name, stating the batch. */
  name: string;
  /** Group the case belongs to. */
  group: "queue" | "rng";
  /** Operations (chains or requests) per `run()`. */
  batch: number;
  /** Descriptors processed per `run()` (queue cases). */
  descriptors: number;
  /** Bytes of payload produced per `run()` (rng cases). */
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

/**
 * Split-queue pop + addUsed for chains of `descriptors` descriptors. The
 * chains are built once; each `run()` re-publishes the same heads, pops them
 * all, returns them with `addUsed` and asks `needsNotification` once, as a
 * device's queue loop does.
 * @param descriptors Descriptors per chain.
 * @param batch Chains per run.
 * @returns The case.
 */
export function queueCase(descriptors: number, batch: number = QUEUE_BATCH): BenchCase {
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
      for (let i = 0; i < heads.length; i++) driver.publish(heads[i]);
      let chain;
      while ((chain = queue.pop(mem)) !== null) {
        sink += chain.length;
        queue.addUsed(mem, chain.head, 0);
      }
      if (queue.needsNotification(mem)) sink++;
      if (sink < 0) throw new Error("unreachable");
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

/** Every queue case. */
export function queueCases(): BenchCase[] {
  return CHAIN_LENGTHS.map((n) => queueCase(n));
}

/** Every rng case: 4 KiB and 64 KiB requests. */
export function rngCases(): BenchCase[] {
  return [rngCase(4096, 64), rngCase(65536, 8)];
}

/**
 * A rate line for a case from its mean time per `run()`.
 * @param c The case.
 * @param nsPerRun Mean nanoseconds per `run()`.
 * @returns E.g. `"12.3 M descriptors/s"` or `"456.7 MB/s"`.
 */
export function rate(c: BenchCase, nsPerRun: number): string {
  const perSecond = 1e9 / nsPerRun;
  if (c.group === "rng") return `${(c.bytes * perSecond / 1e6).toFixed(1)} MB/s`;
  return `${(c.descriptors * perSecond / 1e6).toFixed(2)} M descriptors/s`;
}
