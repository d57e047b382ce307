import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  MAX_QUEUE_SIZE,
  SplitQueue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../../queue/split.ts";
import { QueueError } from "../../queue/error.ts";
import { DriverQueue } from "../../testing/queue_driver.ts";

interface Setup {
  mem: GuestMemory;
  driver: DriverQueue;
  queue: SplitQueue;
}

function setup(options: { size?: number; eventIdx?: boolean; indirect?: boolean } = {}): Setup {
  const mem = GuestMemory.create(1 << 20);
  const size = options.size ?? 16;
  const driver = new DriverQueue(mem, { size, eventIdx: options.eventIdx ?? false });
  const queue = new SplitQueue(size);
  driver.program(queue);
  queue.indirect = options.indirect ?? false;
  queue.validate(mem);
  return { mem, driver, queue };
}

const bytes = (...b: number[]) => new Uint8Array(b);

describe("SplitQueue basic operation", () => {
  it("pop() returns null when the driver made nothing available", () => {
    const { mem, queue } = setup();
    assert.equal(queue.pop(mem), null);
    assert.equal(queue.hasPending(mem), false);
  });

  it("pop() yields the chain the driver added, readable part first", () => {
    const { mem, driver, queue } = setup();
    const head = driver.addChain([
      { readable: bytes(1, 2, 3) },
      { readable: bytes(4, 5) },
      { writable: 7 },
      { writable: 9 },
    ]);
    assert.equal(queue.hasPending(mem), true);
    const chain = queue.pop(mem);
    assert.ok(chain !== null);
    assert.equal(chain.head, head);
    assert.equal(chain.length, 4);
    assert.equal(chain.descriptorCount, 4);
    assert.equal(chain.readableCount, 2);
    assert.equal(chain.readableBytes, 5);
    assert.equal(chain.writableBytes, 16);
    assert.deepEqual([0, 1, 2, 3].map((i) => chain.isWritable(i)), [false, false, true, true]);
    assert.deepEqual(chain.lens, [3, 2, 7, 9]);
    const req = new Uint8Array(5);
    assert.equal(chain.reader.read(req), 5);
    assert.deepEqual(req, bytes(1, 2, 3, 4, 5));
    assert.equal(queue.pop(mem), null);
  });

  it("addUsedMany() publishes several chains with one used.idx move, or none", () => {
    const { mem, driver, queue } = setup();
    const heads = [0, 1, 2].map(() => driver.addChain([{ writable: 8 }]));
    const chains = heads.map(() => queue.pop(mem)!);
    // A bad head anywhere: nothing is published.
    assert.throws(
      () => queue.addUsedMany(mem, [chains[0].head, 999], [1, 1]),
      (e: unknown) => e instanceof QueueError && e.code === "InvalidUsedHead",
    );
    assert.equal(driver.usedIdx(), 0);
    queue.addUsedMany(mem, chains.map((c) => c.head), [8, 8, 3], 3);
    assert.equal(driver.usedIdx(), 3);
    assert.deepEqual(driver.takeAllUsed().map((u) => [u.id, u.len]), [
      [heads[0], 8],
      [heads[1], 8],
      [heads[2], 3],
    ]);
  });

  it("addUsed() hands the chain back with its head and length", () => {
    const { mem, driver, queue } = setup();
    const head = driver.addChain([{ readable: bytes(1) }, { writable: 4 }]);
    const chain = queue.pop(mem)!;
    chain.writer.write(bytes(0xa, 0xb, 0xc));
    queue.addUsed(mem, chain.head, 3);
    assert.equal(queue.usedIdx(mem), 1);
    assert.equal(driver.usedIdx(), 1);
    const used = driver.takeUsed();
    assert.ok(used !== null);
    assert.equal(used.id, head);
    assert.equal(used.len, 3);
    assert.deepEqual(used.written, bytes(0xa, 0xb, 0xc, 0));
    assert.equal(driver.takeUsed(), null);
    assert.equal(driver.freeDescriptors, 16);
  });

  it("chains come out in the order the driver published them", () => {
    const { mem, driver, queue } = setup();
    const heads = [0, 1, 2, 3, 4].map((i) => driver.addChain([{ readable: bytes(i) }]));
    const popped: number[] = [];
    let c;
    while ((c = queue.pop(mem)) !== null) {
      popped.push(c.head);
      assert.equal(c.reader.readU8(), popped.length - 1);
    }
    assert.deepEqual(popped, heads);
    assert.equal(queue.nextAvail, 5);
  });

  it("completions may be out of order; the driver sees them in used-ring order", () => {
    const { mem, driver, queue } = setup();
    const a = driver.addChain([{ writable: 1 }]);
    const b = driver.addChain([{ writable: 1 }]);
    const ca = queue.pop(mem)!;
    const cb = queue.pop(mem)!;
    queue.addUsed(mem, cb.head, 1);
    queue.addUsed(mem, ca.head, 0);
    assert.deepEqual(driver.takeAllUsed().map((u) => [u.id, u.len]), [[b, 1], [a, 0]]);
  });

  it("DriverQueue.publishMany() makes a burst available with one avail.idx move", () => {
    const { mem, driver, queue } = setup({ size: 8 });
    const heads = [0, 1, 2].map(() => driver.addChain([{ writable: 4 }], { publish: false }));
    assert.equal(queue.pop(mem), null);
    driver.publishMany(heads);
    assert.equal(driver.availIdx, 3);
    assert.equal(queue.availIdx(mem), 3);
    const popped: number[] = [];
    let chain;
    while ((chain = queue.pop(mem)) !== null) popped.push(chain.head);
    assert.deepEqual(popped, heads);
    assert.throws(() => driver.publishMany(new Array(9).fill(0)), RangeError);
  });

  it("pop() takes the entries avail.idx showed, then reads it again", () => {
    const { mem, driver, queue } = setup({ size: 8 });
    driver.addChain([{ writable: 1 }]);
    driver.addChain([{ writable: 1 }]);
    assert.ok(queue.pop(mem) !== null);
    // Published after the device read avail.idx: seen on the next read, when the first two
    // are taken.
    driver.addChain([{ writable: 1 }]);
    assert.ok(queue.pop(mem) !== null);
    assert.ok(queue.pop(mem) !== null);
    assert.equal(queue.pop(mem), null);
    // Moving nextAvail (a restart) forgets what was seen: avail.idx is read again and checked.
    driver.addChain([{ writable: 1 }]);
    queue.nextAvail = queue.nextAvail - 1;
    assert.ok(queue.pop(mem) !== null);
    assert.ok(queue.pop(mem) !== null);
    assert.equal(queue.pop(mem), null);
  });

  it("undoPop() makes the same chain available again", () => {
    const { mem, driver, queue } = setup();
    const head = driver.addChain([{ writable: 2 }]);
    assert.equal(queue.pop(mem)!.head, head);
    queue.undoPop();
    assert.equal(queue.pop(mem)!.head, head);
    assert.equal(queue.pop(mem), null);
  });

  it("runs many more chains than the queue size through the ring", () => {
    const { mem, driver, queue } = setup({ size: 4 });
    for (let i = 0; i < 100; i++) {
      driver.addChain([{ readable: bytes(i & 0xff) }, { writable: 1 }]);
      const chain = queue.pop(mem)!;
      const v = chain.reader.readU8();
      chain.writer.writeU8(v ^ 0xff);
      queue.addUsed(mem, chain.head, 1);
      const used = driver.takeUsed()!;
      assert.equal(used.written[0], (i & 0xff) ^ 0xff);
    }
    assert.equal(queue.nextAvail, 100);
    assert.equal(queue.nextUsed, 100);
  });
});

describe("SplitQueue 16-bit index wrap-around", () => {
  it("runs 20 chains across avail.idx and used.idx 65535 -> 0", () => {
    const { mem, driver, queue } = setup({ size: 8 });
    driver.setAvailIdx(65530);
    driver.setLastUsed(65530);
    mem.writeU16(driver.usedRing + 2, 65530);
    queue.nextAvail = 65530;
    queue.nextUsed = 65530;
    for (let i = 0; i < 20; i++) {
      const head = driver.addChain([{ readable: bytes(i) }, { writable: 2 }]);
      const chain = queue.pop(mem);
      assert.ok(chain !== null, `chain ${i}`);
      assert.equal(chain.head, head);
      assert.equal(chain.reader.readU8(), i);
      chain.writer.writeU16(0x100 + i);
      queue.addUsed(mem, chain.head, 2);
      const used = driver.takeUsed()!;
      assert.equal(used.id, head);
      assert.equal(used.written[0] | (used.written[1] << 8), 0x100 + i);
      assert.equal(queue.pop(mem), null);
    }
    assert.equal(queue.nextAvail, (65530 + 20) & 0xffff);
    assert.equal(queue.nextUsed, 14);
    assert.equal(driver.usedIdx(), 14);
    assert.equal(driver.availIdx, 14);
  });

  it("pops a full ring of chains published across the wrap in one batch", () => {
    const { mem, driver, queue } = setup({ size: 8 });
    driver.setAvailIdx(65533);
    driver.setLastUsed(65533);
    mem.writeU16(driver.usedRing + 2, 65533);
    queue.nextAvail = 65533;
    queue.nextUsed = 65533;
    const heads = Array.from({ length: 8 }, () => driver.addChain([{ writable: 1 }]));
    assert.equal(driver.availIdx, 5);
    const popped: number[] = [];
    let c;
    while ((c = queue.pop(mem)) !== null) {
      popped.push(c.head);
      queue.addUsed(mem, c.head, 0);
    }
    assert.deepEqual(popped, heads);
    assert.deepEqual(driver.takeAllUsed().map((u) => u.id), heads);
  });

  it("nextAvail and nextUsed setters wrap at 2^16", () => {
    const q = new SplitQueue(8);
    q.nextAvail = 65536 + 3;
    q.nextUsed = -1;
    assert.equal(q.nextAvail, 3);
    assert.equal(q.nextUsed, 65535);
  });
});

describe("SplitQueue indirect descriptors", () => {
  it("follows an indirect table with readable and writable buffers", () => {
    const { mem, driver, queue } = setup({ indirect: true });
    const head = driver.addChain([
      { readable: bytes(1, 2) },
      { readable: bytes(3, 4, 5) },
      { writable: 3 },
      { writable: 5 },
    ], { indirect: true });
    assert.equal(driver.freeDescriptors, 15);
    const chain = queue.pop(mem)!;
    assert.equal(chain.head, head);
    assert.equal(chain.descriptorCount, 5);
    assert.equal(chain.length, 4);
    assert.equal(chain.readableCount, 2);
    assert.equal(chain.readableBytes, 5);
    assert.equal(chain.writableBytes, 8);
    assert.equal(chain.reader.readU32(), 0x04030201);
    assert.equal(chain.reader.readU8(), 5);
    chain.writer.write(bytes(9, 8, 7, 6, 5, 4, 3, 2));
    queue.addUsed(mem, head, 8);
    const used = driver.takeUsed()!;
    assert.equal(used.id, head);
    assert.deepEqual(used.written, bytes(9, 8, 7, 6, 5, 4, 3, 2));
    assert.equal(driver.freeDescriptors, 16);
  });

  it("mixes direct and indirect chains in one queue", () => {
    const { mem, driver, queue } = setup({ indirect: true });
    const a = driver.addChain([{ readable: bytes(1) }, { writable: 1 }]);
    const b = driver.addChain([{ readable: bytes(2) }, { writable: 1 }], { indirect: true });
    const c = driver.addChain([{ readable: bytes(3) }, { writable: 1 }]);
    for (const [head, v] of [[a, 1], [b, 2], [c, 3]]) {
      const chain = queue.pop(mem)!;
      assert.equal(chain.head, head);
      assert.equal(chain.reader.readU8(), v);
    }
  });

  it("an indirect table as large as the queue allows many segments per descriptor", () => {
    const { mem, driver, queue } = setup({ size: 2, indirect: true });
    const buffers = Array.from({ length: 64 }, (_, i) => ({ readable: bytes(i) }));
    driver.addChain(buffers, { indirect: true });
    const chain = queue.pop(mem)!;
    assert.equal(chain.length, 64);
    const all = new Uint8Array(64);
    chain.reader.readExact(all);
    assert.deepEqual([...all], Array.from({ length: 64 }, (_, i) => i));
  });
});

describe("SplitQueue notification suppression without EVENT_IDX", () => {
  it("needsNotification() is true unless the driver sets VIRTQ_AVAIL_F_NO_INTERRUPT", () => {
    const { mem, driver, queue } = setup();
    driver.addChain([{ writable: 1 }]);
    queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), true);
    driver.suppressInterrupts(true);
    driver.addChain([{ writable: 1 }]);
    queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), false);
    driver.suppressInterrupts(false);
    assert.equal(queue.needsNotification(mem), true);
  });

  it("disableNotification() sets VIRTQ_USED_F_NO_NOTIFY so the driver does not kick", () => {
    const { mem, driver, queue } = setup();
    queue.disableNotification(mem);
    assert.equal(mem.readU16(driver.usedRing) & VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY);
    driver.addChain([{ writable: 1 }]);
    assert.equal(driver.kickNeeded(), false);
    assert.equal(queue.enableNotification(mem), true, "a buffer arrived while disabled");
    assert.equal(mem.readU16(driver.usedRing), 0);
    driver.addChain([{ writable: 1 }]);
    assert.equal(driver.kickNeeded(), true);
  });

  it("enableNotification() reports false when nothing is pending", () => {
    const { mem, driver, queue } = setup();
    driver.addChain([{ writable: 1 }]);
    queue.pop(mem);
    assert.equal(queue.enableNotification(mem), false);
  });

  it("kickNeeded() is false when nothing new was published", () => {
    const { driver } = setup();
    assert.equal(driver.kickNeeded(), false);
    driver.addChain([{ writable: 1 }]);
    assert.equal(driver.kickNeeded(), true);
    assert.equal(driver.kickNeeded(), false);
  });
});

describe("SplitQueue EVENT_IDX", () => {
  it("needsNotification() honours used_event (device -> driver)", () => {
    const { mem, driver, queue } = setup({ eventIdx: true });
    driver.autoUsedEvent = false;
    const complete = () => {
      driver.addChain([{ writable: 1 }]);
      queue.addUsed(mem, queue.pop(mem)!.head, 1);
      driver.takeUsed();
    };
    complete(); // used.idx = 1
    assert.equal(queue.needsNotification(mem), true, "first check always notifies");
    // The driver wants an interrupt only once the entry at index 3 is used (used.idx 4).
    driver.setUsedEvent(3);
    complete(); // used.idx = 2
    assert.equal(queue.needsNotification(mem), false);
    complete(); // used.idx = 3
    assert.equal(queue.needsNotification(mem), false);
    complete(); // used.idx = 4
    assert.equal(queue.needsNotification(mem), true);
    complete(); // used.idx = 5: used_event 3 already passed
    assert.equal(queue.needsNotification(mem), false);
  });

  it("needsNotification() notifies when used_event is passed inside a batch", () => {
    const { mem, driver, queue } = setup({ eventIdx: true });
    driver.addChain([{ writable: 1 }]);
    queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), true);
    driver.setUsedEvent(2);
    for (let i = 0; i < 4; i++) driver.addChain([{ writable: 1 }]);
    for (let i = 0; i < 4; i++) queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), true);
  });

  it("needsNotification() ignores VIRTQ_AVAIL_F_NO_INTERRUPT under EVENT_IDX", () => {
    const { mem, driver, queue } = setup({ eventIdx: true });
    driver.suppressInterrupts(true);
    driver.addChain([{ writable: 1 }]);
    queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), true);
    driver.setUsedEvent(1);
    driver.addChain([{ writable: 1 }]);
    queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), true);
  });

  it("needsNotification() handles used_event across the 16-bit wrap", () => {
    const { mem, driver, queue } = setup({ eventIdx: true, size: 8 });
    driver.autoUsedEvent = false;
    driver.setAvailIdx(65534);
    driver.setLastUsed(65534);
    mem.writeU16(driver.usedRing + 2, 65534);
    queue.nextAvail = 65534;
    queue.nextUsed = 65534;
    const complete = () => {
      driver.addChain([{ writable: 1 }]);
      queue.addUsed(mem, queue.pop(mem)!.head, 0);
      driver.takeUsed();
    };
    complete(); // used.idx = 65535
    assert.equal(queue.needsNotification(mem), true);
    driver.setUsedEvent(0); // notify once the entry at index 0 is used: used.idx 1
    complete(); // 0
    assert.equal(queue.needsNotification(mem), false);
    complete(); // 1
    assert.equal(queue.needsNotification(mem), true);
  });

  it("enableNotification() writes avail_event; kickNeeded() is false until it is passed", () => {
    const { mem, driver, queue } = setup({ eventIdx: true });
    const availEvent = driver.usedRing + 4 + 8 * driver.size;
    queue.enableNotification(mem);
    assert.equal(mem.readU16(availEvent), 0);
    driver.addChain([{ writable: 1 }]); // avail.idx 0 -> 1 crosses avail_event 0
    assert.equal(driver.kickNeeded(), true);
    driver.addChain([{ writable: 1 }]); // 1 -> 2: the device has not asked again
    assert.equal(driver.kickNeeded(), false);
    driver.addChain([{ writable: 1 }]);
    assert.equal(driver.kickNeeded(), false);
    // The device takes everything and re-arms at its next index.
    while (queue.pop(mem) !== null);
    assert.equal(queue.enableNotification(mem), false);
    assert.equal(mem.readU16(availEvent), 3);
    driver.addChain([{ writable: 1 }]);
    assert.equal(driver.kickNeeded(), true);
  });

  it("enableNotification() reports buffers published before it re-armed", () => {
    const { mem, driver, queue } = setup({ eventIdx: true });
    driver.addChain([{ writable: 1 }]);
    driver.addChain([{ writable: 1 }]);
    queue.pop(mem);
    assert.equal(queue.enableNotification(mem), true);
    assert.equal(mem.readU16(driver.usedRing + 4 + 8 * driver.size), 1);
  });

  it("kickNeeded() honours an avail_event ahead of the driver", () => {
    const { mem, driver } = setup({ eventIdx: true });
    mem.writeU16(driver.usedRing + 4 + 8 * driver.size, 3);
    const kicks: boolean[] = [];
    for (let i = 0; i < 6; i++) {
      driver.addChain([{ writable: 1 }]);
      kicks.push(driver.kickNeeded());
    }
    // Only publishing the entry at index 3 (avail.idx 3 -> 4) crosses avail_event.
    assert.deepEqual(kicks, [false, false, false, true, false, false]);
  });

  it("DriverQueue.takeUsed() re-arms used_event at the consumed position", () => {
    const { mem, driver, queue } = setup({ eventIdx: true });
    const usedEvent = driver.availRing + 4 + 2 * driver.size;
    for (let i = 0; i < 3; i++) driver.addChain([{ writable: 1 }]);
    for (let i = 0; i < 3; i++) queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), true);
    driver.takeUsed();
    assert.equal(mem.readU16(usedEvent), 1);
    driver.takeAllUsed();
    assert.equal(mem.readU16(usedEvent), 3);
    driver.addChain([{ writable: 1 }]);
    queue.addUsed(mem, queue.pop(mem)!.head, 0);
    assert.equal(queue.needsNotification(mem), true);
  });

  it("disableNotification() leaves the used flags alone under EVENT_IDX", () => {
    const { mem, driver, queue } = setup({ eventIdx: true });
    queue.disableNotification(mem);
    assert.equal(mem.readU16(driver.usedRing), 0);
  });

  it("setFeatures() turns EVENT_IDX and INDIRECT_DESC on and off", () => {
    const q = new SplitQueue(8);
    q.setFeatures((1n << BigInt(VIRTIO_F_EVENT_IDX)) | (1n << BigInt(VIRTIO_F_INDIRECT_DESC)));
    assert.equal(q.eventIdx, true);
    assert.equal(q.indirect, true);
    q.setFeatures(1n << 32n);
    assert.equal(q.eventIdx, false);
    assert.equal(q.indirect, false);
  });
});

describe("SplitQueue sizes", () => {
  it("accepts every power of two up to 32768 as a maximum size", () => {
    for (let n = 1; n <= MAX_QUEUE_SIZE; n *= 2) assert.equal(new SplitQueue(n).maxSize, n);
  });

  it("rejects maximum sizes that are not powers of two up to 32768", () => {
    for (const n of [0, -2, 3, 6, 100, 1.5, 65536, NaN]) {
      assert.throws(() => new SplitQueue(n), RangeError, `size ${n}`);
    }
  });

  it("a 32768-entry queue validates and serves", () => {
    const mem = GuestMemory.create(2 << 20);
    const driver = new DriverQueue(mem, { size: 32768 });
    const queue = new SplitQueue(32768);
    driver.program(queue);
    queue.validate(mem);
    const head = driver.addChain([{ writable: 4 }]);
    assert.equal(queue.pop(mem)!.head, head);
  });

  it("validate() rejects a driver-chosen size that is not a power of two or too large", () => {
    for (const size of [0, 3, 12, 32]) {
      const { mem, queue } = setup({ size: 16 });
      queue.size = size;
      assert.throws(() => queue.validate(mem), (e: unknown) => {
        assert.ok(e instanceof QueueError);
        assert.equal(e.code, "InvalidSize");
        assert.equal(e.fatal, true);
        return true;
      }, `size ${size}`);
      assert.equal(queue.isValid(mem), false);
    }
  });

  it("a smaller power-of-two size than the maximum works", () => {
    const mem = GuestMemory.create(1 << 20);
    const driver = new DriverQueue(mem, { size: 4 });
    const queue = new SplitQueue(256);
    driver.program(queue);
    assert.equal(queue.isValid(mem), true);
    const head = driver.addChain([{ writable: 4 }]);
    assert.equal(queue.pop(mem)!.head, head);
  });
});

describe("SplitQueue configuration and state", () => {
  it("address setters combine the 32-bit halves the transport writes", () => {
    const q = new SplitQueue(8);
    q.setDescTableAddress(0x1000, 0x2);
    q.setAvailRingAddress(0x3000);
    q.setAvailRingAddress(undefined, 0x1);
    q.setUsedRingAddress(0xfffffffc, 0);
    assert.equal(q.descTable, 0x2_0000_1000);
    assert.equal(q.availRing, 0x1_0000_3000);
    assert.equal(q.usedRing, 0xfffffffc);
    q.descTable = 0x12_3456_7890;
    assert.equal(q.descTable, 0x12_3456_7890);
  });

  it("reset() returns to the initial state and forgets the rings", () => {
    const { mem, driver, queue } = setup({ size: 8, eventIdx: true, indirect: true });
    driver.addChain([{ writable: 1 }]);
    queue.pop(mem);
    queue.reset();
    assert.deepEqual(queue.state(), {
      format: "split",
      maxSize: 8,
      size: 8,
      ready: false,
      descTable: 0,
      availRing: 0,
      usedRing: 0,
      nextAvail: 0,
      nextUsed: 0,
      eventIdx: false,
      indirect: false,
    });
    assert.throws(() => queue.pop(mem), (e: unknown) => {
      assert.ok(e instanceof QueueError);
      assert.equal(e.code, "QueueNotReady");
      return true;
    });
  });

  it("state() reports the programmed layout and indices", () => {
    const { mem, driver, queue } = setup({ size: 8, eventIdx: true });
    driver.addChain([{ writable: 1 }]);
    queue.addUsed(mem, queue.pop(mem)!.head, 0);
    const s = queue.state();
    assert.equal(s.size, 8);
    assert.equal(s.ready, true);
    assert.equal(s.descTable, driver.descTable);
    assert.equal(s.availRing, driver.availRing);
    assert.equal(s.usedRing, driver.usedRing);
    assert.equal(s.nextAvail, 1);
    assert.equal(s.nextUsed, 1);
    assert.equal(s.eventIdx, true);
  });

  it("a queue re-validates itself when used with another GuestMemory", () => {
    const { driver, queue } = setup({ size: 8 });
    const other = GuestMemory.create(0x1000);
    driver.addChain([{ writable: 1 }]);
    assert.throws(() => queue.pop(other), (e: unknown) => {
      assert.ok(e instanceof QueueError);
      assert.equal(e.code, "InvalidRing");
      return true;
    });
  });
});
