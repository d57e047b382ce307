// The vhost-user backend with a thread per ring (queueThreads): a two-queue block device on an
// image file served by two Workers. What matters is the handover: requests in flight while the
// frontend stops and restarts rings (GET_VRING_BASE), disables and enables them, sends a new
// memory table or a new call fd must each complete exactly once (the device counts every write
// it does, the image holds each one, the used rings name each request once). Also: GET_VRING_BASE
// before a thread took its ring, a broken ring putting the device in NEEDS_RESET, a device
// without a thread handler staying on the event loop, and threads ending with the connection.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BlockDevice,
  blockRequestHeader,
  MemoryBackend,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from "../../devices/block.ts";
import { EventFd } from "../../sys/mod.ts";
import type { QueueThreadSpec } from "../../devices/device.ts";
import { Request, u64Payload } from "../../vhost_user/protocol.ts";
import type { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { until as untilMs, withBackend } from "./_harness.ts";

const T = { timeout: 120000 };

// A thread's first pass can take seconds: under `deno test` the Worker's modules are
// type-checked when it loads, on a loaded machine.
const until = (cond: () => boolean, what: string) => untilMs(cond, what, 60000);

const DISK = 8 << 20;
const BLOCK = 4096;
const SLOTS = 24;

function tempImage(): { path: string; done(): void } {
  const dir = mkdtempSync(join(tmpdir(), "queue-threads-test-"));
  const path = join(dir, "disk.img");
  writeFileSync(path, new Uint8Array(DISK));
  return { path, done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The bytes request `n` writes: its number in every 32-bit word. */
function pattern(n: number): Uint8Array {
  const out = new Uint8Array(BLOCK);
  const v = new DataView(out.buffer);
  for (let i = 0; i < BLOCK; i += 4) v.setUint32(i, n, true);
  return out;
}

/** Fixed buffers per slot (header, data, status) in a ring's buffer area. */
interface Slots {
  header: number[];
  data: number[];
  status: number[];
}

function slots(fe: VhostUserFrontend, ring: number): Slots {
  const d = fe.ring(ring).driver;
  const s: Slots = { header: [], data: [], status: [] };
  for (let i = 0; i < SLOTS; i++) {
    s.header.push(d.alloc(16, 16));
    s.data.push(d.alloc(BLOCK, 4096));
    s.status.push(d.alloc(1, 1));
  }
  return s;
}

/** Publish a write of request `n` (to block `n`) in slot `i`; returns its head. */
function submitWrite(fe: VhostUserFrontend, ring: number, s: Slots, i: number, n: number): number {
  return fe.ring(ring).driver.addChain([
    { readable: blockRequestHeader(VIRTIO_BLK_T_OUT, n * (BLOCK / 512)), at: s.header[i] },
    { readable: pattern(n), at: s.data[i] },
    { writable: 1, at: s.status[i] },
  ]);
}

/** xorshift32. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe("vhost-user queue threads", () => {
  it("serve a two-queue block device, a thread per ring", T, async () => {
    const img = tempImage();
    const blk = new BlockDevice({ path: img.path, numQueues: 2 });
    try {
      await withBackend(blk, async (h) => {
        const fe = await h.connect({ memorySize: 4 << 20 });
        await fe.start({ queues: 2 });
        assert.deepEqual(h.backend.threadedRings(), [0, 1]);
        for (const ring of [0, 1]) {
          const s = slots(fe, ring);
          const n = 100 + ring;
          submitWrite(fe, ring, s, 0, n);
          fe.kick(ring, { force: true });
          const d = fe.ring(ring).driver;
          await until(() => d.pendingUsed() === 1, `the write on ring ${ring}`);
          assert.equal(d.takeUsed()!.written[0], VIRTIO_BLK_S_OK);
          d.addChain([
            { readable: blockRequestHeader(VIRTIO_BLK_T_IN, n * 8) },
            { writable: BLOCK },
            { writable: 1 },
          ]);
          fe.kick(ring, { force: true });
          await until(() => d.pendingUsed() === 1, `the read on ring ${ring}`);
          const used = d.takeUsed()!;
          assert.equal(used.len, BLOCK + 1);
          assert.deepEqual(used.written.subarray(0, BLOCK), pattern(n));
          assert.equal(used.written[BLOCK], VIRTIO_BLK_S_OK);
        }
        assert.equal(blk.stats.writes, 2);
        assert.equal(blk.stats.reads, 2);
        assert.deepEqual(h.errors, []);
      }, { queueThreads: true });
    } finally {
      blk.remove();
      img.done();
    }
  });

  for (const pollUs of [0, 200]) {
    it(
      "requests in flight across ring stop/start, enable, memory table and call fd changes complete exactly once" +
        (pollUs > 0 ? ` (threads polling ${pollUs} µs)` : ""),
      T,
      async () => {
        const img = tempImage();
        const blk = new BlockDevice({ path: img.path, numQueues: 2 });
        try {
          await withBackend(blk, async (h) => {
            const fe = await h.connect({ memorySize: 4 << 20 });
            await fe.start({ queues: 2 });
            const ringSlots = [slots(fe, 0), slots(fe, 1)];
            const random = rng(0x5eed);
            const rounds = 40;
            let n = 0;
            const ops = ["stop/start", "memory table", "call fd", "disable/enable"];
            for (let round = 0; round < rounds; round++) {
              const owner = [new Map<number, number>(), new Map<number, number>()];
              const ring = round % 2;
              const op = ops[Math.floor(round / 2) % ops.length];
              // The frontend's message goes while requests keep coming on both rings, a third
              // of them before, during and after it, each third kicked on its own.
              const disturb = (async () => {
                await delay(Math.floor(random() * 2));
                switch (op) {
                  case "stop/start":
                    await fe.resumeRing(ring, await fe.getVringBase(ring));
                    break;
                  case "memory table":
                    await fe.setMemTable();
                    break;
                  case "call fd":
                    await fe.request(Request.SET_VRING_CALL, u64Payload(BigInt(ring)), {
                      fds: [fe.ring(ring).call.fd],
                    });
                    break;
                  case "disable/enable":
                    await fe.setVringEnable(ring, false);
                    await fe.setVringEnable(ring, true);
                    break;
                }
              })();
              for (let third = 0; third < 3; third++) {
                for (const r of [0, 1]) {
                  for (let i = third * (SLOTS / 3); i < (third + 1) * (SLOTS / 3); i++) {
                    n++;
                    owner[r].set(submitWrite(fe, r, ringSlots[r], i, n), n);
                  }
                  fe.kick(r, { force: true });
                }
                await delay(Math.floor(random() * 2));
              }
              await disturb;
              for (const r of [0, 1]) {
                const d = fe.ring(r).driver;
                await until(() => d.pendingUsed() >= SLOTS, `round ${round} (${op}) ring ${r}`);
                const seen = new Set<number>();
                for (const u of d.takeAllUsed()) {
                  const req = owner[r].get(u.id);
                  assert.ok(req !== undefined, `round ${round}: used head ${u.id} is no request`);
                  assert.ok(!seen.has(req), `round ${round}: request ${req} completed twice`);
                  seen.add(req);
                  assert.equal(u.written[0], VIRTIO_BLK_S_OK);
                  assert.equal(u.len, 1);
                }
                assert.equal(seen.size, SLOTS, `round ${round} (${op}) ring ${r}`);
              }
            }
            // Nothing completes late, twice.
            await delay(20);
            assert.equal(fe.ring(0).driver.pendingUsed(), 0);
            assert.equal(fe.ring(1).driver.pendingUsed(), 0);
            // Each ring stops where its driver is; the threads served all of it.
            for (const ring of [0, 1]) {
              assert.equal(await fe.getVringBase(ring), fe.ring(ring).driver.availIdx);
            }
            assert.equal(blk.stats.writes, n, "every write done once");
            assert.equal(blk.stats.errors, 0);
            const disk = readFileSync(img.path);
            for (let k = 1; k <= n; k++) {
              const got = new DataView(disk.buffer, disk.byteOffset + k * BLOCK, 4).getUint32(
                0,
                true,
              );
              assert.equal(got, k, `block ${k}`);
            }
            assert.deepEqual(h.errors, []);
          }, { queueThreads: true, pollUs });
        } finally {
          blk.remove();
          img.done();
        }
      },
    );
  }

  it(
    "GET_VRING_BASE before the thread took its ring answers the base; the ring resumes there",
    T,
    async () => {
      const img = tempImage();
      const blk = new BlockDevice({ path: img.path });
      try {
        await withBackend(blk, async (h) => {
          const fe = await h.connect({ memorySize: 4 << 20 });
          await fe.start({ queues: 1 });
          const s = slots(fe, 0);
          // Requests wait in the ring; stop it at once (the thread may still be loading).
          for (let i = 0; i < 4; i++) submitWrite(fe, 0, s, i, i + 1);
          const base = await fe.getVringBase(0);
          assert.ok(base <= 4);
          await fe.resumeRing(0, base);
          const d = fe.ring(0).driver;
          await until(() => d.pendingUsed() === 4, "the writes");
          assert.equal(await fe.getVringBase(0), 4);
          assert.equal(blk.stats.writes, 4);
          assert.deepEqual(h.errors, []);
        }, { queueThreads: true });
      } finally {
        blk.remove();
        img.done();
      }
    },
  );

  it(
    "a ring broken on its thread puts the device in NEEDS_RESET: err fd signalled, threads stopped",
    T,
    async () => {
      const img = tempImage();
      const blk = new BlockDevice({ path: img.path, numQueues: 2 });
      const err = new EventFd();
      try {
        await withBackend(blk, async (h) => {
          const fe = await h.connect({ memorySize: 4 << 20 });
          await fe.start({ queues: 2 });
          await fe.request(Request.SET_VRING_ERR, u64Payload(0n), { fds: [err.fd] });
          const d = fe.ring(0).driver;
          d.setAvailIdx(d.availIdx + 300); // more than the ring holds
          fe.kick(0, { force: true });
          await until(() => h.errors.length > 0, "the error");
          await until(() => h.backend.threadedRings().length === 0, "the threads to stop");
          assert.match(String(h.errors[0].message), /AvailIdxJump/);
          assert.ok(err.read() > 0n, "err fd signalled");
          // Still answered: the ring stops where the thread left it.
          assert.equal(await fe.getVringBase(1), 0);
        }, { queueThreads: true });
      } finally {
        err.close();
        blk.remove();
        img.done();
      }
    },
  );

  it(
    "a thread that dies puts the device in NEEDS_RESET; GET_VRING_BASE still answers",
    T,
    async () => {
      const img = tempImage();
      const crash = new URL("../transport/_queue_thread_crash.ts", import.meta.url).href;
      class CrashingBlock extends BlockDevice {
        override queueThread(index: number): QueueThreadSpec | undefined {
          const spec = super.queueThread(index);
          return spec === undefined ? undefined : { ...spec, module: crash };
        }
      }
      const blk = new CrashingBlock({ path: img.path });
      const err = new EventFd();
      try {
        await withBackend(blk, async (h) => {
          const fe = await h.connect({ memorySize: 4 << 20 });
          await fe.start({ queues: 1 });
          await fe.request(Request.SET_VRING_ERR, u64Payload(0n), { fds: [err.fd] });
          submitWrite(fe, 0, slots(fe, 0), 0, 1);
          fe.kick(0, { force: true });
          await until(() => h.errors.some((e) => /queue 0 thread/.test(e.message)), "the report");
          await until(() => err.read() > 0n, "the err fd");
          assert.deepEqual(h.backend.threadedRings(), []);
          assert.equal(await fe.getVringBase(0), 0);
          assert.equal(fe.ring(0).driver.pendingUsed(), 0, "nothing served");
        }, { queueThreads: true });
      } finally {
        err.close();
        blk.remove();
        img.done();
      }
    },
  );

  it("a device without a thread handler is served on the event loop", T, async () => {
    const disk = new MemoryBackend(1 << 20);
    const blk = new BlockDevice({ backend: disk });
    await withBackend(blk, async (h) => {
      const fe = await h.connect({ memorySize: 4 << 20 });
      await fe.start({ queues: 1 });
      assert.deepEqual(h.backend.threadedRings(), []);
      const s = slots(fe, 0);
      submitWrite(fe, 0, s, 0, 7);
      fe.kick(0, { force: true });
      await until(() => fe.ring(0).driver.pendingUsed() === 1, "the write");
      assert.equal(disk.bytes[7 * BLOCK], 7);
      assert.deepEqual(h.errors, []);
    }, { queueThreads: true });
  });

  it(
    "a device reset with requests in flight ends the threads; the renegotiated device serves on new ones",
    T,
    async () => {
      const img = tempImage();
      const blk = new BlockDevice({ path: img.path, numQueues: 2 });
      try {
        await withBackend(blk, async (h) => {
          const fe = await h.connect({ memorySize: 4 << 20 });
          await fe.start({ queues: 2 });
          const s = slots(fe, 0);
          for (let i = 0; i < SLOTS; i++) submitWrite(fe, 0, s, i, i + 1);
          fe.kick(0, { force: true });
          await fe.request(Request.RESET_DEVICE);
          await fe.getFeatures(); // answered after the reset is done
          assert.deepEqual(h.backend.threadedRings(), []);
          const served = blk.stats.writes;
          assert.ok(served <= SLOTS);
          // The driver starts over: new negotiation, new rings. (The backend forgets the
          // protocol features with the device: they are given again first.)
          await fe.setProtocolFeatures(fe.protocolFeatures);
          await fe.start({ queues: 2 });
          assert.deepEqual(h.backend.threadedRings(), [0, 1]);
          submitWrite(fe, 1, slots(fe, 1), 0, 100);
          fe.kick(1, { force: true });
          await until(() => fe.ring(1).driver.pendingUsed() === 1, "the write after the reset");
          assert.equal(blk.stats.writes, served + 1);
          assert.deepEqual(h.errors, []);
        }, { queueThreads: true });
      } finally {
        blk.remove();
        img.done();
      }
    },
  );

  it("threads end with the connection; the next frontend gets new ones", T, async () => {
    const img = tempImage();
    const blk = new BlockDevice({ path: img.path });
    try {
      await withBackend(blk, async (h) => {
        for (let c = 0; c < 2; c++) {
          const fe = await h.connect({ memorySize: 4 << 20 });
          await fe.start({ queues: 1 });
          assert.deepEqual(h.backend.threadedRings(), [0]);
          submitWrite(fe, 0, slots(fe, 0), 0, 3 + c);
          fe.kick(0, { force: true });
          await until(() => fe.ring(0).driver.pendingUsed() === 1, "the write");
          await fe.close();
          await until(() => !h.backend.connected, "the disconnect");
          assert.deepEqual(h.backend.threadedRings(), []);
        }
        assert.equal(blk.stats.writes, 2);
        assert.deepEqual(h.errors, []);
      }, { queueThreads: true });
    } finally {
      blk.remove();
      img.done();
    }
  });
});
