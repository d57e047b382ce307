// Stopping and restarting rings (what QEMU does around a VM pause, resume or migration) is not
// a device reset: what the driver chose stays chosen. The case that mattered: a block driver
// that switched the disk to writethrough (CONFIG_WCE) must not find it back in writeback after
// GET_VRING_BASE and a restart, or FLUSH-less writes would silently stop being durable.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  BlockConfigOffset,
  BlockDevice,
  blockRequestHeader,
  MemoryBackend,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_OUT,
} from "../../devices/block.ts";
import { T, withBackend } from "./_harness.ts";
import { BackendRequest, ProtocolFeature, type VhostUserError } from "../../vhost_user/protocol.ts";
import type { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";

/** Write one sector through ring 0 and wait for its completion; returns the status byte. */
async function writeSector(fe: VhostUserFrontend, sector: number, fill: number): Promise<number> {
  const { driver } = fe.ring(0);
  driver.addChain([
    { readable: blockRequestHeader(VIRTIO_BLK_T_OUT, sector) },
    { readable: new Uint8Array(512).fill(fill) },
    { writable: 1 },
  ]);
  fe.kick(0, { force: true });
  while (driver.pendingUsed() === 0) {
    assert.ok(await fe.waitCall(0, 5000), "no completion");
  }
  const used = driver.takeUsed()!;
  return used.written[0];
}

describe("vhost-user ring restart", () => {
  it("writethrough chosen by the driver survives GET_VRING_BASE and a restart", T, async () => {
    const disk = new MemoryBackend(1 << 20);
    const blk = new BlockDevice({ backend: disk });
    await withBackend(blk, async (h) => {
      const fe = await h.connect();
      const { features } = await fe.start();
      // The driver switches the cache mode to writethrough.
      await fe.setConfig(BlockConfigOffset.writeback, new Uint8Array([0]));
      assert.equal(blk.writethrough, true);
      assert.equal(await writeSector(fe, 1, 0x11), VIRTIO_BLK_S_OK);
      const flushes = disk.flushes;
      assert.ok(flushes >= 1, "a writethrough write is flushed");

      // VM pause: QEMU stops the ring, then on resume sends its features again and restarts it.
      const base = await fe.getVringBase(0);
      await fe.setFeatures(features);
      await fe.resumeRing(0, base);
      assert.equal(blk.writethrough, true, "still writethrough after the restart");
      assert.deepEqual(await fe.getConfig(BlockConfigOffset.writeback, 1), new Uint8Array([0]));
      assert.equal(await writeSector(fe, 2, 0x22), VIRTIO_BLK_S_OK);
      assert.ok(disk.flushes > flushes, "the write after the restart is flushed too");
      assert.equal(disk.bytes[2 * 512], 0x22);

      // Disabling and re-enabling the ring is no reset either.
      await fe.setVringEnable(0, false);
      await fe.setVringEnable(0, true);
      assert.equal(blk.writethrough, true);
      assert.deepEqual(h.errors, []);
    });
  });

  it("a new memory table keeps the negotiated state and the rings serve on", T, async () => {
    const disk = new MemoryBackend(1 << 20);
    const blk = new BlockDevice({ backend: disk });
    await withBackend(blk, async (h) => {
      const fe = await h.connect();
      await fe.start();
      await fe.setConfig(BlockConfigOffset.writeback, new Uint8Array([0]));
      await fe.setMemTable();
      assert.equal(blk.writethrough, true);
      assert.equal(await writeSector(fe, 3, 0x33), VIRTIO_BLK_S_OK);
      assert.equal(disk.bytes[3 * 512], 0x33);
      assert.deepEqual(h.errors, []);
    });
  });

  it("a frontend that negotiates other features resets the device", T, async () => {
    const blk = new BlockDevice({ backend: new MemoryBackend(1 << 20) });
    await withBackend(blk, async (h) => {
      const fe = await h.connect();
      const { features } = await fe.start();
      await fe.setConfig(BlockConfigOffset.writeback, new Uint8Array([0]));
      // Another driver (e.g. after a guest reboot) with fewer features: back to the default.
      await fe.getVringBase(0);
      await fe.setFeatures(features & ~(1n << 29n)); // without VIRTIO_F_EVENT_IDX
      assert.deepEqual(await fe.getConfig(BlockConfigOffset.writeback, 1), new Uint8Array([1]));
      assert.deepEqual(h.errors, []);
    });
  });
});

describe("vhost-user backend request channel", () => {
  it("a capacity change reaches the frontend as CONFIG_CHANGE_MSG", T, async () => {
    const disk = new MemoryBackend(1 << 20);
    const blk = new BlockDevice({ backend: disk });
    await withBackend(blk, async (h) => {
      const fe = await h.connect();
      const { protocolFeatures } = await fe.start();
      assert.notEqual(protocolFeatures & (1n << BigInt(ProtocolFeature.BACKEND_REQ)), 0n);
      assert.equal(await fe.nextBackendMessage(50), null, "nothing before a change");
      // The image grows under the device (a resize on the host).
      Object.defineProperty(disk, "size", { value: 2 << 20 });
      blk.updateCapacity();
      const msg = await fe.nextBackendMessage(5000);
      assert.equal(msg?.request, BackendRequest.CONFIG_CHANGE_MSG);
      // The frontend then reads the new capacity.
      const cap = new DataView((await fe.getConfig(BlockConfigOffset.capacity, 8)).buffer);
      assert.equal(cap.getUint32(0, true), (2 << 20) / 512);
      assert.deepEqual(h.errors, []);
    });
  });

  it("a backend request channel needs BACKEND_REQ", T, async () => {
    const blk = new BlockDevice({ backend: new MemoryBackend(1 << 20) });
    await withBackend(blk, async (h) => {
      const fe = await h.connect();
      await fe.start({ protocolFeatures: 0n });
      await fe.setBackendReqFd();
      assert.equal(await fe.waitDisconnect(5000), true);
      assert.equal((h.errors[0] as VhostUserError).code, "OutOfOrder");
    });
  });
});
