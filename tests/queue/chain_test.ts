import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { SplitQueue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../../queue/split.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { QueueError } from "../../queue/error.ts";
import { type DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";

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
