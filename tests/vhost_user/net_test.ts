// virtio-net over vhost-user: our TypeScript frontend drives a NetDevice with a loopback
// backend as QEMU drives a vhost-user net backend.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { featureBit } from "../../devices/device.ts";
import {
  LoopbackNetBackend,
  MemoryNetBackend,
  NetDevice,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_MQ,
} from "../../devices/net.ts";
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES } from "../../vhost_user/protocol.ts";
import { VhostUserBackend } from "../../vhost_user/backend.ts";
import { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { concatBytes, ethFrame, netHeader, takeFrames } from "../../testing/net_driver.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { T, withBackend } from "./_harness.ts";

describe("virtio-net over vhost-user", () => {
  it("loops frames back through the rings, as the guest of a QEMU would see", T, async () => {
    const net = new NetDevice({ backend: new LoopbackNetBackend(), queuePairs: 2 });
    await withBackend(net, async (h) => {
      const fe = await h.connect({ memorySize: 8 << 20 });
      const r = await fe.start({ queueSize: 64 });
      assert.equal(r.queueNum, 5); // two pairs and the control queue
      const rx = fe.ring(0).driver;
      for (let i = 0; i < 16; i++) rx.addChain([{ writable: 2048 }]);
      fe.kick(0, { force: true });
      const frames = [1, 2, 3].map((v) => ethFrame({ payload: new Uint8Array(300).fill(v) }));
      for (const f of frames) {
        fe.ring(1).driver.addChain([{ readable: concatBytes(netHeader(), f) }]);
      }
      fe.kick(1, { force: true });
      const got: Uint8Array[] = [];
      while (got.length < 3) {
        assert.ok(await fe.waitCall(0, 5000), "no receive interrupt");
        for (const f of takeFrames(rx)) got.push(f.frame);
      }
      assert.deepEqual(got, frames);
      assert.equal(fe.ring(1).driver.takeAllUsed().length, 3);
      assert.deepEqual(h.errors, []);
    });
  });

  it(
    "takes SET_VRING_ENABLE before SET_FEATURES once protocol features are set, as QEMU sends it",
    T,
    async () => {
      const net = new NetDevice({ backend: new MemoryNetBackend() });
      await withBackend(net, async (h) => {
        const fe = await h.connect();
        await fe.setOwner();
        const offered = await fe.getFeatures();
        assert.ok((offered & featureBit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n);
        await fe.setProtocolFeatures(
          featureBit(ProtocolFeature.MQ) | featureBit(ProtocolFeature.REPLY_ACK),
        );
        await fe.setVringEnable(0, true);
        await fe.setVringEnable(1, true);
        assert.ok(h.backend.connected);
        assert.deepEqual(h.errors, []);
      });
    },
  );

  it(
    "uses every enabled pair for receiving when MQ is acked without the control queue",
    T,
    async () => {
      const backend = new MemoryNetBackend();
      const net = new NetDevice({ backend, queuePairs: 2, mac: "02:00:00:00:00:01" });
      await withBackend(net, async (h) => {
        const fe = await h.connect({ memorySize: 8 << 20 });
        const offered = await fe.getFeatures();
        // QEMU acks MQ for the backend but keeps the control queue to itself.
        await fe.start({
          queues: 4,
          queueSize: 32,
          features: offered & ~featureBit(VIRTIO_NET_F_CTRL_VQ),
        });
        assert.ok((fe.features & featureBit(VIRTIO_NET_F_MQ)) !== 0n);
        assert.deepEqual(net.activeQueuePairs, [0, 1]);
        await fe.setVringEnable(2, false);
        assert.deepEqual(net.activeQueuePairs, [0]);
        await fe.setVringEnable(2, true);
        assert.deepEqual(net.activeQueuePairs, [0, 1]);
      });
    },
  );

  it(
    "sends what the driver queued while the rings were stopped, once they restart",
    T,
    async () => {
      const backend = new MemoryNetBackend();
      const net = new NetDevice({ backend });
      await withBackend(net, async (h) => {
        const fe = await h.connect({ memorySize: 8 << 20 });
        await fe.start({ queueSize: 32 });
        const tx = fe.ring(1).driver;
        tx.addChain([{ readable: concatBytes(netHeader(), ethFrame()) }]);
        fe.kick(1, { force: true });
        await fe.waitCall(1, 5000);
        assert.equal(backend.takeSent().length, 1);
        // Link down in QEMU: both rings stop. The driver queues a frame; its kick goes nowhere.
        await fe.getVringBase(0);
        await fe.getVringBase(1);
        tx.addChain([{ readable: concatBytes(netHeader(), ethFrame()) }]);
        // Link up: both rings restart in the same turn, and nobody kicks.
        await fe.resumeRing(0);
        await fe.resumeRing(1);
        assert.ok(await fe.waitCall(1, 5000), "the queued frame was never sent");
        assert.equal(backend.takeSent().length, 1);
      });
    },
  );

  it("QEMU's link-up order: enable, then reprogram the stopped rings", T, async () => {
    const net = new NetDevice({ backend: new MemoryNetBackend() });
    await withBackend(net, async (h) => {
      const fe = await h.connect({ memorySize: 8 << 20 });
      const r = await fe.start({ queueSize: 32 });
      await fe.getVringBase(0);
      await fe.getVringBase(1);
      // Enabling does not restart a stopped ring; reprogramming it (SET_VRING_NUM first) does.
      await fe.setVringEnable(0, true);
      await fe.setVringEnable(1, true);
      await fe.setFeatures(r.features);
      await fe.resumeRing(0);
      await fe.resumeRing(1);
      assert.ok(h.backend.connected);
      assert.ok(h.backend.active);
      assert.deepEqual(h.errors, []);
    });
  });

  it(
    "frames that waited while the receive ring was stopped land after the used index",
    T,
    async () => {
      const backend = new MemoryNetBackend();
      const net = new NetDevice({ backend, mac: "02:00:00:00:00:01" });
      await withBackend(net, async (h) => {
        const fe = await h.connect({ memorySize: 8 << 20 });
        await fe.start({ queueSize: 32 });
        const rx = fe.ring(0).driver;
        for (let i = 0; i < 8; i++) rx.addChain([{ writable: 2048 }]);
        fe.kick(0, { force: true });
        const frame = (v: number) => ethFrame({ payload: new Uint8Array(60).fill(v) });
        const hdr = netHeader();
        for (const v of [1, 2, 3]) backend.inject(concatBytes(hdr, frame(v)));
        assert.deepEqual(takeFrames(rx).map((f) => f.frame[14]), [1, 2, 3]);
        // The ring stops (QEMU's link down); frames wait in the device's backlog.
        await fe.getVringBase(0);
        for (const v of [4, 5]) backend.inject(concatBytes(hdr, frame(v)));
        assert.equal(net.backlogFrames, 2);
        // It restarts: the backlog goes in at used index 3, not over the first entries.
        await fe.resumeRing(0);
        assert.equal(rx.usedIdx(), 5);
        assert.deepEqual(takeFrames(rx).map((f) => f.frame[14]), [4, 5]);
      });
    },
  );

  it("the CLI's net backend does not offer CONFIG to QEMU", T, async () => {
    const dir = mkdtempSync(join(tmpdir(), "vt-net-vu-"));
    const backend = new VhostUserBackend(new NetDevice({ backend: new MemoryNetBackend() }), {
      socketPath: join(dir, "s"),
      configSpace: false,
      onError: () => {},
    });
    backend.listen();
    const fe = await VhostUserFrontend.connect(join(dir, "s"));
    try {
      await fe.setOwner();
      await fe.getFeatures();
      const p = await fe.getProtocolFeatures();
      assert.equal(p & featureBit(ProtocolFeature.CONFIG), 0n);
      assert.ok((p & featureBit(ProtocolFeature.MQ)) !== 0n);
    } finally {
      await fe.close();
      await backend.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
