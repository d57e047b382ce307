import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  configPayload,
  FRONTEND_VA_BASE,
  memTablePayload,
  VhostUserFrontend,
  vringAddrPayload,
} from "../../testing/vhost_user_frontend.ts";
import {
  FLAG_REPLY,
  Payload,
  ProtocolFeature,
  Request,
  VERSION,
  VhostUserError,
} from "../../vhost_user/protocol.ts";
import { RngDevice } from "../../devices/rng.ts";
import { featureBit } from "../../devices/device.ts";
import { SysError } from "../../sys/mod.ts";
import { delay, readEntropy, T, until, withBackend } from "./_harness.ts";

describe("VhostUserFrontend", () => {
  it("encodes SET_VRING_ADDR, SET_MEM_TABLE and config payloads little-endian", () => {
    const addr = vringAddrPayload({
      index: 2,
      flags: 1,
      desc: 0x10n,
      used: 0x20n,
      avail: 0x30n,
      log: 0x40n,
    });
    const a = new DataView(addr.buffer);
    assert.deepEqual(
      [
        a.getUint32(0, true),
        a.getUint32(4, true),
        a.getBigUint64(8, true),
        a.getBigUint64(16, true),
      ],
      [2, 1, 0x10n, 0x20n],
    );
    assert.deepEqual([a.getBigUint64(24, true), a.getBigUint64(32, true)], [0x30n, 0x40n]);
    const table = memTablePayload([
      { guestAddr: 0x1000, size: 0x2000, userAddr: FRONTEND_VA_BASE, mmapOffset: 0x3000 },
    ]);
    const m = new DataView(table.buffer);
    assert.equal(table.length, 40);
    assert.deepEqual(
      [m.getUint32(0, true), m.getBigUint64(8, true), m.getBigUint64(16, true)],
      [1, 0x1000n, 0x2000n],
    );
    assert.deepEqual([m.getBigUint64(24, true), m.getBigUint64(32, true)], [
      FRONTEND_VA_BASE,
      0x3000n,
    ]);
    const config = configPayload(4, new Uint8Array([7, 8]), 1);
    assert.deepEqual(config, new Uint8Array([4, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 7, 8]));
  });

  it("rejects a socket path nobody listens on", T, async () => {
    await assert.rejects(
      VhostUserFrontend.connect("/nonexistent/virtio-ts.sock"),
      (e: unknown) => e instanceof SysError,
    );
  });

  it("shares its guest memory with the backend under a fake frontend address", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect({ memorySize: 1 << 20 });
      assert.equal(fe.memory.totalSize, 1 << 20);
      assert.equal(fe.userAddr(0x1234), FRONTEND_VA_BASE + 0x1234n);
      const result = await fe.start({ memorySize: 2 << 20, queueSize: 64 });
      assert.equal(fe.memory.totalSize, 2 << 20);
      assert.equal(fe.features, result.features);
      assert.equal(fe.protocolFeatures, result.protocolFeatures);
      const { driver } = fe.ring(0);
      assert.equal(driver.size, 64);
      // The backend wrote the entropy straight into the memfd this frontend mapped.
      const head = driver.addChain([{ writable: 256 }]);
      fe.kick(0);
      assert.ok(await fe.waitCall(0, 5000));
      const used = driver.takeUsed()!;
      assert.equal(used.id, head);
      assert.ok(new Set(used.written).size > 1);
    });
  });

  it("gets a u64 0 reply for NEED_REPLY once REPLY_ACK is negotiated", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      const result = await fe.start();
      assert.notEqual(result.protocolFeatures & featureBit(ProtocolFeature.REPLY_ACK), 0n);
      const reply = await fe.request(Request.SET_OWNER, undefined, { needReply: true });
      assert.ok(reply !== undefined);
      assert.equal(reply.request, Request.SET_OWNER);
      assert.equal(reply.flags, VERSION | FLAG_REPLY);
      assert.equal(Payload.u64(reply), 0n);
      // Requests with a reply of their own get only that reply.
      const features = await fe.request(Request.GET_FEATURES, undefined, { needReply: true });
      assert.equal(Payload.u64(features!) & result.features, result.features);
      assert.equal(await fe.getQueueNum(), 1);
      assert.deepEqual(h.errors, []);
    });
  });

  it("gets no ack for NEED_REPLY without REPLY_ACK", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      const result = await fe.start({ protocolFeatures: featureBit(ProtocolFeature.MQ) });
      assert.equal(result.protocolFeatures, featureBit(ProtocolFeature.MQ));
      assert.equal(await fe.request(Request.SET_OWNER, undefined, { needReply: true }), undefined);
      // A stray ack would be taken as the reply to GET_QUEUE_NUM and rejected.
      assert.equal(await fe.getQueueNum(), 1);
      await readEntropy(fe, [64]);
      assert.deepEqual(h.errors, []);
    });
  });

  it("works without protocol features acked: rings start on SET_VRING_KICK", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect({ replyAck: false });
      await fe.setOwner();
      const offered = await fe.getFeatures();
      // Without protocol features; split rings (bit 34 is the packed layout).
      await fe.setFeatures(offered & ~(1n << 30n) & ~(1n << 34n));
      await fe.setMemTable();
      await fe.setupRing(0);
      await readEntropy(fe, [32, 32]);
      assert.equal(h.backend.active, true);
      assert.deepEqual(h.errors, []);
    });
  });

  it("waitDisconnect() times out while the backend keeps the connection", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      await fe.start();
      assert.equal(await fe.waitDisconnect(50), false);
      await readEntropy(fe, [64]);
    });
  });

  it("close() is idempotent and later requests reject", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      await fe.start();
      await fe.close();
      await fe.close();
      assert.equal(fe.closed, true);
      await assert.rejects(fe.getFeatures(), VhostUserError);
      await until(() => !h.backend.connected, "the backend to see the disconnect");
    });
  });

  it("close() ends a wait for a reply that never comes", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect();
      await fe.setOwner();
      // SET_OWNER has no reply: waiting for one only ends with close().
      const pending = fe.request(Request.SET_OWNER, undefined, { expectReply: true });
      await delay(50);
      await fe.close();
      await assert.rejects(pending, /frontend is closed/);
      assert.deepEqual(h.errors, []);
    });
  });

  it("a reply timeout rejects the request", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect({ timeoutMs: 50 });
      await assert.rejects(
        fe.request(Request.SET_OWNER, undefined, { expectReply: true }),
        /no reply within 50 ms/,
      );
      assert.deepEqual(h.errors, []);
    });
  });
});
