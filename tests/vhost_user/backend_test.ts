import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { FrontendRing } from "../../testing/vhost_user_frontend.ts";
import { ProtocolFeature, VhostUserError } from "../../vhost_user/protocol.ts";
import { RngDevice } from "../../devices/rng.ts";
import {
  featureBit,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  VirtioDeviceInfo,
} from "../../devices/device.ts";
import { VIRTIO_F_EVENT_IDX } from "../../queue/split.ts";
import { readEntropy, T, until, withBackend } from "./_harness.ts";
import { AF_UNIX, close, connect, SOCK_CLOEXEC, SOCK_STREAM, socket } from "../../sys/mod.ts";

/** A device with a config space, writable from 8 on, and `queues` queues that do nothing. */
class ConfigDevice extends VirtioDeviceBase {
  constructor(queues = 1) {
    const config = new Uint8Array(16).map((_, i) => i + 1);
    super(
      0x7e,
      new VirtioDeviceInfo(
        "config-test",
        featureBit(VIRTIO_F_VERSION_1),
        new Array(queues).fill(256),
        config,
      ),
    );
  }
  processQueue(_index: number): void {}
  override writeConfig(offset: number, data: Uint8Array): void {
    if (offset < 8) super.writeConfig(offset, data);
    this.info.writeConfig(offset, data);
  }
}

describe("VhostUserBackend serving an RngDevice to VhostUserFrontend", () => {
  it("negotiates like QEMU and serves entropy of several sizes through the ring", T, async () => {
    // Above the default 64 KiB per request, so the 70000-byte buffer is filled whole.
    const rng = new RngDevice({ maxBytesPerRequest: 1 << 20 });
    await withBackend(rng, async (h) => {
      const fe = await h.connect();
      const result = await fe.start();
      assert.equal(result.queueNum, 1);
      assert.deepEqual(result.rings, [0]);
      assert.equal(h.backend.ackedFeatures, result.features);
      assert.ok(h.backend.active);
      const sizes = [1, 16, 100, 4096, 70000];
      const got = await readEntropy(fe, sizes);
      assert.notDeepEqual(got[1], (await readEntropy(fe, [16]))[0]);
      // A chain of several writable buffers, and one in an indirect table.
      const { driver } = fe.ring(0);
      driver.addChain([{ readable: new Uint8Array(8) }, { writable: 10 }, { writable: 30 }]);
      driver.addChain([{ writable: 24 }, { writable: 40 }], { indirect: true });
      fe.kick(0);
      while (driver.pendingUsed() < 2) assert.ok(await fe.waitCall(0, 5000));
      assert.deepEqual(driver.takeAllUsed().map((u) => u.len), [40, 64]);
      assert.equal(rng.requestsServed, sizes.length + 3);
      assert.deepEqual(h.errors, []);
    });
  });

  it("serves with VIRTIO_F_EVENT_IDX off", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      const all = (1n << 64n) - 1n;
      const result = await fe.start({ features: all & ~featureBit(VIRTIO_F_EVENT_IDX) });
      assert.equal(result.features & featureBit(VIRTIO_F_EVENT_IDX), 0n);
      assert.equal(fe.ring(0).driver.eventIdx, false);
      for (let i = 0; i < 20; i++) await readEntropy(fe, [32, 64, 8]);
      assert.deepEqual(h.errors, []);
    });
  });

  it("serves with VIRTIO_F_EVENT_IDX on and honours used_event", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      const result = await fe.start();
      assert.notEqual(result.features & featureBit(VIRTIO_F_EVENT_IDX), 0n);
      const { driver } = fe.ring(0);
      assert.equal(driver.eventIdx, true);
      for (let i = 0; i < 20; i++) await readEntropy(fe, [32, 64, 8]);
      // Ask for a call only once used.idx passes the next entry: the first request is
      // served silently, the second one calls.
      driver.autoUsedEvent = false;
      const start = driver.usedIdx();
      driver.setUsedEvent(start + 1);
      driver.addChain([{ writable: 16 }]);
      fe.kick(0);
      await until(() => driver.usedIdx() === ((start + 1) & 0xffff), "the first request");
      assert.equal(await fe.waitCall(0, 200), false);
      driver.addChain([{ writable: 16 }]);
      fe.kick(0);
      assert.equal(await fe.waitCall(0, 5000), true);
      assert.equal(driver.takeAllUsed().length, 2);
      assert.deepEqual(h.errors, []);
    });
  });

  it("GET_VRING_BASE stops the ring; SET_VRING_BASE restarts it where it stopped", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      await fe.start();
      await readEntropy(fe, [64, 64, 64]);
      assert.equal(await fe.getVringBase(0), 3);
      const ring = fe.ring(0);
      const head = ring.driver.addChain([{ writable: 32 }]);
      assert.equal(fe.kick(0, { force: true }), true);
      assert.equal(await fe.waitCall(0, 300), false);
      assert.equal(ring.driver.pendingUsed(), 0);
      // Still stopped: the base has not moved.
      assert.equal(await fe.getVringBase(0), 3);
      await fe.resumeRing(0, 3);
      assert.ok(await fe.waitCall(0, 5000));
      const used = ring.driver.takeUsed();
      assert.equal(used?.id, head);
      assert.equal(used?.len, 32);
      await readEntropy(fe, [10, 20]);
      assert.equal(await fe.getVringBase(0), 6);
      assert.deepEqual(h.errors, []);
    });
  });

  it("restarts a ring at a base near the 16-bit wrap and serves across it", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      await fe.start({ queueSize: 16 });
      assert.equal(await fe.getVringBase(0), 0);
      const { driver } = fe.ring(0);
      const base = 0xfffa;
      driver.setAvailIdx(base);
      driver.setLastUsed(base);
      driver.setUsedEvent(base);
      fe.memory.writeU16(driver.usedRing + 2, base);
      await fe.resumeRing(0, base);
      for (let i = 0; i < 6; i++) await readEntropy(fe, [16, 16]);
      assert.equal(driver.usedIdx(), (base + 12) & 0xffff);
      assert.equal(await fe.getVringBase(0), (base + 12) & 0xffff);
      assert.deepEqual(h.errors, []);
    });
  });

  it("serves a new frontend after the previous one closed", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      for (let i = 1; i <= 3; i++) {
        const fe = await h.connect();
        await fe.start();
        await readEntropy(fe, [128]);
        await fe.close();
        await until(() => !h.backend.connected, "the backend to see the disconnect");
        assert.equal(h.backend.active, false);
        assert.equal(h.backend.connections, i);
      }
      assert.deepEqual(h.errors, []);
    });
  });

  it("accepts a frontend that reconnects before its hang-up was seen", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const first = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
      connect(first, h.path);
      await until(() => h.backend.connected, "the backend to accept the first frontend");
      // Connect again, then hang up the old connection, without yielding in between
      // (VhostUserFrontend.connect connects before its first await): when the backend accepts
      // the new connection the old one is already at end of file, and the new frontend must
      // not be refused (the race of a frontend process that reconnects quickly).
      const pending = h.connect();
      close(first);
      const second = await pending;
      await second.start();
      await readEntropy(second, [128]);
      assert.equal(h.backend.connections, 2);
      assert.deepEqual(h.errors, []);
      await second.close();
    });
  });

  it("refuses a second frontend while one is connected", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const first = await h.connect();
      await first.start();
      const second = await h.connect();
      assert.equal(await second.waitDisconnect(5000), true);
      assert.equal(h.errors.length, 1);
      assert.ok(h.errors[0] instanceof VhostUserError);
      assert.equal((h.errors[0] as VhostUserError).code, "OutOfOrder");
      await readEntropy(first, [256]);
      assert.equal(h.backend.connections, 1);
    });
  });

  it("refuses a burst of extra frontends (more than the listen backlog)", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const first = await h.connect();
      await first.start();
      const extra = await Promise.all(Array.from({ length: 10 }, () => h.connect()));
      for (const fe of extra) assert.equal(await fe.waitDisconnect(5000), true);
      assert.equal(h.errors.length, 10);
      await readEntropy(first, [256]);
      assert.equal(h.backend.connections, 1);
    });
  });

  it("lays out each ring at its own addresses (GET_QUEUE_NUM of a 3-queue device)", T, async () => {
    await withBackend(new ConfigDevice(3), async (h) => {
      const fe = await h.connect();
      const result = await fe.start({ queueSize: 8 });
      assert.equal(result.queueNum, 3);
      assert.equal(await fe.getQueueNum(), 3);
      const rings: FrontendRing[] = result.rings.map((i) => fe.ring(i));
      const spans = rings.map((r) => [r.driver.descTable, r.driver.usedRing]).sort((a, b) =>
        a[0] - b[0]
      );
      for (let i = 1; i < spans.length; i++) assert.ok(spans[i][0] > spans[i - 1][1]);
      assert.ok(h.backend.active);
      assert.deepEqual(h.errors, []);
    });
  });
});

describe("VhostUserBackend config space (GET_CONFIG / SET_CONFIG)", () => {
  it("reads and writes a device's config space", T, async () => {
    await withBackend(new ConfigDevice(), async (h) => {
      const fe = await h.connect();
      const result = await fe.start();
      assert.notEqual(result.protocolFeatures & featureBit(ProtocolFeature.CONFIG), 0n);
      assert.deepEqual(await fe.getConfig(0, 16), new Uint8Array(16).map((_, i) => i + 1));
      assert.deepEqual(await fe.getConfig(4, 4), new Uint8Array([5, 6, 7, 8]));
      await fe.setConfig(10, new Uint8Array([0xaa, 0xbb]));
      assert.deepEqual(await fe.getConfig(8, 4), new Uint8Array([9, 10, 0xaa, 0xbb]));
      assert.deepEqual(h.errors, []);
    });
  });

  it(
    "drops the connection for an access outside the config space, then serves the next",
    T,
    async () => {
      await withBackend(new ConfigDevice(), async (h) => {
        const fe = await h.connect();
        await fe.start();
        await assert.rejects(fe.getConfig(12, 8), (e: unknown) => e instanceof VhostUserError);
        assert.equal(fe.peerClosed, true);
        assert.equal((h.errors[0] as VhostUserError).code, "InvalidValue");
        await until(() => !h.backend.connected, "the disconnect");
        const next = await h.connect();
        await next.start();
        assert.deepEqual(await next.getConfig(0, 2), new Uint8Array([1, 2]));
      });
    },
  );

  it("drops the connection for a write to a read-only part", T, async () => {
    await withBackend(new ConfigDevice(), async (h) => {
      const fe = await h.connect();
      await fe.start();
      await assert.rejects(fe.setConfig(0, new Uint8Array([1])), VhostUserError);
      assert.equal((h.errors[0] as VhostUserError).code, "InvalidValue");
    });
  });

  it("the rng has an empty config space: GET_CONFIG drops the connection", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      const result = await fe.start();
      // No config space: CONFIG is not offered, and GET_CONFIG sent anyway fails.
      assert.equal(result.protocolFeatures & featureBit(ProtocolFeature.CONFIG), 0n);
      assert.deepEqual(await fe.getConfig(0, 0), new Uint8Array(0));
      await assert.rejects(fe.getConfig(0, 4), /closed the connection/);
      assert.equal(h.errors.length, 1);
      assert.equal((h.errors[0] as VhostUserError).code, "InvalidValue");
      await until(() => !h.backend.connected, "the disconnect");
      const next = await h.connect();
      await next.start();
      await readEntropy(next, [64]);
    });
  });
});
