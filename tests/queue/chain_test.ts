import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  MAX_CHAIN_SEGMENTS,
  SplitQueue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../../queue/split.ts";
import { DescriptorChain as DescriptorChainClass } from "../../queue/chain.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { QueueError } from "../../queue/error.ts";
import { type DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";
import { PackedQueue } from "../../queue/packed.ts";
import { PackedDriverQueue } from "../../testing/packed_driver.ts";

interface Popped {
  mem: GuestMemory;
  driver: DriverQueue;
  queue: SplitQueue;
  chain: DescriptorChain;
}

function popChain(buffers: DriverBuffer[], indirect = false): Popped {
  const mem = GuestMemory.create(1 << 20);
  const driver = new DriverQueue(mem, { size: 16 });
  const queue = new SplitQueue(16);
  driver.program(queue);
  queue.indirect = indirect;
  driver.addChain(buffers, { indirect });
  const chain = queue.pop(mem);
  assert.ok(chain !== null);
  return { mem, driver, queue, chain };
}

function assertShortBuffer(fn: () => unknown, head: number): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof QueueError);
    assert.equal(e.code, "ShortBuffer");
    assert.equal(e.fatal, false);
    assert.equal(e.head, head);
    return true;
  });
}

const bytes = (...b: number[]) => new Uint8Array(b);

describe("ChainReader", () => {
  for (const indirect of [false, true]) {
    const how = indirect ? " (indirect)" : "";
    it(`reads a u32 straddling two descriptors${how}`, () => {
      const { chain } = popChain([{ readable: bytes(0x11, 0x22, 0x33) }, {
        readable: bytes(0x44, 0x55, 0x66, 0x77, 0x88, 0x99),
      }], indirect);
      const r = chain.reader;
      assert.equal(r.readU8(), 0x11);
      assert.equal(r.readU32(), 0x55443322);
      assert.equal(r.remaining, 4);
      assert.equal(r.readU16(), 0x7766);
      assert.equal(r.consumed, 7);
    });
  }

  it("reads u16 and u64 across one-byte segments", () => {
    const { chain } = popChain(
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((b) => ({ readable: bytes(b) })),
    );
    const r = chain.reader;
    assert.equal(r.readU16(), 0x0201);
    assert.equal(r.readU64(), 0x0a09080706050403n);
    assert.equal(r.remaining, 0);
  });

  it("read() copies across segments and stops at the end of the readable part", () => {
    const { chain } = popChain([{ readable: bytes(1, 2) }, { readable: bytes(3) }, {
      writable: 8,
    }]);
    const dst = new Uint8Array(8).fill(0xee);
    assert.equal(chain.reader.read(dst), 3);
    assert.deepEqual(dst, bytes(1, 2, 3, 0xee, 0xee, 0xee, 0xee, 0xee));
    assert.equal(chain.reader.read(dst), 0);
  });

  it("readExact() throws ShortBuffer and consumes nothing when too few bytes remain", () => {
    const { chain } = popChain([{ readable: bytes(1, 2, 3) }, { writable: 16 }]);
    const r = chain.reader;
    assertShortBuffer(() => r.readExact(new Uint8Array(4)), chain.head);
    assert.equal(r.remaining, 3);
    assert.equal(r.readU16(), 0x0201);
    assertShortBuffer(() => r.readU16(), chain.head);
    assertShortBuffer(() => r.readU32(), chain.head);
    assertShortBuffer(() => r.readU64(), chain.head);
    assert.equal(r.readU8(), 3);
    assertShortBuffer(() => r.readU8(), chain.head);
  });

  it("views() returns one zero-copy view per segment touched", () => {
    const { chain, mem } = popChain([{ readable: bytes(1, 2, 3) }, { readable: bytes(4, 5, 6) }, {
      readable: bytes(7),
    }]);
    const r = chain.reader;
    r.skip(1);
    const views = r.views(4);
    assert.deepEqual(views.map((v) => [...v]), [[2, 3], [4, 5]]);
    // The views alias guest memory.
    views[1][0] = 0x40;
    assert.equal(mem.readU8(chain.addrs[1]), 0x40);
    assert.equal(r.remaining, 2);
    const out: Uint8Array[] = [];
    assert.equal(r.views(2, out), out);
    assert.deepEqual(out.map((v) => [...v]), [[6], [7]]);
    assert.deepEqual(r.views(0), []);
    assertShortBuffer(() => r.views(1), chain.head);
  });

  it("skip() moves across segment boundaries and refuses to pass the end", () => {
    const { chain } = popChain([{ readable: bytes(1, 2) }, { readable: bytes(3, 4) }, {
      readable: bytes(5, 6),
    }]);
    const r = chain.reader;
    r.skip(3);
    assert.equal(r.readU8(), 4);
    assertShortBuffer(() => r.skip(3), chain.head);
    assertShortBuffer(() => r.skip(-1), chain.head);
    assert.equal(r.remaining, 2);
    r.skip(2);
    assert.equal(r.remaining, 0);
  });

  it("the reader only sees the readable part", () => {
    const { chain } = popChain([{ readable: bytes(9) }, { writable: 4 }]);
    assert.equal(chain.reader.remaining, 1);
    assert.equal(chain.writer.remaining, 4);
  });

  it("the same reader object is returned each time", () => {
    const { chain } = popChain([{ readable: bytes(1, 2) }]);
    chain.reader.readU8();
    assert.equal(chain.reader.readU8(), 2);
    assert.equal(chain.reader, chain.reader);
  });
});

describe("Small values in place and across segments", () => {
  // A value inside one segment is read or written in place; one that straddles segments goes
  // through a copy. Every width at every stream offset of an uneven chain must agree with the
  // bytes, whichever way it went.
  const LENS = [3, 5, 8, 1, 7, 16, 2];
  const TOTAL = LENS.reduce((a, b) => a + b, 0);
  const expectLE = (bytes: Uint8Array, at: number, width: number) => {
    let v = 0n;
    for (let i = width - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[at + i]);
    return v;
  };

  it("ChainReader.readU8/16/32/64 at every offset", () => {
    const data = seq(TOTAL, 0x31);
    let off = 0;
    const buffers = LENS.map((n) => {
      const b = { readable: data.subarray(off, off + n) };
      off += n;
      return b;
    });
    const { mem, queue } = popChain(buffers);
    queue.undoPop();
    for (const width of [1, 2, 4, 8]) {
      for (let at = 0; at + width <= TOTAL; at++) {
        const chain = queue.pop(mem)!;
        chain.reader.skip(at);
        const r = chain.reader;
        const got = width === 1
          ? BigInt(r.readU8())
          : width === 2
          ? BigInt(r.readU16())
          : width === 4
          ? BigInt(r.readU32())
          : r.readU64();
        assert.equal(got, expectLE(data, at, width), `width ${width} at ${at}`);
        assert.equal(r.remaining, TOTAL - at - width);
        queue.undoPop();
      }
    }
  });

  it("ChainWriter.writeU8/16/32/64 at every offset", () => {
    const { mem, queue } = popChain(LENS.map((n) => ({ writable: n })));
    queue.undoPop();
    for (const width of [1, 2, 4, 8]) {
      for (let at = 0; at + width <= TOTAL; at++) {
        const chain = queue.pop(mem)!;
        for (const [i, a] of chain.addrs.entries()) mem.fill(a, chain.lens[i], 0);
        chain.writer.skip(at);
        const w = chain.writer;
        const value = 0x0807060504030201n;
        if (width === 1) w.writeU8(0x101);
        else if (width === 2) w.writeU16(0x10201);
        else if (width === 4) w.writeU32(0x104030201);
        else w.writeU64(value | (1n << 64n));
        assert.equal(w.written, at + width);
        const stream = new Uint8Array(TOTAL);
        let o = 0;
        for (const [i, a] of chain.addrs.entries()) {
          stream.set(mem.slice(a, chain.lens[i]), o);
          o += chain.lens[i];
        }
        const want = new Uint8Array(TOTAL);
        for (let i = 0; i < width; i++) want[at + i] = i + 1;
        assert.deepEqual(stream, want, `width ${width} at ${at}`);
        queue.undoPop();
      }
    }
  });
});

describe("Copies byte by byte and through views", () => {
  // Up to 64 bytes from one segment are copied byte by byte, more through views: every size
  // around that bound, at offsets inside and across segments, must move the same bytes.
  const LENS = [70, 3, 130];
  const TOTAL = LENS.reduce((a, b) => a + b, 0);

  it("ChainReader.readExact() and ChainWriter.writeExact() of 1 to 80 bytes", () => {
    const data = seq(TOTAL, 7);
    let off = 0;
    const readable = LENS.map((n) => {
      const b = { readable: data.subarray(off, off + n) };
      off += n;
      return b;
    });
    const { mem, queue } = popChain([...readable, ...LENS.map((n) => ({ writable: n }))]);
    queue.undoPop();
    for (const at of [0, 5, 60, 68, 71, 74, 100]) {
      for (let size = 1; size <= 80 && at + size <= TOTAL; size++) {
        const chain = queue.pop(mem)!;
        chain.reader.skip(at);
        const got = new Uint8Array(size);
        chain.reader.readExact(got);
        assert.deepEqual(got, data.subarray(at, at + size), `read ${size} at ${at}`);
        chain.writer.skip(at);
        chain.writer.writeExact(got);
        const w = chain.addrs.slice(3);
        const lens = chain.lens.slice(3);
        const stream = new Uint8Array(TOTAL);
        let o = 0;
        for (const [i, a] of w.entries()) {
          stream.set(mem.slice(a, lens[i]), o);
          o += lens[i];
        }
        assert.deepEqual(stream.subarray(at, at + size), got, `write ${size} at ${at}`);
        for (const [i, a] of w.entries()) mem.fill(a, lens[i], 0);
        queue.undoPop();
      }
    }
  });
});

describe("ChainWriter", () => {
  for (const indirect of [false, true]) {
    const how = indirect ? " (indirect)" : "";
    it(`writes a u32 straddling two descriptors${how}`, () => {
      const { chain, driver, queue, mem } = popChain([{ readable: bytes(0) }, { writable: 3 }, {
        writable: 5,
      }], indirect);
      const w = chain.writer;
      w.writeU16(0xbbaa);
      w.writeU32(0xffeeddcc);
      w.writeU16(0x1100);
      assert.equal(w.written, 8);
      assert.equal(w.remaining, 0);
      queue.addUsed(mem, chain.head, w.written);
      const used = driver.takeUsed()!;
      assert.equal(used.len, 8);
      assert.deepEqual(used.written, bytes(0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11));
    });
  }

  it("writeU64() and writeU8() land little-endian across segments", () => {
    const { chain, driver, queue, mem } = popChain([{ writable: 5 }, { writable: 4 }]);
    chain.writer.writeU8(0x7f);
    chain.writer.writeU64(0x0807060504030201n);
    queue.addUsed(mem, chain.head, 9);
    assert.deepEqual(driver.takeUsed()!.written, bytes(0x7f, 1, 2, 3, 4, 5, 6, 7, 8));
  });

  it("write() copies what fits and reports it", () => {
    const { chain } = popChain([{ writable: 2 }, { writable: 1 }]);
    assert.equal(chain.writer.write(bytes(1, 2, 3, 4, 5)), 3);
    assert.equal(chain.writer.write(bytes(6)), 0);
    assert.equal(chain.writer.written, 3);
  });

  it("writeExact() throws ShortBuffer and writes nothing when room is short", () => {
    const { chain, mem } = popChain([{ writable: 2 }, { writable: 1 }]);
    assertShortBuffer(() => chain.writer.writeExact(bytes(1, 2, 3, 4)), chain.head);
    assert.equal(mem.readU8(chain.addrs[0]), 0);
    assert.equal(chain.writer.written, 0);
    assertShortBuffer(() => chain.writer.writeU32(1), chain.head);
    assertShortBuffer(() => chain.writer.writeU64(1n), chain.head);
    chain.writer.writeU16(0x0302);
    assertShortBuffer(() => chain.writer.writeU16(1), chain.head);
    chain.writer.writeU8(4);
    assertShortBuffer(() => chain.writer.writeU8(1), chain.head);
  });

  it("fill() spans segments", () => {
    const { chain, driver, queue, mem } = popChain([{ writable: 3 }, { writable: 3 }]);
    chain.writer.skip(1);
    chain.writer.fill(4, 0xab);
    queue.addUsed(mem, chain.head, 6);
    assert.deepEqual(driver.takeUsed()!.written, bytes(0, 0xab, 0xab, 0xab, 0xab, 0));
    assertShortBuffer(() => chain.writer.fill(2), chain.head);
  });

  it("views() of the writable part alias the driver's buffers", () => {
    const { chain, driver, queue, mem } = popChain([{ readable: bytes(1) }, { writable: 2 }, {
      writable: 2,
    }]);
    const views = chain.writer.views(4);
    assert.equal(views.length, 2);
    views[0].set([1, 2]);
    views[1].set([3, 4]);
    queue.addUsed(mem, chain.head, 4);
    assert.deepEqual(driver.takeUsed()!.written, bytes(1, 2, 3, 4));
  });
});

describe("DescriptorChain shape", () => {
  it("skips zero-length descriptors: they add no segment", () => {
    const mem = GuestMemory.create(1 << 20);
    const driver = new DriverQueue(mem, { size: 8 });
    const queue = new SplitQueue(8);
    driver.program(queue);
    const buf = 0x40000;
    mem.write(buf, bytes(1, 2, 3, 4));
    driver.writeDescriptor(0, { addr: buf, len: 2, flags: VIRTQ_DESC_F_NEXT, next: 1 });
    driver.writeDescriptor(1, { addr: 0, len: 0, flags: VIRTQ_DESC_F_NEXT, next: 2 });
    driver.writeDescriptor(2, { addr: buf + 2, len: 2, flags: VIRTQ_DESC_F_NEXT, next: 3 });
    driver.writeDescriptor(3, { addr: buf + 8, len: 4, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    driver.publish(0);
    const chain = queue.pop(mem)!;
    assert.equal(chain.descriptorCount, 4);
    assert.equal(chain.length, 3);
    assert.equal(chain.readableCount, 2);
    assert.equal(chain.reader.readU32(), 0x04030201);
    assert.deepEqual(chain.addrs, [buf, buf + 2, buf + 8]);
  });

  it("a chain of only readable buffers has an empty writer", () => {
    const { chain } = popChain([{ readable: bytes(1) }]);
    assert.equal(chain.writableBytes, 0);
    assert.equal(chain.writer.remaining, 0);
    assertShortBuffer(() => chain.writer.writeU8(0), chain.head);
  });

  it("a chain of only writable buffers has an empty reader", () => {
    const { chain } = popChain([{ writable: 4 }]);
    assert.equal(chain.readableCount, 0);
    assert.equal(chain.reader.remaining, 0);
    assert.equal(chain.isWritable(0), true);
  });
});

// ---------------------------------------------------------------------------
// Guest memory made of several regions (virtio 1.2 §2.7.5 knows nothing of regions: a
// frontend with several memory backends, or hotplugged memory, describes RAM as several).

/** Where the first region ends and the next begins. */
const EDGE = 0x100000;

/**
 * Guest memory of adjacent regions, each over its own buffer: [0, EDGE), then one region per
 * size in `after`, each starting where the previous ended; `hole` leaves that many bytes
 * unbacked after the first region.
 */
function regions(after: number[], hole = 0): GuestMemory {
  const list = [{ base: 0, buffer: new ArrayBuffer(EDGE) }];
  let base = EDGE + hole;
  for (const size of after) {
    list.push({ base, buffer: new ArrayBuffer(size) });
    base += size;
  }
  return new GuestMemory(list);
}

function queueOn(mem: GuestMemory, indirect = false): { driver: DriverQueue; queue: SplitQueue } {
  const driver = new DriverQueue(mem, { size: 16, bufferEnd: EDGE - 0x10000 });
  const queue = new SplitQueue(16);
  driver.program(queue);
  queue.indirect = indirect;
  return { driver, queue };
}

/** Asserts `pop()` refuses the next chain with this non-fatal code, for head `head`. */
function assertPopRefuses(queue: SplitQueue, mem: GuestMemory, code: string, head: number): void {
  assert.throws(() => queue.pop(mem), (e: unknown) => {
    assert.ok(e instanceof QueueError);
    assert.equal(e.code, code, e.message);
    assert.equal(e.fatal, false);
    assert.equal(e.head, head);
    return true;
  });
}

const seq = (n: number, from = 1) => Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);

describe("Chains across adjacent guest memory regions", () => {
  for (const indirect of [false, true]) {
    const how = indirect ? " (indirect)" : "";
    it(`a readable buffer straddling two regions reads as one stream${how}`, () => {
      const mem = regions([EDGE]);
      const { driver, queue } = queueOn(mem, indirect);
      const head = driver.addChain([{ readable: seq(12), at: EDGE - 5 }, { writable: 1 }], {
        indirect,
      });
      const chain = queue.pop(mem)!;
      assert.equal(chain.head, head);
      assert.equal(chain.descriptorCount, indirect ? 3 : 2);
      // One buffer, two segments: one per region it lies in.
      assert.deepEqual(chain.addrs.slice(0, 2), [EDGE - 5, EDGE]);
      assert.deepEqual(chain.lens, [5, 7, 1]);
      assert.equal(chain.readableCount, 2);
      assert.equal(chain.readableBytes, 12);
      const r = chain.reader;
      assert.equal(r.readU32(), 0x04030201);
      assert.equal(r.readU64(), 0x0c0b0a0908070605n, "a u64 read across the region boundary");
      assert.equal(r.remaining, 0);
    });
  }

  it("views() returns one view per region piece, each aliasing its own region", () => {
    const mem = regions([EDGE]);
    const { driver, queue } = queueOn(mem);
    driver.addChain([{ readable: seq(3) }, { readable: seq(10, 100), at: EDGE - 4 }]);
    const chain = queue.pop(mem)!;
    assert.equal(chain.length, 3, "two buffers, three segments");
    const views = chain.reader.views(13);
    assert.deepEqual(views.map((v) => [...v]), [[1, 2, 3], [100, 101, 102, 103], [
      104,
      105,
      106,
      107,
      108,
      109,
    ]]);
    assert.equal(views[1].buffer, mem.regions[0].bytes.buffer);
    assert.equal(views[2].buffer, mem.regions[1].bytes.buffer);
    views[2][0] = 0xee;
    assert.equal(mem.readU8(EDGE), 0xee, "the views alias guest memory");
  });

  it("a writable buffer across three regions is written through write(), fill() and views()", () => {
    // [0, EDGE), a one-page region, then the rest: the 8 KiB buffer touches all three.
    const mem = regions([0x1000, EDGE]);
    const { driver, queue } = queueOn(mem);
    const at = EDGE - 0x800;
    const head = driver.addChain([{ readable: seq(1) }, { writable: 0x2000, at }]);
    const chain = queue.pop(mem)!;
    assert.deepEqual(chain.addrs.slice(1), [at, EDGE, EDGE + 0x1000]);
    assert.deepEqual(chain.lens.slice(1), [0x800, 0x1000, 0x800]);
    const w = chain.writer;
    const data = seq(0x1000, 7);
    assert.equal(w.write(data.subarray(0, 0x900)), 0x900);
    w.fill(0x10, 0xab);
    const views = w.views(0x2000 - 0x910 - 0x10);
    assert.equal(views.length, 2, "the rest lies in the second and third regions");
    for (const v of views) v.fill(0x5c);
    w.writeU64(0x1122334455667788n);
    w.writeU64(0x99aabbccddeeff00n);
    assert.equal(w.remaining, 0);
    queue.addUsed(mem, head, w.written);
    const used = driver.takeUsed()!;
    assert.equal(used.len, 0x2000);
    assert.deepEqual(used.written.subarray(0, 0x900), data.subarray(0, 0x900));
    assert.ok(used.written.subarray(0x900, 0x910).every((b) => b === 0xab));
    assert.ok(used.written.subarray(0x910, 0x2000 - 0x10).every((b) => b === 0x5c));
    assert.equal(mem.readU64(EDGE + 0x2000 - 0x800 - 0x10), 0x1122334455667788n);
  });

  it("a buffer ending at a region's end and one starting in the next stay separate segments", () => {
    const mem = regions([EDGE]);
    const { driver, queue } = queueOn(mem);
    driver.addChain([{ readable: seq(4), at: EDGE - 4 }, { readable: seq(4, 5), at: EDGE }]);
    const chain = queue.pop(mem)!;
    assert.deepEqual(chain.addrs, [EDGE - 4, EDGE]);
    assert.equal(chain.reader.readU64(), 0x0807060504030201n);
  });

  it("a buffer after one in the same region, then one crossing out of it, are cut right", () => {
    // The builder remembers the region the previous buffer lay in: a buffer wholly inside it
    // is one segment without a search, one that runs past its end is cut like any other.
    const mem = regions([EDGE]);
    const { driver, queue } = queueOn(mem);
    driver.addChain([
      { readable: seq(4), at: 0x20000 },
      { readable: seq(4, 5), at: 0x20010 },
      { readable: seq(8, 9), at: EDGE - 4 },
      { readable: seq(4, 17), at: EDGE + 0x10 },
    ]);
    const chain = queue.pop(mem)!;
    assert.deepEqual(chain.addrs, [0x20000, 0x20010, EDGE - 4, EDGE, EDGE + 0x10]);
    assert.deepEqual(chain.lens, [4, 4, 4, 4, 4]);
    const got = new Uint8Array(20);
    chain.reader.readExact(got);
    assert.deepEqual(got, seq(20));
  });

  it("what the builder remembers of one guest memory is never used for another", () => {
    // Two memories over the same first buffer: in `a` a second region follows it, in `b`
    // nothing does. A buffer there is served from `a`, then refused from `b`.
    const a = regions([EDGE]);
    const b = new GuestMemory([{ base: 0, buffer: a.regions[0].bytes.buffer }]);
    const { driver, queue } = queueOn(a);
    driver.addChain([{ writable: 16, at: EDGE + 0x100 }]);
    const chain = queue.pop(a)!;
    assert.deepEqual(chain.addrs, [EDGE + 0x100]);
    queue.addUsed(a, chain.head, 0);
    driver.takeUsed();
    driver.addChain([{ writable: 16, at: EDGE + 0x100 }]);
    assertPopRefuses(queue, b, "DescriptorOutOfBounds", chain.head);
  });

  it("an indirect table straddling two regions is read descriptor by descriptor", () => {
    const mem = regions([EDGE]);
    const { driver, queue } = queueOn(mem, true);
    // Four entries starting 40 bytes before the boundary: the third straddles it.
    const head = driver.addChain([{ readable: seq(2) }, { readable: seq(2, 3) }, {
      readable: seq(2, 5),
    }, { writable: 8 }], { indirectAt: EDGE - 40 });
    const chain = queue.pop(mem)!;
    assert.equal(chain.head, head);
    assert.equal(chain.descriptorCount, 5);
    assert.equal(chain.readableBytes, 6);
    assert.equal(chain.writableBytes, 8);
    const got = new Uint8Array(6);
    chain.reader.readExact(got);
    assert.deepEqual(got, seq(6));
  });

  it("a buffer over a hole between regions is DescriptorOutOfBounds, and the queue goes on", () => {
    const mem = regions([EDGE], 0x1000);
    const { driver, queue } = queueOn(mem, true);
    const direct = driver.addChain([{ writable: 0x10, at: EDGE - 8 }]);
    assertPopRefuses(queue, mem, "DescriptorOutOfBounds", direct);
    queue.addUsed(mem, direct, 0);
    // Starting in the hole, or in an indirect table.
    const inHole = driver.addChain([{ readable: seq(4) }, { writable: 8, at: EDGE + 8 }]);
    assertPopRefuses(queue, mem, "DescriptorOutOfBounds", inHole);
    queue.addUsed(mem, inHole, 0);
    const indirect = driver.addChain([{ readable: seq(4) }, { writable: 0x10, at: EDGE - 8 }], {
      indirect: true,
    });
    assertPopRefuses(queue, mem, "DescriptorOutOfBounds", indirect);
    queue.addUsed(mem, indirect, 0);
    // Up to the edge of the hole is fine.
    driver.addChain([{ writable: 8, at: EDGE - 8 }]);
    assert.equal(queue.pop(mem)!.writableBytes, 8);
    assert.equal(queue.broken, undefined);
  });

  it("an indirect table over a hole is DescriptorOutOfBounds", () => {
    const mem = regions([EDGE], 0x1000);
    const { driver, queue } = queueOn(mem, true);
    driver.writeDescriptor(0, { addr: 0x20000, len: 4, flags: 0, next: 0 }, EDGE - 16);
    driver.writeDescriptor(0, { addr: EDGE - 16, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    driver.publish(0);
    assertPopRefuses(queue, mem, "DescriptorOutOfBounds", 0);
  });

  it("the rings themselves must still lie in one region each", () => {
    const mem = regions([EDGE]);
    const driver = new DriverQueue(mem, { size: 16, ringBase: 0x1000 });
    const queue = new SplitQueue(16);
    driver.program(queue);
    // A descriptor table running from the first region into the second.
    queue.descTable = EDGE - 0x80;
    assert.throws(() => queue.validate(mem), (e: unknown) => {
      assert.ok(e instanceof QueueError);
      assert.equal(e.code, "InvalidRing");
      return true;
    });
  });

  it("refuses a chain split into more than MAX_CHAIN_SEGMENTS segments (TooManySegments)", () => {
    // 4096 adjacent 16-byte regions: a buffer over all of them is 4096 segments.
    const tiny = new Array<number>(4096).fill(16);
    const mem = regions(tiny);
    const { driver, queue } = queueOn(mem, true);
    const span = 16 * tiny.length;
    const count = Math.floor(MAX_CHAIN_SEGMENTS / tiny.length) + 1;
    const buffers = Array.from({ length: count }, () => ({ writable: span, at: EDGE }));
    const head = driver.addChain(buffers, { indirect: true });
    assertPopRefuses(queue, mem, "TooManySegments", head);
    queue.addUsed(mem, head, 0);
    driver.takeUsed();
    // One segment fewer than the limit's worth of buffers is accepted.
    driver.addChain(buffers.slice(1), { indirect: true });
    const chain = queue.pop(mem)!;
    assert.equal(chain.length, (count - 1) * tiny.length);
    assert.equal(chain.writableBytes, (count - 1) * span);
  });
});

describe("DescriptorChain", () => {
  it("is valid by construction: only a queue's pop() can make one, and it cannot be changed", () => {
    const { mem, chain } = popChain([{ readable: new Uint8Array(3) }, { writable: 5 }]);
    assert.throws(
      () =>
        new DescriptorChainClass(Symbol("forged"), {
          memory: mem,
          head: 0,
          segments: [0, 0x1_0000_0000],
          readableCount: 0,
          readableBytes: 0,
          writableBytes: 0x1_0000_0000,
          descriptorCount: 1,
        }),
      TypeError,
    );
    const loose = chain as unknown as Record<string, unknown>;
    assert.throws(() => (loose.writableBytes = 1 << 30), TypeError);
    assert.throws(() => (loose.readableCount = 0), TypeError);
    assert.equal(chain.writableBytes, 5);
    assert.equal(chain.readableBytes, 3);
  });
});

describe("Rings and tables more than 2 GiB into a region", () => {
  // Offsets past 2^31 cannot be int32s: the rings are read through views of their own and an
  // indirect table there through one too (or entry by entry when it runs into the next region).
  // The 2 GiB buffer is never touched outside the rings and buffers, so it costs no memory.
  const HIGH = 0x8000_0000 + 0x10000;
  const big = () =>
    new GuestMemory([
      { base: 0, buffer: new ArrayBuffer(HIGH + 0x10000) },
      { base: HIGH + 0x10000, buffer: new ArrayBuffer(0x10000) },
    ]);

  it("split: rings, buffers and indirect tables past 2 GiB, one crossing into the next region", () => {
    const mem = big();
    const driver = new DriverQueue(mem, {
      size: 16,
      ringBase: HIGH,
      bufferBase: HIGH + 0x1000,
      bufferEnd: HIGH + 0x8000,
    });
    const queue = new SplitQueue(16);
    driver.program(queue);
    queue.indirect = true;
    const direct = driver.addChain([{ readable: seq(4) }, { writable: 8 }]);
    const inTable = driver.addChain([{ readable: seq(4, 5) }, { writable: 8 }], {
      indirectAt: HIGH + 0x9000,
    });
    // A table whose second entry lies in the next region.
    const across = driver.addChain([{ readable: seq(2, 9) }, { writable: 4 }, { writable: 4 }], {
      indirectAt: HIGH + 0x10000 - 16,
    });
    for (const [head, first] of [[direct, 1], [inTable, 5], [across, 9]]) {
      const chain = queue.pop(mem)!;
      assert.equal(chain.head, head);
      assert.equal(chain.reader.readU8(), first);
      chain.writer.writeU32(0xa0b0c0d0);
      queue.addUsed(mem, chain.head, 4);
    }
    assert.equal(queue.pop(mem), null);
    const used = driver.takeAllUsed();
    assert.deepEqual(used.map((u) => u.id), [direct, inTable, across]);
    for (const u of used) assert.deepEqual([...u.written.subarray(0, 4)], [0xd0, 0xc0, 0xb0, 0xa0]);
  });

  it("packed: the ring, its event structures and an indirect table past 2 GiB", () => {
    const mem = big();
    const driver = new PackedDriverQueue(mem, {
      size: 8,
      ringBase: HIGH,
      bufferBase: HIGH + 0x1000,
      bufferEnd: HIGH + 0x8000,
    });
    const queue = new PackedQueue(8);
    driver.program(queue);
    queue.indirect = true;
    const ids = [
      driver.addChain([{ readable: seq(4) }, { writable: 8 }]),
      driver.addChain([{ readable: seq(4, 5) }, { writable: 8 }], { indirect: true }),
    ];
    for (const [i, first] of [1, 5].entries()) {
      const chain = queue.pop(mem)!;
      assert.equal(chain.head, ids[i]);
      assert.equal(chain.reader.readU8(), first);
      chain.writer.writeU32(0xa0b0c0d0);
      queue.addUsed(mem, chain.head, 4);
    }
    assert.equal(queue.needsNotification(mem), true);
    assert.deepEqual(driver.takeAllUsed().map((u) => u.id), ids);
  });
});
