// QueueThread on its own: a Worker serving one split ring in memfd guest memory, driven from the
// driver side on this thread. Handover (stop returns where the ring stands, a start taken back
// before the thread came to it), a ring that feeds itself (the stop is still honoured), bounded
// error reports, a broken kick fd, and threads that fail to load or die.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { SplitQueue, VIRTIO_F_EVENT_IDX } from "../../queue/split.ts";
import { featureBit, VIRTIO_F_VERSION_1, type VirtioError } from "../../devices/device.ts";
import { close, EventFd, ftruncate, type Mapping, memfdCreate, mmapFd } from "../../sys/mod.ts";
import { DriverQueue } from "../../testing/queue_driver.ts";
import {
  describeRing,
  QUEUE_THREAD_MAX_PENDING_ERRORS,
  QueueThread,
  type QueueThreadSpec,
} from "../../transport/queue_thread.ts";
import type { TestHandlerParams } from "./_queue_thread_handlers.ts";

const T = { timeout: 30000 };
const MEM = 1 << 20;
const HANDLERS = new URL("./_queue_thread_handlers.ts", import.meta.url).href;

interface Rig {
  mem: GuestMemory;
  driver: DriverQueue;
  queue: SplitQueue;
  kick: EventFd;
  call: EventFd;
  thread: QueueThread;
  errors: VirtioError[];
  kicks: string[];
  crashes: Error[];
  counter: Int32Array;
  fd: number;
  mapping: Mapping;
  spec(mode: TestHandlerParams["mode"], module?: string): QueueThreadSpec;
  start(mode: TestHandlerParams["mode"], module?: string): void;
  done(): void;
}

function rig(options: { eventIdx?: boolean; kick?: EventFd } = {}): Rig {
  const fd = memfdCreate("queue-thread-test");
  ftruncate(fd, MEM);
  const mapping = mmapFd(fd, MEM);
  const mem = new GuestMemory([{ base: 0, buffer: mapping.buffer }]);
  const driver = new DriverQueue(mem, { size: 256, eventIdx: options.eventIdx ?? true });
  const queue = new SplitQueue(256);
  driver.program(queue);
  const features = featureBit(VIRTIO_F_VERSION_1) |
    ((options.eventIdx ?? true) ? featureBit(VIRTIO_F_EVENT_IDX) : 0n);
  queue.setFeatures(features);
  queue.validate(mem);
  const counter = new Int32Array(new SharedArrayBuffer(4));
  const errors: VirtioError[] = [];
  const kicks: string[] = [];
  const crashes: Error[] = [];
  const kick = options.kick ?? new EventFd();
  const call = new EventFd();
  const thread = new QueueThread(0, {
    onError: (e) => errors.push(e),
    onKickBroken: (r) => kicks.push(r),
    onCrash: (e) => crashes.push(e),
  });
  const r: Rig = {
    mem,
    driver,
    queue,
    kick,
    call,
    thread,
    errors,
    kicks,
    crashes,
    counter,
    fd,
    mapping,
    spec: (mode, module = HANDLERS) => ({
      module,
      params: {
        mode,
        counter: counter.buffer as SharedArrayBuffer,
        availRing: driver.availRing,
        size: driver.size,
      } satisfies TestHandlerParams,
    }),
    start(mode, module) {
      thread.start(
        describeRing(queue, features, [{ guestAddr: 0, size: MEM, fd, offset: 0 }], {
          kickFd: kick.fd,
          callFd: call.fd,
        }),
        r.spec(mode, module),
      );
    },
    done() {
      thread.close();
      kick.close();
      call.close();
      mapping.unmap();
      close(fd);
    },
  };
  return r;
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function until(cond: () => boolean, what: string, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(2);
  }
}

describe("QueueThread", () => {
  it("serves the ring on its thread; stop returns where the ring stands", T, async () => {
    const r = rig();
    try {
      r.start("fill");
      assert.equal(r.thread.serving, true);
      for (let round = 0; round < 5; round++) {
        const heads = [];
        for (let i = 0; i < 20; i++) heads.push(r.driver.addChain([{ writable: 2 }]));
        r.kick.write(1n);
        await until(() => r.driver.pendingUsed() === heads.length, "completions");
        const used = r.driver.takeAllUsed();
        assert.deepEqual(used.map((u) => u.id), heads);
        for (const u of used) {
          assert.equal(u.len, 2);
          assert.equal(new DataView(u.written.buffer).getUint16(0, true), u.id);
        }
      }
      const at = r.thread.stop();
      assert.deepEqual(at, { nextAvail: 100, nextUsed: 100 });
      assert.equal(r.thread.serving, false);
      assert.equal(Atomics.load(r.counter, 0), 100);
      // Taken back and handed over again: it carries on from there.
      r.queue.nextAvail = at.nextAvail;
      r.queue.nextUsed = at.nextUsed;
      r.start("fill");
      r.driver.addChain([{ writable: 2 }]);
      r.kick.write(1n);
      await until(() => r.driver.pendingUsed() === 1, "completion after restart");
      assert.deepEqual(r.thread.stop(), { nextAvail: 101, nextUsed: 101 });
      assert.deepEqual(r.errors, []);
      assert.deepEqual(r.crashes, []);
      assert.ok(r.thread.counters.passes >= 6);
    } finally {
      r.done();
    }
  });

  it("serves what was waiting when it starts, without a kick", T, async () => {
    const r = rig();
    try {
      for (let i = 0; i < 3; i++) r.driver.addChain([{ writable: 2 }]);
      r.start("fill");
      await until(() => r.driver.pendingUsed() === 3, "completions");
      assert.deepEqual(r.thread.stop(), { nextAvail: 3, nextUsed: 3 });
    } finally {
      r.done();
    }
  });

  it("a stop before the thread came to the start takes it back: nothing is served", T, async () => {
    const r = rig();
    try {
      for (let i = 0; i < 3; i++) r.driver.addChain([{ writable: 2 }]);
      r.start("fill"); // the Worker is still loading
      assert.deepEqual(r.thread.stop(), { nextAvail: 0, nextUsed: 0 });
      await delay(300);
      assert.equal(r.driver.pendingUsed(), 0);
      assert.equal(Atomics.load(r.counter, 0), 0);
      // The next start serves them.
      r.start("fill");
      await until(() => r.driver.pendingUsed() === 3, "completions");
      assert.deepEqual(r.thread.stop(), { nextAvail: 3, nextUsed: 3 });
    } finally {
      r.done();
    }
  });

  it("a ring that feeds itself is served a budget at a time and stops when asked", T, async () => {
    const r = rig({ eventIdx: false });
    try {
      r.driver.addChain([{ writable: 2 }]);
      r.start("feed");
      await until(() => Atomics.load(r.counter, 0) > 2000, "the ring to feed itself");
      const at = r.thread.stop();
      assert.equal(r.thread.serving, false);
      const served = Atomics.load(r.counter, 0);
      assert.equal(at.nextUsed, served & 0xffff);
      assert.ok(r.thread.counters.passes >= 8, `${r.thread.counters.passes} passes`);
      await delay(50);
      assert.equal(Atomics.load(r.counter, 0), served, "nothing served after the stop");
      assert.deepEqual(r.crashes, []);
    } finally {
      r.done();
    }
  });

  it("error reports are bounded; the count of those held back is reported", T, async () => {
    const r = rig();
    try {
      r.start("errors");
      await until(() => r.thread.counters.passes > 0, "the first pass");
      const n = 200;
      for (let i = 0; i < n; i++) r.driver.addChain([{ writable: 2 }]);
      r.kick.write(1n);
      // Block this thread (no message is received meanwhile) until the thread served them all.
      const sleep = new Int32Array(new SharedArrayBuffer(4));
      const end = Date.now() + 10000;
      while (r.driver.pendingUsed() !== n && Date.now() < end) Atomics.wait(sleep, 0, 0, 1);
      assert.equal(r.driver.pendingUsed(), n);
      r.thread.stop();
      let total = 0;
      await until(() => {
        total = 0;
        for (const e of r.errors) {
          const m = /\((\d+) earlier errors not reported\)/.exec(e.message);
          total += 1 + (m === null ? 0 : Number(m[1]));
        }
        return total === n;
      }, "every error to be accounted for");
      // At most the bound while this thread did not listen, and the last one held back.
      assert.ok(r.errors.length <= QUEUE_THREAD_MAX_PENDING_ERRORS + 1, `${r.errors.length}`);
      assert.ok(r.errors.every((e) => e.kind === "InvalidInput" && !e.needsReset));
    } finally {
      r.done();
    }
  });

  it("a kick eventfd that never drains is reported and no longer watched", T, async () => {
    const kick = new EventFd({ semaphore: true });
    const r = rig({ kick });
    try {
      r.start("fill");
      kick.write(1000n);
      await until(() => r.kicks.length === 1, "the broken kick report");
      assert.match(r.kicks[0], /still readable after 64 reads/);
      // The thread still answers a stop.
      r.thread.stop();
      assert.deepEqual(r.crashes, []);
    } finally {
      r.done();
    }
  });

  it("a handler module that cannot load needs a reset", T, async () => {
    const r = rig();
    try {
      r.start("fill", new URL("./_no_such_module.ts", import.meta.url).href);
      await until(() => r.errors.length === 1, "the load error");
      assert.equal(r.errors[0].needsReset, true);
      assert.match(r.errors[0].message, /cannot load/);
      // The ring stays handed over until taken back, untouched.
      assert.equal(r.thread.serving, true);
      assert.deepEqual(r.thread.stop(), { nextAvail: 0, nextUsed: 0 });
      assert.equal(r.thread.serving, false);
    } finally {
      r.done();
    }
  });

  it("a thread that dies is reported once and serves no more", T, async () => {
    const r = rig();
    try {
      r.start("fill", new URL("./_queue_thread_crash.ts", import.meta.url).href);
      await until(() => r.crashes.length === 1, "the crash report");
      assert.match(r.crashes[0].message, /queue 0 thread/);
      assert.ok(r.thread.failure !== undefined);
      // Taken back all the same: where the ring stood when the thread died.
      assert.equal(r.thread.serving, true);
      assert.deepEqual(r.thread.stop(), { nextAvail: 0, nextUsed: 0 });
      assert.equal(r.thread.serving, false);
      assert.throws(() => r.start("fill"), /queue 0 thread/);
    } finally {
      r.done();
    }
  });
});
