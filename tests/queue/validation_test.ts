import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  SplitQueue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../../queue/split.ts";
import { QueueError, type QueueErrorCode } from "../../queue/error.ts";
import { DriverQueue, type RawDescriptor } from "../../testing/queue_driver.ts";

const MEM_SIZE = 1 << 20;
const SIZE = 16;
const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;
const INDIRECT = VIRTQ_DESC_F_INDIRECT;
/** A scratch buffer area the hostile descriptors point at. */
const BUF = 0x80000;
/** Where hostile indirect tables go. */
const TABLE = 0x90000;

interface Setup {
  mem: GuestMemory;
  driver: DriverQueue;
  queue: SplitQueue;
}

function setup(options: { size?: number; indirect?: boolean; memSize?: number } = {}): Setup {
  const mem = GuestMemory.create(options.memSize ?? MEM_SIZE);
  const size = options.size ?? SIZE;
  const driver = new DriverQueue(mem, { size, bufferEnd: BUF });
  const queue = new SplitQueue(size);
  driver.program(queue);
  queue.indirect = options.indirect ?? false;
  queue.validate(mem);
  return { mem, driver, queue };
}

/**
 * Write `descs` (index → descriptor) at the top of the table, publish `head`,
 * and return the error `pop()` throws after checking its code, head and fatality.
 */
function popFails(
  s: Setup,
  descs: [number, RawDescriptor][],
  head: number,
  code: QueueErrorCode,
  fatal: boolean,
  table?: number,
): QueueError {
  for (const [i, d] of descs) s.driver.writeDescriptor(i, d, table);
  s.driver.publish(head);
  const caught = expectPopError(s, code, fatal);
  if (!fatal) assert.equal(caught.head, head);
  return caught;
}

/** `pop()` must throw a QueueError with this code and fatality; returns it. */
function expectPopError(s: Setup, code: QueueErrorCode, fatal: boolean): QueueError {
  let caught: unknown;
  try {
    s.queue.pop(s.mem);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof QueueError, `expected a QueueError, got ${caught}`);
  assert.equal(caught.code, code, caught.message);
  assert.equal(caught.fatal, fatal);
  return caught;
}

/** After a non-fatal error: the bad chain can be completed and the next good chain pops. */
function assertKeepsWorking(s: Setup, err: QueueError): void {
  assert.equal(s.queue.broken, undefined);
  s.queue.addUsed(s.mem, err.head!, 0);
  const used = s.driver.takeUsed()!;
  assert.equal(used.id, err.head);
  assert.equal(used.len, 0);
  const head = s.driver.addChain([{ readable: new Uint8Array([7]) }, { writable: 2 }]);
  const chain = s.queue.pop(s.mem);
  assert.ok(chain !== null);
  assert.equal(chain.head, head);
  assert.equal(chain.reader.readU8(), 7);
  s.queue.addUsed(s.mem, head, 2);
  assert.equal(s.driver.takeUsed()!.id, head);
}

/** After a fatal error: every operation throws it again, even for a good chain, until reset. */
function assertBroken(s: Setup, err: QueueError): void {
  assert.equal(s.queue.broken, err);
  s.driver.addChain([{ writable: 2 }]);
  assert.throws(() => s.queue.pop(s.mem), (e: unknown) => e === err);
  assert.throws(() => s.queue.addUsed(s.mem, 0, 0), (e: unknown) => e === err);
  assert.throws(() => s.queue.needsNotification(s.mem), (e: unknown) => e === err);
  assert.throws(() => s.queue.enableNotification(s.mem), (e: unknown) => e === err);
  s.queue.reset();
  assert.equal(s.queue.broken, undefined);
}

const top = SIZE - 1;

describe("SplitQueue.pop() chain validation", () => {
  it("SplitQueue.pop() rejects a descriptor loop (ChainTooLong)", () => {
    const s = setup();
    const err = popFails(
      s,
      [
        [top, { addr: BUF, len: 8, flags: NEXT, next: top - 1 }],
        [top - 1, { addr: BUF, len: 8, flags: NEXT, next: top }],
      ],
      top,
      "ChainTooLong",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects a descriptor pointing at itself", () => {
    const s = setup();
    const err = popFails(
      s,
      [[top, { addr: BUF, len: 0, flags: NEXT, next: top }]],
      top,
      "ChainTooLong",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() accepts a chain using every descriptor of the table", () => {
    const s = setup();
    for (let i = 0; i < SIZE; i++) {
      const last = i === SIZE - 1;
      s.driver.writeDescriptor(i, {
        addr: BUF + i,
        len: 1,
        flags: last ? 0 : NEXT,
        next: last ? 0 : i + 1,
      });
    }
    s.driver.publish(0);
    const chain = s.queue.pop(s.mem)!;
    assert.equal(chain.descriptorCount, SIZE);
    assert.equal(chain.readableBytes, SIZE);
  });

  it("SplitQueue.pop() rejects a loop inside an indirect table", () => {
    const s = setup({ indirect: true });
    s.driver.writeDescriptor(0, { addr: BUF, len: 4, flags: NEXT, next: 1 }, TABLE);
    s.driver.writeDescriptor(1, { addr: BUF, len: 4, flags: NEXT, next: 0 }, TABLE);
    const err = popFails(
      s,
      [[top, { addr: TABLE, len: 32, flags: INDIRECT, next: 0 }]],
      top,
      "ChainTooLong",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects a next index outside the table (DescriptorIndexOutOfRange)", () => {
    for (const next of [SIZE, 0xffff]) {
      const s = setup();
      const err = popFails(
        s,
        [[top, { addr: BUF, len: 8, flags: NEXT, next }]],
        top,
        "DescriptorIndexOutOfRange",
        false,
      );
      assertKeepsWorking(s, err);
    }
  });

  it("SplitQueue.pop() rejects a next index outside an indirect table", () => {
    const s = setup({ indirect: true });
    s.driver.writeDescriptor(0, { addr: BUF, len: 4, flags: NEXT, next: 2 }, TABLE);
    s.driver.writeDescriptor(1, { addr: BUF, len: 4, flags: 0, next: 0 }, TABLE);
    const err = popFails(
      s,
      [[top, { addr: TABLE, len: 32, flags: INDIRECT, next: 0 }]],
      top,
      "DescriptorIndexOutOfRange",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() treats a head outside the table as fatal (HeadOutOfRange)", () => {
    const s = setup();
    const err = popFails(s, [], SIZE, "HeadOutOfRange", true);
    assertBroken(s, err);
  });

  it("SplitQueue.pop() rejects a buffer outside guest memory (DescriptorOutOfBounds)", () => {
    const cases: RawDescriptor[] = [
      { addr: MEM_SIZE, len: 1, flags: 0, next: 0 },
      { addr: MEM_SIZE - 4, len: 8, flags: 0, next: 0 },
      { addr: MEM_SIZE - 4, len: 8, flags: WRITE, next: 0 },
      { addr: 0xffff_ffff, len: 0xffff_ffff, flags: WRITE, next: 0 },
      { addr: 0x1_0000_0000, len: 1, flags: 0, next: 0 },
    ];
    for (const d of cases) {
      const s = setup();
      const err = popFails(s, [[top, d]], top, "DescriptorOutOfBounds", false);
      assertKeepsWorking(s, err);
    }
  });

  it("SplitQueue.pop() rejects a bad buffer in the middle of a chain", () => {
    const s = setup();
    const err = popFails(
      s,
      [
        [top, { addr: BUF, len: 8, flags: NEXT, next: top - 1 }],
        [top - 1, { addr: MEM_SIZE + 0x1000, len: 8, flags: WRITE, next: 0 }],
      ],
      top,
      "DescriptorOutOfBounds",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects a buffer address above 2^53", () => {
    for (const addr of [1n << 53n, 0xffff_ffff_ffff_f000n]) {
      const s = setup();
      const err = popFails(
        s,
        [[top, { addr, len: 16, flags: 0, next: 0 }]],
        top,
        "DescriptorOutOfBounds",
        false,
      );
      assert.match(err.message, /2\^53/);
      assertKeepsWorking(s, err);
    }
  });

  it("SplitQueue.pop() rejects an indirect table outside guest memory", () => {
    const s = setup({ indirect: true });
    const err = popFails(
      s,
      [[top, { addr: MEM_SIZE - 16, len: 32, flags: INDIRECT, next: 0 }]],
      top,
      "DescriptorOutOfBounds",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects an indirect table length that is not a multiple of 16", () => {
    const s = setup({ indirect: true });
    s.driver.writeDescriptor(0, { addr: BUF, len: 4, flags: 0, next: 0 }, TABLE);
    const err = popFails(
      s,
      [[top, { addr: TABLE, len: 24, flags: INDIRECT, next: 0 }]],
      top,
      "InvalidIndirectLength",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects an empty indirect table", () => {
    const s = setup({ indirect: true });
    const err = popFails(
      s,
      [[top, { addr: TABLE, len: 0, flags: INDIRECT, next: 0 }]],
      top,
      "InvalidIndirectLength",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects an indirect descriptor inside an indirect table", () => {
    const s = setup({ indirect: true });
    s.driver.writeDescriptor(0, { addr: BUF, len: 4, flags: NEXT, next: 1 }, TABLE);
    s.driver.writeDescriptor(1, { addr: TABLE + 0x100, len: 16, flags: INDIRECT, next: 0 }, TABLE);
    s.driver.writeDescriptor(0, { addr: BUF, len: 4, flags: 0, next: 0 }, TABLE + 0x100);
    const err = popFails(
      s,
      [[top, { addr: TABLE, len: 32, flags: INDIRECT, next: 0 }]],
      top,
      "NestedIndirect",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects INDIRECT together with NEXT", () => {
    const s = setup({ indirect: true });
    s.driver.writeDescriptor(0, { addr: BUF, len: 4, flags: 0, next: 0 }, TABLE);
    const err = popFails(
      s,
      [
        [top, { addr: TABLE, len: 16, flags: INDIRECT | NEXT, next: top - 1 }],
        [top - 1, { addr: BUF, len: 4, flags: WRITE, next: 0 }],
      ],
      top,
      "IndirectWithNext",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects INDIRECT when VIRTIO_F_INDIRECT_DESC was not negotiated", () => {
    const s = setup({ indirect: false });
    s.driver.addChain([{ writable: 4 }], { indirect: true });
    const caught = expectPopError(s, "IndirectNotNegotiated", false);
    assertKeepsWorking(s, caught);
  });

  it("SplitQueue.pop() rejects a readable descriptor after a writable one", () => {
    const s = setup();
    const head = s.driver.addChain([{ writable: 4 }, { readable: new Uint8Array([1]) }]);
    const caught = expectPopError(s, "ReadableAfterWritable", false);
    assert.equal(caught.head, head);
    assertKeepsWorking(s, caught);
  });

  it("SplitQueue.pop() rejects a readable descriptor after a writable one in an indirect table", () => {
    const s = setup({ indirect: true });
    s.driver.writeDescriptor(0, { addr: BUF, len: 4, flags: WRITE | NEXT, next: 1 }, TABLE);
    s.driver.writeDescriptor(1, { addr: BUF, len: 4, flags: 0, next: 0 }, TABLE);
    const err = popFails(
      s,
      [[top, { addr: TABLE, len: 32, flags: INDIRECT, next: 0 }]],
      top,
      "ReadableAfterWritable",
      false,
    );
    assertKeepsWorking(s, err);
  });

  it("SplitQueue.pop() rejects a chain whose total length exceeds 4 GiB (ChainTooLarge)", () => {
    // 4097 overlapping 1 MiB buffers add up to 4 GiB + 1 MiB.
    const s = setup({ size: 8192, memSize: 4 << 20 });
    const buf = 2 << 20;
    const n = 4097;
    for (let i = 0; i < n; i++) {
      s.driver.writeDescriptor(i, {
        addr: buf,
        len: 1 << 20,
        flags: i < n - 1 ? NEXT : 0,
        next: i + 1,
      });
    }
    s.driver.publish(0);
    const caught = expectPopError(s, "ChainTooLarge", false);
    assert.equal(caught.head, 0);
    assert.equal(s.queue.broken, undefined);
    s.queue.addUsed(s.mem, 0, 0);
    assert.equal(s.driver.takeUsed()!.id, 0);
  });

  it("SplitQueue.pop() accepts a chain of exactly 2^32 - 1 bytes", () => {
    const s = setup({ size: 8192, memSize: 4 << 20 });
    const buf = 2 << 20;
    const n = 4096;
    for (let i = 0; i < n; i++) {
      const last = i === n - 1;
      s.driver.writeDescriptor(i, {
        addr: buf,
        len: last ? (1 << 20) - 1 : 1 << 20,
        flags: last ? WRITE : NEXT | WRITE,
        next: i + 1,
      });
    }
    s.driver.publish(0);
    const chain = s.queue.pop(s.mem)!;
    assert.equal(chain.writableBytes, 0xffff_ffff);
  });

  it("SplitQueue.pop() treats avail.idx more than the queue size ahead as fatal (AvailIdxJump)", () => {
    const s = setup();
    s.driver.setAvailIdx(SIZE + 1);
    const caught = expectPopError(s, "AvailIdxJump", true);
    assert.equal(caught.head, undefined);
    assertBroken(s, caught);
  });

  it("SplitQueue.pop() serves what avail.idx showed, then catches it jumping", () => {
    const s = setup();
    s.driver.addChain([{ writable: 1 }]);
    s.driver.addChain([{ writable: 1 }]);
    assert.ok(s.queue.pop(s.mem) !== null);
    s.driver.setAvailIdx(SIZE + 5);
    // The second entry was published before the device read avail.idx.
    assert.ok(s.queue.pop(s.mem) !== null);
    const caught = expectPopError(s, "AvailIdxJump", true);
    assertBroken(s, caught);
  });

  it("SplitQueue.pop() accepts avail.idx exactly a full queue ahead", () => {
    const s = setup();
    for (let i = 0; i < SIZE; i++) s.driver.addChain([{ writable: 1 }]);
    let n = 0;
    while (s.queue.pop(s.mem) !== null) n++;
    assert.equal(n, SIZE);
  });

  it("SplitQueue.pop() treats avail.idx moving backwards as a jump", () => {
    const s = setup();
    s.driver.addChain([{ writable: 1 }]);
    s.queue.pop(s.mem);
    s.driver.setAvailIdx(0); // 0 - 1 wraps to 65535 pending
    assert.throws(() => s.queue.pop(s.mem), (e: unknown) => {
      assert.ok(e instanceof QueueError);
      assert.equal(e.code, "AvailIdxJump");
      assert.equal(e.fatal, true);
      return true;
    });
  });

  it("SplitQueue.addUsed() rejects a head outside the table (InvalidUsedHead)", () => {
    const s = setup();
    for (const head of [SIZE, -1, 1.5, 0x10000]) {
      assert.throws(() => s.queue.addUsed(s.mem, head, 0), (e: unknown) => {
        assert.ok(e instanceof QueueError);
        assert.equal(e.code, "InvalidUsedHead");
        assert.equal(e.fatal, false);
        return true;
      }, `head ${head}`);
    }
    assert.equal(s.queue.nextUsed, 0);
    assert.equal(s.driver.usedIdx(), 0);
    // Not fatal: the queue keeps working.
    const head = s.driver.addChain([{ writable: 1 }]);
    s.queue.addUsed(s.mem, s.queue.pop(s.mem)!.head, 1);
    assert.equal(s.driver.takeUsed()!.id, head);
  });
});

describe("SplitQueue.validate() ring placement", () => {
  function assertInvalidRing(queue: SplitQueue, mem: GuestMemory, pattern?: RegExp): void {
    assert.throws(() => queue.validate(mem), (e: unknown) => {
      assert.ok(e instanceof QueueError);
      assert.equal(e.code, "InvalidRing");
      assert.equal(e.fatal, true);
      if (pattern) assert.match(e.message, pattern);
      return true;
    });
    assert.equal(queue.isValid(mem), false);
    // Ring operations validate first and refuse too.
    assert.throws(() => queue.pop(mem), QueueError);
  }

  function programmed(): { mem: GuestMemory; queue: SplitQueue; driver: DriverQueue } {
    const mem = GuestMemory.create(MEM_SIZE);
    const driver = new DriverQueue(mem, { size: SIZE });
    const queue = new SplitQueue(SIZE);
    driver.program(queue);
    return { mem, queue, driver };
  }

  it("SplitQueue.validate() accepts the layout DriverQueue programs", () => {
    const { mem, queue } = programmed();
    queue.validate(mem);
    assert.equal(queue.isValid(mem), true);
  });

  it("SplitQueue.validate() rejects a descriptor table not 16-byte aligned", () => {
    const { mem, queue } = programmed();
    queue.descTable = 0x8008;
    assertInvalidRing(queue, mem, /descriptor table.*misaligned/);
  });

  it("SplitQueue.validate() rejects an available ring not 2-byte aligned", () => {
    const { mem, queue } = programmed();
    queue.availRing = 0x8001;
    assertInvalidRing(queue, mem, /available ring.*misaligned/);
  });

  it("SplitQueue.validate() rejects a used ring not 4-byte aligned", () => {
    const { mem, queue } = programmed();
    queue.usedRing = 0x8002;
    assertInvalidRing(queue, mem, /used ring.*misaligned/);
  });

  it("SplitQueue.validate() rejects each ring outside guest memory", () => {
    for (const ring of ["descTable", "availRing", "usedRing"] as const) {
      const { mem, queue } = programmed();
      queue[ring] = MEM_SIZE;
      assertInvalidRing(queue, mem, /outside guest memory/);
    }
  });

  it("SplitQueue.validate() rejects a ring crossing the end of guest memory", () => {
    const { mem, queue } = programmed();
    queue.usedRing = MEM_SIZE - 64; // the used ring of 16 entries needs 134 bytes
    assertInvalidRing(queue, mem, /outside guest memory/);
  });

  it("SplitQueue.validate() rejects a ring address above 2^53", () => {
    const { mem, queue } = programmed();
    queue.setDescTableAddress(0, 0x0020_0000);
    assertInvalidRing(queue, mem);
  });

  it("SplitQueue.validate() rejects a ring misaligned in its backing buffer", () => {
    const mem = new GuestMemory([{ base: 0, buffer: new ArrayBuffer(MEM_SIZE + 8), offset: 8 }]);
    const driver = new DriverQueue(mem, { size: SIZE });
    const queue = new SplitQueue(SIZE);
    driver.program(queue);
    assertInvalidRing(queue, mem, /backing buffer/);
  });

  it("SplitQueue.validate() rejects a queue that is not ready", () => {
    const { mem, queue } = programmed();
    queue.ready = false;
    assert.throws(() => queue.validate(mem), (e: unknown) => {
      assert.ok(e instanceof QueueError);
      assert.equal(e.code, "QueueNotReady");
      assert.equal(e.fatal, true);
      return true;
    });
  });
});
