import { describe, it } from "node:test";
import { setImmediate } from "node:timers";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  SplitQueue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_DESC_F_WRITE,
} from "../../queue/split.ts";
import { type DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";
import {
  featureBit,
  TYPE_RNG,
  VIRTIO_F_VERSION_1,
  VIRTIO_INTR_VRING,
  VirtioDeviceConfig,
  VirtioError,
  VirtioQueueConfig,
} from "../../devices/device.ts";
import {
  RNG_CHUNK,
  RNG_MAX_BYTES_PER_PASS,
  RNG_MAX_BYTES_PER_REQUEST,
  type RngClock,
  RngDevice,
  type RngOptions,
} from "../../devices/rng.ts";
import { type MmioError, MmioRegister, MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";

const ALL = ~0n & 0xffff_ffff_ffff_ffffn;
const NO_EVENT_IDX = ALL & ~featureBit(VIRTIO_F_EVENT_IDX);

interface Rig {
  mem: GuestMemory;
  rng: RngDevice;
  transport: MmioTransport;
  driver: MmioDriver;
  queue: DriverQueue;
  errors: MmioError[];
  rngErrors: VirtioError[];
  interrupts: { count: number };
}

function rig(
  options: {
    version?: 1 | 2;
    features?: bigint;
    queueSize?: number;
    rng?: RngOptions;
    memory?: GuestMemory;
  } = {},
): Rig {
  const mem = options.memory ?? GuestMemory.create(4 << 20);
  const rngErrors: VirtioError[] = [];
  const rng = new RngDevice({ onError: (e) => rngErrors.push(e), ...options.rng });
  const errors: MmioError[] = [];
  const interrupts = { count: 0 };
  const transport = new MmioTransport(rng, mem, {
    version: options.version,
    interrupt: () => interrupts.count++,
    onError: (e) => errors.push(e),
  });
  const driver = new MmioDriver(transport, mem);
  const [queue] = driver.init({ features: options.features, queueSize: options.queueSize });
  assert.deepEqual(errors.map((e) => e.message), []);
  return { mem, rng, transport, driver, queue, errors, rngErrors, interrupts };
}

/** Add a chain, kick, and return the used entry; checks the used length is the writable size. */
function request(r: Rig, buffers: DriverBuffer[], indirect = false): Uint8Array {
  const head = r.queue.addChain(buffers, { indirect });
  r.driver.kick(0, true);
  const used = r.queue.takeUsed();
  assert.ok(used !== null, "the device completed the request");
  assert.equal(used.id, head);
  const writable = buffers.reduce((n, b) => n + ("writable" in b ? b.writable : 0), 0);
  assert.equal(used.len, writable);
  assert.equal(used.written.length, writable);
  return used.written;
}

/** Random-looking: not all bytes equal (for more than one byte) and many distinct values. */
function assertNotConstant(bytes: Uint8Array): void {
  if (bytes.length < 2) return;
  const distinct = new Set(bytes).size;
  assert.ok(distinct > 1, `all ${bytes.length} bytes are equal`);
  if (bytes.length >= 4096) assert.ok(distinct > 200, `only ${distinct} distinct byte values`);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

const SIZES = [1, 16, 4096, 65536, 65537, 200000];
/** Caps raised above every request of the tests that fill whole large buffers. */
const BIG: RngOptions = { maxBytesPerRequest: 1 << 20, maxBytesPerPass: 1 << 22 };

for (const version of [2, 1] as const) {
  const mode = version === 2 ? "modern" : "legacy";

  describe(`RngDevice through MmioTransport (${mode})`, () => {
    it("is identified as an entropy device and initialises", () => {
      const r = rig({ version });
      assert.equal(r.transport.readU32(MmioRegister.DeviceId), TYPE_RNG);
      assert.equal(r.transport.isActive, true);
      const status = r.driver.status();
      assert.equal(status & 0x04, 0x04, "DRIVER_OK");
      assert.equal(status & 0x08, version === 2 ? 0x08 : 0, "FEATURES_OK only in modern mode");
      const versionBit = r.driver.features & featureBit(VIRTIO_F_VERSION_1);
      assert.equal(versionBit !== 0n, version === 2);
    });

    for (const size of SIZES) {
      it(`fills a ${size}-byte buffer with random bytes`, () => {
        const r = rig({ version, rng: BIG });
        const a = request(r, [{ writable: size }]);
        assertNotConstant(a);
        const b = request(r, [{ writable: size }]);
        if (size >= 16) assert.ok(!equalBytes(a, b), "two reads differ");
        assert.equal(r.rng.bytesServed, 2 * size);
        assert.equal(r.rng.requestsServed, 2);
      });
    }

    it("fills a multi-segment chain completely, across chunk boundaries", () => {
      const r = rig({ version, rng: BIG });
      const sizes = [3, 4096, 1, RNG_CHUNK + 5, 70000];
      const out = request(r, sizes.map((writable) => ({ writable })));
      let off = 0;
      for (const n of sizes) {
        assertNotConstant(out.subarray(off, off + n));
        off += n;
      }
      // No segment was left as zeros: a zero run of 64 bytes is practically impossible.
      for (let i = 0; i + 64 <= out.length; i += 64) {
        assert.ok(out.subarray(i, i + 64).some((b) => b !== 0), `zeros at ${i}`);
      }
    });

    it("fills an indirect chain of several segments", () => {
      const r = rig({ version, rng: BIG });
      const a = request(r, [{ writable: 16 }, { writable: 4096 }, { writable: 65537 }], true);
      assertNotConstant(a);
      assert.ok(a.subarray(0, 16).some((b) => b !== 0));
      const b = request(r, [{ writable: 200000 }], true);
      assertNotConstant(b);
    });

    it("ignores device-readable buffers and reports only the writable length", () => {
      const r = rig({ version });
      const out = request(r, [{ readable: new Uint8Array(100).fill(7) }, { writable: 64 }]);
      assertNotConstant(out);
    });

    it("completes a chain without writable buffers with length 0", () => {
      const r = rig({ version });
      const out = request(r, [{ readable: new Uint8Array(8) }]);
      assert.equal(out.length, 0);
      assert.equal(r.rng.requestsServed, 1);
    });

    it("serves a batch of requests with one interrupt", () => {
      const r = rig({ version });
      for (let i = 0; i < 10; i++) r.queue.addChain([{ writable: 32 + i }]);
      r.driver.kick(0, true);
      const used = r.queue.takeAllUsed();
      assert.deepEqual(used.map((u) => u.len), Array.from({ length: 10 }, (_, i) => 32 + i));
      assert.equal(r.interrupts.count, 1);
      assert.equal(r.driver.ackInterrupt(), VIRTIO_INTR_VRING);
    });
  });
}

describe("RngDevice feature negotiation", () => {
  it("offers VERSION_1, INDIRECT_DESC and EVENT_IDX", () => {
    const r = rig();
    const offered = r.driver.deviceFeatures();
    for (const bit of [VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX]) {
      assert.notEqual(offered & featureBit(bit), 0n, `bit ${bit}`);
    }
  });

  it("with EVENT_IDX negotiated, the driver kicks only when the device re-armed", () => {
    const r = rig();
    assert.equal(r.transport.queues[0].eventIdx, true);
    assert.equal(r.queue.eventIdx, true);
    const availEvent = r.queue.usedRing + 4 + 8 * r.queue.size;
    let kicks = 0;
    for (let i = 0; i < 5; i++) {
      r.queue.addChain([{ writable: 8 }]);
      if (r.driver.kick(0)) kicks++;
      assert.equal(r.queue.takeUsed()!.len, 8);
      assert.equal(r.mem.readU16(availEvent), i + 1, "the device re-armed past what it took");
    }
    assert.equal(kicks, 5);
    // Two chains published before any kick: only the first crosses avail_event.
    r.queue.addChain([{ writable: 8 }]);
    assert.equal(r.queue.kickNeeded(), true);
    r.queue.addChain([{ writable: 8 }]);
    assert.equal(r.queue.kickNeeded(), false);
    r.driver.kick(0, true);
    assert.equal(r.queue.takeAllUsed().length, 2);
  });

  it("with EVENT_IDX negotiated, interrupts follow used_event", () => {
    const r = rig();
    r.queue.autoUsedEvent = false;
    r.queue.addChain([{ writable: 8 }]);
    r.driver.kick(0, true);
    assert.equal(r.interrupts.count, 1, "the first completion always interrupts");
    r.queue.takeUsed();
    // Ask for an interrupt only after the entry at used index 3.
    r.queue.setUsedEvent(3);
    const counts: number[] = [];
    for (let i = 0; i < 4; i++) {
      r.queue.addChain([{ writable: 8 }]);
      r.driver.kick(0, true);
      r.queue.takeUsed();
      counts.push(r.interrupts.count);
    }
    assert.deepEqual(counts, [1, 1, 2, 2]);
  });

  it("without EVENT_IDX, every batch interrupts and notifications use the flags", () => {
    const r = rig({ features: NO_EVENT_IDX });
    assert.equal(r.transport.queues[0].eventIdx, false);
    assert.equal(r.queue.eventIdx, false);
    assert.equal(r.transport.device.ackedFeatures() & featureBit(VIRTIO_F_EVENT_IDX), 0n);
    let kicks = 0;
    for (let i = 0; i < 4; i++) {
      r.queue.addChain([{ writable: 8 }]);
      if (r.driver.kick(0)) kicks++;
      assert.equal(r.queue.takeUsed()!.len, 8);
    }
    assert.equal(kicks, 4);
    assert.equal(r.interrupts.count, 4);
    r.queue.suppressInterrupts(true);
    r.queue.addChain([{ writable: 8 }]);
    r.driver.kick(0);
    assert.equal(r.queue.takeUsed()!.len, 8);
    assert.equal(r.interrupts.count, 4, "VIRTQ_AVAIL_F_NO_INTERRUPT honoured");
  });

  it("without INDIRECT_DESC, an indirect chain is returned with length 0", () => {
    const r = rig({ features: ALL & ~featureBit(VIRTIO_F_INDIRECT_DESC) });
    const head = r.queue.addChain([{ writable: 8 }], { indirect: true });
    const good = r.queue.addChain([{ writable: 8 }]);
    r.driver.kick(0, true);
    assert.deepEqual(r.queue.takeAllUsed().map((u) => [u.id, u.len]), [[head, 0], [good, 8]]);
    assert.equal(r.rngErrors.length, 1);
    assert.equal(r.rngErrors[0].kind, "QueueError");
    assert.deepEqual(r.errors.map((e) => e.code), ["DeviceError"]);
  });
});

describe("RngDevice", () => {
  it("uses the given source, at most RNG_CHUNK bytes per call", () => {
    const calls: number[] = [];
    let counter = 0;
    const r = rig({
      rng: {
        ...BIG,
        source: (buf) => {
          calls.push(buf.length);
          for (let i = 0; i < buf.length; i++) buf[i] = counter++ & 0xff;
        },
      },
    });
    const out = request(r, [{ writable: 10 }, { writable: 2 * RNG_CHUNK + 1 }]);
    assert.deepEqual(calls, [RNG_CHUNK, RNG_CHUNK, 11]);
    assert.ok(out.every((b, i) => b === (i & 0xff)));
  });

  it("reports a request on a queue it does not have", () => {
    const r = rig();
    r.rng.processQueue(1);
    assert.equal(r.rngErrors.length, 1);
    assert.equal(r.rngErrors[0].kind, "InvalidInput");
  });

  it("does nothing before activation", () => {
    const rng = new RngDevice();
    rng.processQueue(0);
    assert.equal(rng.requestsServed, 0);
  });

  it("has one queue and an empty configuration space", () => {
    const rng = new RngDevice({ queueSize: 64 });
    assert.deepEqual(rng.queueMaxSizes(), [64]);
    assert.equal(rng.deviceType(), TYPE_RNG);
    assert.throws(() => rng.readConfig(0, new Uint8Array(1)), VirtioError);
  });

  it("serves a small queue wrapping many times", () => {
    const r = rig({ queueSize: 2 });
    for (let i = 0; i < 50; i++) assertNotConstant(request(r, [{ writable: 32 }]));
    assert.equal(r.rng.requestsServed, 50);
  });
});

describe("RngDevice on guest memory of adjacent regions", () => {
  // [0, 1 MiB), one page, then the rest: a frontend may describe guest RAM as several regions.
  const EDGE = 1 << 20;
  const PAGE = 0x1000;
  const memory = () =>
    new GuestMemory([
      { base: 0, buffer: new ArrayBuffer(EDGE) },
      { base: EDGE, buffer: new ArrayBuffer(PAGE) },
      { base: EDGE + PAGE, buffer: new ArrayBuffer(3 * EDGE - PAGE) },
    ]);

  for (const indirect of [false, true]) {
    const how = indirect ? ", through an indirect table that straddles one too" : "";
    it(`fills a buffer spanning three regions, every byte${how}`, () => {
      let counter = 0;
      const r = rig({
        memory: memory(),
        rng: {
          source: (buf) => {
            for (let i = 0; i < buf.length; i++) buf[i] = (counter++ % 251) + 1;
          },
        },
      });
      const head = r.queue.addChain([{ writable: 100 }, { writable: 8192, at: EDGE - 3000 }], {
        indirectAt: indirect ? EDGE - 24 : undefined,
      });
      r.driver.kick(0, true);
      const used = r.queue.takeUsed()!;
      assert.equal(used.id, head);
      assert.equal(used.len, 8292);
      assert.ok(used.written.every((b, i) => b === (i % 251) + 1), "every byte, in order");
      assert.deepEqual(r.rngErrors, []);
    });
  }
});

// The used length is exactly the bytes written from the start of the writable part (virtio 1.2
// §2.7.8.2). What was written is found as in block_test.ts: each request runs twice on fresh
// devices with the same deterministic source, its writable buffers pre-filled with 0x00 and
// then 0xff; a byte was written when it differs from its canary in either run.
interface RngLengthCase {
  name: string;
  buffers: DriverBuffer[];
  rng?: RngOptions;
  len: number;
}

const RNG_LENGTH_CASES: RngLengthCase[] = [
  { name: "one buffer", buffers: [{ writable: 64 }], len: 64 },
  {
    name: "several buffers across source chunks",
    buffers: [{ writable: 3 }, { writable: RNG_CHUNK }, { writable: 7 }],
    rng: BIG,
    len: RNG_CHUNK + 10,
  },
  {
    name: "buffers larger than the per-request cap (the default)",
    buffers: [{ writable: 3 }, { writable: RNG_CHUNK }, { writable: 7 }],
    len: RNG_MAX_BYTES_PER_REQUEST,
  },
  {
    name: "a cap ending inside the second buffer",
    buffers: [{ writable: 30 }, { writable: 200 }],
    rng: { maxBytesPerRequest: 100 },
    len: 100,
  },
  {
    name: "device-readable buffers first",
    buffers: [{ readable: new Uint8Array(32) }, { writable: 16 }],
    len: 16,
  },
  { name: "no writable buffer", buffers: [{ readable: new Uint8Array(8) }], len: 0 },
];

function rngRunWithCanary(c: RngLengthCase, canary: number): { len: number; written: Uint8Array } {
  let counter = 0;
  const r = rig({
    rng: {
      source: (buf) => {
        for (let i = 0; i < buf.length; i++) buf[i] = counter++ & 0xff;
      },
      ...c.rng,
    },
  });
  const buffers = c.buffers.map((b) => {
    if (!("writable" in b)) return b;
    const at = r.queue.alloc(b.writable);
    r.mem.fill(at, b.writable, canary);
    return { writable: b.writable, at };
  });
  r.queue.addChain(buffers);
  r.driver.kick(0, true);
  const used = r.queue.takeUsed();
  assert.ok(used !== null);
  return used;
}

describe("RngDevice used length", () => {
  for (const c of RNG_LENGTH_CASES) {
    it(`is exactly the bytes written: ${c.name}`, () => {
      const low = rngRunWithCanary(c, 0x00);
      const high = rngRunWithCanary(c, 0xff);
      const written = (i: number) => low.written[i] !== 0x00 || high.written[i] !== 0xff;
      let prefix = 0;
      while (prefix < low.written.length && written(prefix)) prefix++;
      assert.equal(low.len, c.len);
      assert.equal(high.len, c.len);
      assert.equal(low.len, prefix, "the used length is the written prefix");
      for (let i = prefix; i < low.written.length; i++) {
        assert.ok(!written(i), `byte ${i} written beyond the used length`);
      }
    });
  }
});

/** A clock the test moves by hand; timers fire in `advance`, in time order. */
class FakeClock implements RngClock {
  t = 0;
  readonly #timers = new Map<number, { at: number; fn: () => void }>();
  #next = 1;
  now(): number {
    return this.t;
  }
  setTimer(fn: () => void, ms: number): unknown {
    const id = this.#next++;
    this.#timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimer(handle: unknown): void {
    this.#timers.delete(handle as number);
  }
  /** Timers set and not yet fired or cleared. */
  get pending(): number {
    return this.#timers.size;
  }
  /** Fire the earliest timer only, moving time to it (a turn of the event loop). */
  step(): void {
    let due: [number, { at: number; fn: () => void }] | undefined;
    for (const entry of this.#timers) {
      if (due === undefined || entry[1].at < due[1].at) due = entry;
    }
    assert.ok(due !== undefined, "a timer is set");
    this.#timers.delete(due[0]);
    this.t = Math.max(this.t, due[1].at);
    due[1].fn();
  }
  /** Move time forward by `ms`, firing each timer that falls due on the way. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let due: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.#timers) {
        if (entry[1].at <= end && (due === undefined || entry[1].at < due[1].at)) due = entry;
      }
      if (due === undefined) break;
      this.#timers.delete(due[0]);
      this.t = Math.max(this.t, due[1].at);
      due[1].fn();
    }
    this.t = end;
  }
}

/** Guest address of the huge buffers below: past the rig's rings and buffers. */
const HUGE_BASE = 4 << 20;
/** The largest buffer one descriptor can describe. */
const HUGE = 0xffffffff;

/**
 * 4 MiB of ordinary guest memory, then 4 GiB of guest address space made of 64 adjacent
 * 64 MiB regions that all alias one buffer: a valid home for 4 GiB - 1 byte buffers.
 */
function hugeMemory(): GuestMemory {
  const alias = new ArrayBuffer(64 << 20);
  const regions = [{ base: 0, buffer: new ArrayBuffer(HUGE_BASE) }];
  for (let i = 0; i < 64; i++) regions.push({ base: HUGE_BASE + i * (64 << 20), buffer: alias });
  return new GuestMemory(regions);
}

/** Publish `count` chains of one 4 GiB - 1 byte writable buffer, as raw descriptors. */
function addHuge(r: Rig, count: number): void {
  for (let i = 0; i < count; i++) {
    r.queue.writeDescriptor(i, { addr: HUGE_BASE, len: HUGE, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    r.queue.publish(i);
  }
}

function countingSource(calls: number[]): (buf: Uint8Array) => void {
  return (buf) => {
    calls.push(buf.length);
    buf.fill(0x5a);
  };
}

describe("RngDevice bounded work", () => {
  it("caps a 4 GiB buffer at maxBytesPerRequest (64 KiB by default)", () => {
    const calls: number[] = [];
    const r = rig({ memory: hugeMemory(), rng: { source: countingSource(calls) } });
    addHuge(r, 4);
    r.driver.kick(0, true);
    const used = r.queue.takeAllUsed();
    assert.deepEqual(used.map((u) => u.len), new Array(4).fill(RNG_MAX_BYTES_PER_REQUEST));
    assert.equal(calls.reduce((a, b) => a + b, 0), 4 * RNG_MAX_BYTES_PER_REQUEST);
    assert.equal(r.rng.bytesServed, 4 * RNG_MAX_BYTES_PER_REQUEST);
    assert.equal(r.mem.readU8(HUGE_BASE + RNG_MAX_BYTES_PER_REQUEST - 1), 0x5a);
    assert.equal(r.mem.readU8(HUGE_BASE + RNG_MAX_BYTES_PER_REQUEST), 0, "nothing past the cap");
  });

  it("caps a pass at maxBytesPerPass; the transport serves the rest on later turns", async () => {
    const calls: number[] = [];
    const r = rig({ memory: hugeMemory(), rng: { source: countingSource(calls) } });
    const perPass = RNG_MAX_BYTES_PER_PASS / RNG_MAX_BYTES_PER_REQUEST; // 16 requests
    addHuge(r, 40);
    r.driver.kick(0, true);
    assert.equal(r.queue.takeAllUsed().length, perPass);
    assert.equal(r.rng.bytesServed, RNG_MAX_BYTES_PER_PASS);
    assert.equal(r.transport.queues[0].nextAvail, perPass, "the rest stays in the ring");
    assert.equal(r.transport.core.hasContinuation(0), true);
    let served = perPass;
    for (let turn = 0; turn < 100 && served < 40; turn++) {
      const interrupts = r.interrupts.count;
      // One turn of the event loop: the transport continues with setImmediate.
      await new Promise((resolve) => setImmediate(resolve));
      const n = r.queue.takeAllUsed().length;
      assert.ok(n <= perPass, `${n} requests in one turn`);
      if (n > 0) assert.ok(r.interrupts.count > interrupts, "each pass signals the driver");
      served += n;
    }
    assert.equal(served, 40);
    assert.equal(r.transport.core.hasContinuation(0), false);
    assert.equal(r.rng.bytesServed, 40 * RNG_MAX_BYTES_PER_REQUEST);
    assert.deepEqual(r.rngErrors, []);
  });

  it("a pass run by the rate-limit timer that hits the pass cap continues by itself", () => {
    const clock = new FakeClock();
    const r = rig({
      memory: hugeMemory(),
      rng: {
        rateLimit: { bytes: 10 * RNG_CHUNK, periodMs: 100 },
        maxBytesPerPass: 4 * RNG_CHUNK,
        clock,
      },
    });
    addHuge(r, 30);
    const counts: number[] = [];
    const take = () => counts.push(r.queue.takeAllUsed().length);
    // Called directly, as the transport would on a kick and its continuations.
    while (r.rng.processQueue(0)) take();
    take();
    assert.equal(clock.pending, 1, "the period's bytes are spent: a timer waits for the next");
    while (clock.pending > 0) {
      clock.step();
      take();
    }
    // 10 chunks a period in passes of at most 4: the timer continues its own capped passes.
    assert.deepEqual(counts, [4, 4, 2, 4, 4, 2, 4, 4, 2]);
    assert.equal(clock.t, 200);
    assert.equal(r.rng.bytesServed, 30 * RNG_CHUNK);
    assert.equal(r.transport.core.hasContinuation(0), false);
  });

  it("holds a rate limit over several periods; waiting requests stay in the ring", () => {
    const clock = new FakeClock();
    const r = rig({ rng: { rateLimit: { bytes: 1000, periodMs: 100 }, clock } });
    for (let i = 0; i < 20; i++) r.queue.addChain([{ writable: 300 }]);
    r.driver.kick(0, true);
    const lens: number[] = [];
    for (let period = 0; period < 5; period++) {
      // 1000 bytes a period: three whole requests and 100 bytes of a fourth (at least one
      // byte each, virtio 1.2 §5.4.6.2), then the rest waits.
      const used = r.queue.takeAllUsed();
      assert.deepEqual(used.map((u) => u.len), [300, 300, 300, 100], `period ${period}`);
      lens.push(...used.map((u) => u.len));
      assert.equal(r.rng.bytesServed, 1000 * (period + 1));
      assert.equal(r.transport.queues[0].nextAvail, 4 * (period + 1));
      // Kicks within the period change nothing.
      clock.advance(50);
      r.driver.kick(0, true);
      assert.equal(r.queue.pendingUsed(), 0);
      assert.equal(r.rng.bytesServed, 1000 * (period + 1));
      const interrupts = r.interrupts.count;
      clock.advance(50);
      if (period < 4) assert.ok(r.interrupts.count > interrupts, "the driver is signalled");
    }
    assert.equal(lens.length, 20);
    assert.equal(r.queue.takeAllUsed().length, 0);
    assert.equal(r.rng.waiting, false);
    assert.equal(clock.pending, 0);
    // A new request after idle periods gets a fresh period's bytes at once.
    clock.advance(1000);
    r.queue.addChain([{ writable: 2000 }]);
    r.driver.kick(0, true);
    assert.deepEqual(r.queue.takeAllUsed().map((u) => u.len), [1000]);
  });

  it("reset cancels the timer; the rate limit's account survives it", () => {
    const clock = new FakeClock();
    const r = rig({ rng: { rateLimit: { bytes: 100, periodMs: 1000 }, clock } });
    r.queue.addChain([{ writable: 100 }]);
    r.queue.addChain([{ writable: 100 }]);
    r.driver.kick(0, true);
    assert.equal(r.queue.takeAllUsed().length, 1);
    assert.equal(clock.pending, 1);
    r.transport.writeU32(MmioRegister.Status, 0);
    assert.equal(clock.pending, 0, "the timer is gone with the reset");
    assert.equal(r.rng.waiting, false);
    clock.advance(500);
    const served = r.rng.bytesServed;
    // Re-initialised within the same period: resetting did not refill the budget.
    const [queue] = r.driver.init();
    queue.addChain([{ writable: 100 }]);
    r.driver.kick(0, true);
    assert.equal(queue.pendingUsed(), 0);
    assert.equal(r.rng.bytesServed, served);
    assert.equal(clock.pending, 1);
    clock.advance(500);
    assert.deepEqual(queue.takeAllUsed().map((u) => u.len), [100]);
  });

  it("a timer that fires while the ring is stopped (reconfigure) does nothing", () => {
    const clock = new FakeClock();
    const errors: VirtioError[] = [];
    const rng = new RngDevice({ rateLimit: { bytes: 10, periodMs: 100 }, clock });
    const mem = GuestMemory.create(1 << 20);
    const driver = new DriverQueue(mem, { size: 16 });
    const queue = new SplitQueue(16);
    driver.program(queue);
    const config = (queues: VirtioQueueConfig[]) =>
      new VirtioDeviceConfig({
        memory: mem,
        queues,
        deviceChangeNotifier: { notify() {} },
        ackedFeatures: rng.ackedFeatures(),
        onError: (e) => errors.push(e),
      });
    rng.setAckedFeatures(1, 1); // VIRTIO_F_VERSION_1
    const qc = new VirtioQueueConfig(0, queue, { notify() {} });
    rng.activate(config([qc]));
    driver.addChain([{ writable: 10 }]);
    driver.addChain([{ writable: 10 }]);
    assert.equal(rng.processQueue(0), false);
    assert.deepEqual(driver.takeAllUsed().map((u) => u.len), [10]);
    assert.equal(clock.pending, 1);
    // The ring stops (vhost-user GET_VRING_BASE): not a reset, the timer stays.
    rng.reconfigure(config([]));
    clock.advance(100);
    assert.equal(clock.pending, 0);
    assert.equal(driver.pendingUsed(), 0);
    assert.deepEqual(errors, [], "no error for a queue that is simply stopped");
    // The ring restarts and is served, as the transport does on a start.
    rng.reconfigure(config([qc]));
    rng.processQueue(0);
    assert.deepEqual(driver.takeAllUsed().map((u) => u.len), [10]);
  });

  it("remove() cancels the timer", () => {
    const clock = new FakeClock();
    const r = rig({ rng: { rateLimit: { bytes: 10, periodMs: 1000 }, clock } });
    r.queue.addChain([{ writable: 10 }]);
    r.queue.addChain([{ writable: 10 }]);
    r.driver.kick(0, true);
    assert.equal(clock.pending, 1);
    r.rng.remove();
    assert.equal(clock.pending, 0);
    clock.advance(5000);
    assert.equal(r.rng.bytesServed, 10);
  });

  it("refuses caps and rate limits that are not positive integers", () => {
    for (const bad of [0, -1, 1.5, NaN, Infinity]) {
      assert.throws(() => new RngDevice({ maxBytesPerRequest: bad }), RangeError);
      assert.throws(() => new RngDevice({ maxBytesPerPass: bad }), RangeError);
      assert.throws(() => new RngDevice({ rateLimit: { bytes: bad, periodMs: 10 } }), RangeError);
      assert.throws(() => new RngDevice({ rateLimit: { bytes: 10, periodMs: bad } }), RangeError);
    }
    assert.throws(() => new RngDevice({ rateLimit: { bytes: 1, periodMs: 2 ** 31 } }), RangeError);
    assert.ok(new RngDevice({ rateLimit: { bytes: 1, periodMs: 2 ** 31 - 1 } }));
  });
});
