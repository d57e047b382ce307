import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../../queue/split.ts";
import type { DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";
import {
  featureBit,
  TYPE_RNG,
  VIRTIO_F_VERSION_1,
  VIRTIO_INTR_VRING,
  VirtioError,
} from "../../devices/device.ts";
import { RNG_CHUNK, RngDevice, type RngOptions } from "../../devices/rng.ts";
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
        const r = rig({ version });
        const a = request(r, [{ writable: size }]);
        assertNotConstant(a);
        const b = request(r, [{ writable: size }]);
        if (size >= 16) assert.ok(!equalBytes(a, b), "two reads differ");
        assert.equal(r.rng.bytesServed, 2 * size);
        assert.equal(r.rng.requestsServed, 2);
      });
    }

    it("fills a multi-segment chain completely, across chunk boundaries", () => {
      const r = rig({ version });
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
      const r = rig({ version });
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
    len: RNG_CHUNK + 10,
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
