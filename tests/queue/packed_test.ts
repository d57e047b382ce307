// The packed virtqueue (virtio 1.2 §2.8), device side, driven by the packed driver harness:
// lists under buffer ids, wrap counters, used descriptors that skip their list, out-of-order
// completion, indirect tables, event suppression both ways, and the same hostile-input rules
// as the split ring.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  PackedQueue,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
} from "../../queue/packed.ts";
import {
  SplitQueue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../../queue/split.ts";
import { DriverQueue } from "../../testing/queue_driver.ts";
import { QueueError, type QueueErrorCode } from "../../queue/error.ts";
import { PackedDriverQueue } from "../../testing/packed_driver.ts";
import { RngDevice } from "../../devices/rng.ts";
import { MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import { featureBit, VIRTIO_F_RING_PACKED } from "../../devices/device.ts";

interface Rig {
  mem: GuestMemory;
  driver: PackedDriverQueue;
  queue: PackedQueue;
}

function rig(options: { size?: number; eventIdx?: boolean; indirect?: boolean } = {}): Rig {
  const mem = GuestMemory.create(2 << 20);
  const size = options.size ?? 8;
  const driver = new PackedDriverQueue(mem, {
    size,
    ringBase: 0x1000,
    bufferBase: 0x10000,
    eventIdx: options.eventIdx,
  });
  const queue = new PackedQueue(size);
  driver.program(queue);
  queue.indirect = options.indirect ?? false;
  return { mem, driver, queue };
}

function serveAll(r: Rig, fill = 0x5a): number {
  let n = 0;
  let chain;
  while ((chain = r.queue.pop(r.mem)) !== null) {
    chain.reader.skip(chain.reader.remaining);
    const w = chain.writer.remaining;
    chain.writer.fill(w, fill);
    r.queue.addUsed(r.mem, chain.head, w);
    n++;
  }
  return n;
}

function expectQueueError(fn: () => unknown, code: QueueErrorCode, fatal: boolean): QueueError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof QueueError, `expected a QueueError, got ${caught}`);
  assert.equal(caught.code, code, caught.message);
  assert.equal(caught.fatal, fatal);
  return caught;
}

describe("PackedQueue", () => {
  it("pops a list under its buffer id and returns it with the bytes written", () => {
    const r = rig();
    const id = r.driver.addChain([{ readable: new Uint8Array([1, 2, 3]) }, { writable: 5 }]);
    assert.equal(r.queue.hasPending(r.mem), true);
    const chain = r.queue.pop(r.mem)!;
    assert.equal(chain.head, id);
    assert.equal(chain.descriptorCount, 2);
    const got = new Uint8Array(3);
    chain.reader.readExact(got);
    assert.deepEqual(got, new Uint8Array([1, 2, 3]));
    chain.writer.write(new Uint8Array([7, 7, 7]));
    r.queue.addUsed(r.mem, chain.head, 3);
    const used = r.driver.takeUsed()!;
    assert.equal(used.id, id);
    assert.equal(used.len, 3);
    assert.deepEqual(used.written.subarray(0, 3), new Uint8Array([7, 7, 7]));
    assert.equal(r.queue.pop(r.mem), null);
  });

  it("wraps around a ring that is not a power of two many times, lists of several descriptors", () => {
    const r = rig({ size: 5 });
    for (let round = 0; round < 40; round++) {
      const a = r.driver.addChain([{ readable: new Uint8Array([round]) }, { writable: 2 }]);
      const b = r.driver.addChain([{ writable: 1 }]);
      assert.equal(serveAll(r, round), 2);
      const used = r.driver.takeAllUsed();
      assert.deepEqual(used.map((u) => u.id), [a, b]);
      assert.equal(used[0].written[1], round);
    }
    assert.equal(r.driver.freeDescriptors, 5);
  });

  it("completes out of order: the used descriptor skips its own list's length", () => {
    const r = rig({ size: 8 });
    const a = r.driver.addChain([{ writable: 1 }, { writable: 1 }, { writable: 1 }]);
    const b = r.driver.addChain([{ writable: 4 }]);
    const ca = r.queue.pop(r.mem)!;
    const cb = r.queue.pop(r.mem)!;
    r.queue.addUsed(r.mem, cb.head, 4);
    r.queue.addUsed(r.mem, ca.head, 3);
    assert.deepEqual(r.driver.takeAllUsed().map((u) => [u.id, u.len]), [[b, 4], [a, 3]]);
    // The ring is free again and serves further lists.
    r.driver.addChain([{ writable: 2 }, { writable: 2 }, { writable: 2 }, { writable: 2 }]);
    assert.equal(serveAll(r), 1);
    assert.equal(r.driver.takeAllUsed().length, 1);
  });

  it("addUsedMany() marks the first descriptor used last, across the wrap, and checks every id", () => {
    const r = rig({ size: 5 });
    // Move the ring so the batch wraps: two lists served first.
    r.driver.addChain([{ writable: 1 }]);
    r.driver.addChain([{ writable: 1 }, { writable: 1 }]);
    serveAll(r);
    r.driver.takeAllUsed();
    const ids = [
      r.driver.addChain([{ writable: 4 }]),
      r.driver.addChain([{ writable: 4 }, { writable: 4 }]),
      r.driver.addChain([{ writable: 4 }]),
    ];
    const chains = ids.map(() => r.queue.pop(r.mem)!);
    const heads = chains.map((c) => c.head);
    expectQueueError(
      () => r.queue.addUsedMany(r.mem, [heads[0], heads[0]], [1, 1]),
      "InvalidUsedHead",
      false,
    );
    expectQueueError(
      () => r.queue.addUsedMany(r.mem, [heads[0], 4], [1, 1]),
      "InvalidUsedHead",
      false,
    );
    assert.equal(r.driver.pendingUsed(), 0, "nothing published by a refused call");
    // Watch the driver's view as each flag turns used: nothing is visible before the last.
    const seen: number[] = [];
    const store = Atomics.store;
    (Atomics as { store: typeof Atomics.store }).store =
      ((a: Uint16Array, i: number, v: number) => {
        const out = store(a, i, v);
        seen.push(r.driver.pendingUsed());
        return out;
      }) as typeof Atomics.store;
    try {
      r.queue.addUsedMany(r.mem, heads, [4, 8, 4]);
    } finally {
      (Atomics as { store: typeof Atomics.store }).store = store;
    }
    assert.deepEqual(seen, [0, 0, 3]);
    assert.deepEqual(r.driver.takeAllUsed().map((u) => [u.id, u.len]), [
      [ids[0], 4],
      [ids[1], 8],
      [ids[2], 4],
    ]);
    assert.equal(r.driver.freeDescriptors, 5);
  });

  it("follows an indirect table when the feature is on, and refuses it otherwise", () => {
    const r = rig({ indirect: true });
    const id = r.driver.addChain([{ readable: new Uint8Array([9]) }, { writable: 3 }], {
      indirect: true,
    });
    const chain = r.queue.pop(r.mem)!;
    assert.equal(chain.head, id);
    assert.equal(chain.readableBytes, 1);
    assert.equal(chain.writableBytes, 3);
    const off = rig();
    const bad = off.driver.addChain([{ writable: 3 }], { indirect: true });
    const e = expectQueueError(() => off.queue.pop(off.mem), "IndirectNotNegotiated", false);
    assert.equal(e.head, bad);
    off.queue.addUsed(off.mem, bad, 0);
    assert.equal(off.driver.takeUsed()?.id, bad);
  });

  it("a bad buffer is reported with the list's id and can be returned with length 0", () => {
    const r = rig();
    r.driver.writeDescriptor(0, {
      addr: 0x7fff_0000_0000,
      len: 16,
      id: 3,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_AVAIL,
    });
    const e = expectQueueError(() => r.queue.pop(r.mem), "DescriptorOutOfBounds", false);
    assert.equal(e.head, 3);
    r.queue.addUsed(r.mem, 3, 0);
    // The device moved on: the next list is served.
    r.driver.writeDescriptor(1, {
      addr: 0x10000,
      len: 4,
      id: 4,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_AVAIL,
    });
    assert.equal(r.queue.pop(r.mem)?.head, 4);
  });

  it("a bad buffer early in a list consumes the whole list, reported with its last id", () => {
    const r = rig();
    const flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_AVAIL;
    r.driver.writeDescriptor(2, { addr: 0x10200, len: 4, id: 5, flags });
    r.driver.writeDescriptor(1, { addr: 0x10100, len: 4, id: 0, flags: flags | VIRTQ_DESC_F_NEXT });
    r.driver.writeDescriptor(0, {
      addr: 0x7fff_0000_0000,
      len: 4,
      id: 0,
      flags: flags | VIRTQ_DESC_F_NEXT,
    });
    const e = expectQueueError(() => r.queue.pop(r.mem), "DescriptorOutOfBounds", false);
    assert.equal(e.head, 5);
    assert.equal(r.queue.nextAvail, 3 | (1 << 15));
    r.queue.addUsed(r.mem, 5, 0);
    r.driver.writeDescriptor(3, { addr: 0x10300, len: 4, id: 6, flags });
    assert.equal(r.queue.pop(r.mem)?.head, 6);
  });

  it("a bad buffer does not hide a list that is not wholly available (fatal)", () => {
    const r = rig();
    r.driver.writeDescriptor(0, {
      addr: 0x7fff_0000_0000,
      len: 4,
      id: 0,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL,
    });
    expectQueueError(() => r.queue.pop(r.mem), "InvalidChain", true);
  });

  it("an indirect descriptor at the end of a list is refused", () => {
    const r = rig({ indirect: true });
    r.driver.writeDescriptor(1, {
      addr: 0x10100,
      len: 16,
      id: 1,
      flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_AVAIL,
    });
    r.driver.writeDescriptor(0, {
      addr: 0x10000,
      len: 4,
      id: 0,
      flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL,
    });
    const e = expectQueueError(() => r.queue.pop(r.mem), "IndirectWithNext", false);
    assert.equal(e.head, 1);
  });

  it("readable after writable is refused", () => {
    const r = rig();
    r.driver.writeDescriptor(1, { addr: 0x10000, len: 4, id: 2, flags: VIRTQ_DESC_F_AVAIL });
    r.driver.writeDescriptor(0, {
      addr: 0x10100,
      len: 4,
      id: 0,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL,
    });
    expectQueueError(() => r.queue.pop(r.mem), "ReadableAfterWritable", false);
  });

  it("a list whose later descriptors are not available breaks the queue", () => {
    const r = rig();
    r.driver.writeDescriptor(0, {
      addr: 0x10000,
      len: 4,
      id: 0,
      flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL,
    });
    expectQueueError(() => r.queue.pop(r.mem), "InvalidChain", true);
    assert.equal(r.queue.broken?.code, "InvalidChain");
    expectQueueError(() => r.queue.pop(r.mem), "InvalidChain", true);
  });

  it("a list that never ends (every descriptor NEXT) breaks the queue, bounded by the ring", () => {
    const r = rig({ size: 4 });
    for (let i = 0; i < 4; i++) {
      r.driver.writeDescriptor(i, {
        addr: 0x10000,
        len: 4,
        id: 0,
        flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL,
      });
    }
    expectQueueError(() => r.queue.pop(r.mem), "ChainTooLong", true);
  });

  it("a buffer id at or above the queue size breaks the queue", () => {
    const r = rig({ size: 4 });
    r.driver.writeDescriptor(0, { addr: 0x10000, len: 4, id: 4, flags: VIRTQ_DESC_F_AVAIL });
    expectQueueError(() => r.queue.pop(r.mem), "HeadOutOfRange", true);
  });

  it("indirect inside a list is refused", () => {
    const r = rig({ indirect: true });
    r.driver.writeDescriptor(1, { addr: 0x10000, len: 4, id: 0, flags: VIRTQ_DESC_F_AVAIL });
    r.driver.writeDescriptor(0, {
      addr: 0x10100,
      len: 16,
      id: 0,
      flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL,
    });
    expectQueueError(() => r.queue.pop(r.mem), "IndirectWithNext", false);
  });

  it("addUsed refuses an id that is not in flight", () => {
    const r = rig();
    expectQueueError(() => r.queue.addUsed(r.mem, 2, 0), "InvalidUsedHead", false);
    expectQueueError(() => r.queue.addUsed(r.mem, 99, 0), "InvalidUsedHead", false);
  });

  it("undoPop puts the list back, wrap counter included", () => {
    const r = rig({ size: 2 });
    r.driver.addChain([{ writable: 1 }]);
    r.driver.addChain([{ writable: 1 }]);
    serveAll(r);
    r.driver.takeAllUsed();
    const before = r.queue.nextAvail;
    r.driver.addChain([{ writable: 1 }]);
    const c = r.queue.pop(r.mem)!;
    r.queue.undoPop();
    assert.equal(r.queue.nextAvail, before);
    assert.equal(r.queue.pop(r.mem)?.head, c.head);
  });

  it("positions carry the wrap counter in bit 15, as vhost-user's vring base does", () => {
    const r = rig({ size: 3 });
    assert.equal(r.queue.nextAvail, 1 << 15, "index 0, wrap counter 1");
    for (let i = 0; i < 3; i++) r.driver.addChain([{ writable: 1 }]);
    serveAll(r);
    assert.equal(r.queue.nextAvail, 0, "index 0 after one wrap: counter 0");
    assert.equal(r.queue.nextUsed, 0);
    // vhost-user's encoding (QEMU): avail position in bits 0–15, used position in 16–31.
    r.queue.resume(r.mem, (2 | (1 << 15)) * 0x10001);
    assert.equal(r.queue.vringBase(), (2 | (1 << 15)) * 0x10001);
    assert.equal(r.queue.nextAvail, 2 | (1 << 15));
    assert.equal(r.queue.nextUsed, 2 | (1 << 15));
    assert.equal(r.queue.state().format, "packed");
  });
});

describe("PackedQueue event suppression", () => {
  it("driver event flags: ENABLE notifies, DISABLE does not", () => {
    const r = rig();
    r.driver.addChain([{ writable: 1 }]);
    serveAll(r);
    assert.equal(r.queue.needsNotification(r.mem), true);
    r.driver.suppressInterrupts(true);
    r.driver.addChain([{ writable: 1 }]);
    serveAll(r);
    assert.equal(r.queue.needsNotification(r.mem), false);
    r.driver.suppressInterrupts(false);
    assert.equal(r.mem.readU16(r.driver.availRing + 2), RING_EVENT_FLAGS_ENABLE);
  });

  it("with EVENT_IDX, the device notifies once the driver's event descriptor is used", () => {
    const r = rig({ size: 8, eventIdx: true });
    r.queue.eventIdx = true;
    r.driver.autoUsedEvent = false;
    for (let i = 0; i < 2; i++) r.driver.addChain([{ writable: 1 }]);
    serveAll(r);
    assert.equal(r.queue.needsNotification(r.mem), true, "first decision always notifies");
    // Ask to hear when position 5 (this wrap) is used.
    r.driver.setUsedEvent(5 | (1 << 15));
    r.driver.addChain([{ writable: 1 }]);
    r.driver.addChain([{ writable: 1 }]);
    serveAll(r); // used up to position 4
    assert.equal(r.queue.needsNotification(r.mem), false);
    r.driver.addChain([{ writable: 1 }]);
    r.driver.addChain([{ writable: 1 }]);
    serveAll(r); // positions 4 and 5 used
    assert.equal(r.queue.needsNotification(r.mem), true);
    assert.equal(RING_EVENT_FLAGS_DESC, 2);
  });

  it("the device event structure tells the driver when to kick", () => {
    const r = rig({ size: 8 });
    r.queue.disableNotification(r.mem);
    assert.equal(r.mem.readU16(r.driver.usedRing + 2), RING_EVENT_FLAGS_DISABLE);
    r.driver.addChain([{ writable: 1 }]);
    assert.equal(r.driver.kickNeeded(), false);
    assert.equal(r.queue.enableNotification(r.mem), true, "a buffer arrived meanwhile");
    r.driver.addChain([{ writable: 1 }]);
    assert.equal(r.driver.kickNeeded(), true);
  });

  it("used descriptors carry the device's wrap counter in AVAIL and USED", () => {
    const r = rig({ size: 2 });
    r.driver.addChain([{ writable: 1 }]);
    serveAll(r);
    const flags = r.mem.readU16(r.driver.descTable + 14);
    assert.equal(
      flags & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED),
      VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED,
    );
    assert.equal(flags & VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE, "data was written");
  });
});

describe("packed ring through the transports", () => {
  it("an MMIO driver negotiates VIRTIO_F_RING_PACKED and reads entropy over packed queues", () => {
    const mem = GuestMemory.create(8 << 20);
    const transport = new MmioTransport(new RngDevice(), mem);
    const driver = new MmioDriver(transport, mem);
    const [q] = driver.initPacked({ queueSize: 7 });
    assert.notEqual(driver.features & featureBit(VIRTIO_F_RING_PACKED), 0n);
    assert.equal(transport.queues[0].format, "packed");
    for (let i = 0; i < 20; i++) {
      q.addChain([{ writable: 32 }]);
      driver.kick(0, true);
      const used = q.takeUsed()!;
      assert.equal(used.len, 32);
    }
    // A reset brings split rings back for the next driver.
    driver.init();
    assert.equal(transport.queues[0].format, "split");
  });
});

describe("VIRTIO_F_IN_ORDER", () => {
  it("split: one used entry stands for a batch of complete buffers; a short one ends it", () => {
    const mem = GuestMemory.create(2 << 20);
    const driver = new DriverQueue(mem, { size: 8, inOrder: true });
    const queue = new SplitQueue(8);
    driver.program(queue);
    queue.setFeatures(featureBit(VIRTIO_F_IN_ORDER));
    const heads = [0, 1, 2, 3].map(() => driver.addChain([{ writable: 4 }]));
    for (let i = 0; i < 4; i++) {
      const c = queue.pop(mem)!;
      // The third buffer is filled short: it must end its batch with its own length.
      queue.addUsed(mem, c.head, i === 2 ? 1 : 4);
    }
    // The short buffer flushed the first batch (three buffers in one entry); one is held back.
    assert.equal(mem.readU16(driver.usedRing + 2), 3);
    assert.equal(mem.readU32(driver.usedRing + 4), heads[2], "the entry names the batch's last");
    queue.flushUsed(mem);
    assert.equal(mem.readU16(driver.usedRing + 2), 4);
    assert.deepEqual(driver.takeAllUsed().map((u) => [u.id, u.len]), [
      [heads[0], 4],
      [heads[1], 4],
      [heads[2], 1],
      [heads[3], 4],
    ]);
  });

  it("split: needsNotification publishes the batch first", () => {
    const mem = GuestMemory.create(2 << 20);
    const driver = new DriverQueue(mem, { size: 8, inOrder: true });
    const queue = new SplitQueue(8);
    driver.program(queue);
    queue.setFeatures(featureBit(VIRTIO_F_IN_ORDER));
    driver.addChain([{ writable: 2 }]);
    driver.addChain([{ writable: 2 }]);
    for (let i = 0; i < 2; i++) queue.addUsed(mem, queue.pop(mem)!.head, 2);
    assert.equal(mem.readU16(driver.usedRing + 2), 0);
    assert.equal(queue.needsNotification(mem), true);
    assert.equal(mem.readU16(driver.usedRing + 2), 2);
    assert.equal(driver.takeAllUsed().length, 2);
  });

  it("packed: one used descriptor for the batch, the ring skips every list of it", () => {
    const r = rig({ size: 8 });
    r.driver.inOrder = true;
    r.queue.setFeatures(featureBit(VIRTIO_F_IN_ORDER));
    const ids = [
      r.driver.addChain([{ writable: 2 }, { writable: 2 }]),
      r.driver.addChain([{ writable: 4 }]),
      r.driver.addChain([{ writable: 1 }, { writable: 1 }, { writable: 1 }]),
    ];
    for (let i = 0; i < 3; i++) {
      const c = r.queue.pop(r.mem)!;
      r.queue.addUsed(r.mem, c.head, c.writableBytes);
    }
    assert.equal(r.queue.nextUsed, 1 << 15, "nothing published yet");
    r.queue.flushUsed(r.mem);
    assert.equal(r.queue.nextUsed, 6 | (1 << 15), "skipped 2 + 1 + 3 descriptors");
    assert.equal(r.mem.readU16(r.driver.descTable + 12), ids[2]);
    assert.deepEqual(r.driver.takeAllUsed().map((u) => [u.id, u.len]), [
      [ids[0], 4],
      [ids[1], 4],
      [ids[2], 3],
    ]);
  });

  it("an MMIO driver that accepts it reads entropy through batched used entries", () => {
    const mem = GuestMemory.create(8 << 20);
    const transport = new MmioTransport(new RngDevice(), mem);
    const driver = new MmioDriver(transport, mem);
    const offered = driver.deviceFeatures();
    assert.notEqual(offered & featureBit(VIRTIO_F_IN_ORDER), 0n, "rng offers IN_ORDER");
    const [q] = driver.init({ features: offered & ~(1n << 34n) & ~featureBit(VIRTIO_F_EVENT_IDX) });
    q.inOrder = true;
    for (let i = 0; i < 5; i++) q.addChain([{ writable: 16 }]);
    driver.kick(0, true);
    const used = q.takeAllUsed();
    assert.equal(used.length, 5);
    assert.ok(used.every((u) => u.len === 16));
    // Five buffers in one batch: the used index moved by five, and the one entry written (slot
    // 0) names the last buffer.
    assert.equal(mem.readU16(q.usedRing + 2), 5);
    assert.equal(mem.readU32(q.usedRing + 4), used[4].id);
  });
});
