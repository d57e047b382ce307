// Many devices in one process (VhostUserBackendSet): two block devices, each with its own
// frontend. Whatever one frontend does — garbage on the socket, a memory table that cannot be
// mapped, a ring that breaks its device, a disconnect with requests in flight, the device
// unplugged — the other device keeps serving correct I/O, and only the first one's id shows up
// in the errors.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
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
import { DEVICE_NEEDS_RESET } from "../../devices/constants.ts";
import { serveMany, VhostUserBackendSet } from "../../vhost_user/backend_set.ts";
import { Request, VhostUserError } from "../../vhost_user/protocol.ts";
import { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { T, until } from "./_harness.ts";

const SECTOR = 512;

interface Rig {
  set: VhostUserBackendSet;
  disks: Record<"a" | "b", MemoryBackend>;
  errors: { id: string; err: Error }[];
  connect(id: "a" | "b"): Promise<VhostUserFrontend>;
}

/** A set serving block devices "a" and "b" on their own sockets. */
async function withTwo(fn: (rig: Rig) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "vt-set-"));
  const disks = { a: new MemoryBackend(1 << 20), b: new MemoryBackend(1 << 20) };
  const errors: { id: string; err: Error }[] = [];
  const set = serveMany(
    (["a", "b"] as const).map((id) => ({
      id,
      device: new BlockDevice({ backend: disks[id] }),
      socketPath: join(dir, `${id}.sock`),
    })),
    { onError: (id, err) => errors.push({ id, err }) },
  );
  const frontends: VhostUserFrontend[] = [];
  try {
    await fn({
      set,
      disks,
      errors,
      connect: async (id) => {
        const fe = await VhostUserFrontend.connect(join(dir, `${id}.sock`));
        frontends.push(fe);
        return fe;
      },
    });
  } finally {
    for (const fe of frontends) await fe.close();
    await set.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One request through ring 0; returns the status byte and what the device wrote. */
async function request(
  fe: VhostUserFrontend,
  type: number,
  sector: number,
  data: Uint8Array | number,
): Promise<{ status: number; written: Uint8Array }> {
  const { driver } = fe.ring(0);
  driver.addChain([
    { readable: blockRequestHeader(type, sector) },
    typeof data === "number" ? { writable: data } : { readable: data },
    { writable: 1 },
  ]);
  fe.kick(0, { force: true });
  while (driver.pendingUsed() === 0) {
    assert.ok(await fe.waitCall(0, 5000), "no completion");
  }
  const { written } = driver.takeUsed()!;
  return { status: written[written.length - 1], written: written.subarray(0, -1) };
}

/** Write a sector of `fill`, read it back, and check the device's disk holds it. */
async function roundTrip(fe: VhostUserFrontend, disk: MemoryBackend, sector: number, fill: number) {
  const data = new Uint8Array(SECTOR).fill(fill);
  assert.equal((await request(fe, VIRTIO_BLK_T_OUT, sector, data)).status, VIRTIO_BLK_S_OK);
  const back = await request(fe, VIRTIO_BLK_T_IN, sector, SECTOR);
  assert.equal(back.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(back.written, data);
  assert.deepEqual(disk.bytes.subarray(sector * SECTOR, (sector + 1) * SECTOR), data);
}

/**
 * Start both, let `misbehave` loose on a's frontend, and check that b served throughout and
 * afterwards, that the errors are a's only, and that a serves a new frontend.
 */
async function isolated(
  misbehave: (fe: VhostUserFrontend, rig: Rig) => Promise<void>,
  expectError: RegExp | null,
): Promise<void> {
  await withTwo(async (rig) => {
    const a = await rig.connect("a");
    const b = await rig.connect("b");
    await a.start();
    await b.start();
    await roundTrip(b, rig.disks.b, 1, 0xb1);
    await misbehave(a, rig);
    await roundTrip(b, rig.disks.b, 2, 0xb2);
    if (expectError !== null) {
      await until(() => rig.errors.length > 0, "a's error");
      assert.ok(rig.errors.every((e) => e.id === "a"), rig.errors.map((e) => e.id).join());
      assert.match(rig.errors.map((e) => e.err.message).join("; "), expectError);
    } else {
      assert.deepEqual(rig.errors, []);
    }
    const backendB = rig.set.get("b")!;
    assert.equal(backendB.connected, true);
    assert.equal(backendB.connections, 1);
    assert.equal(backendB.core.status & DEVICE_NEEDS_RESET, 0);
    // a is back for the next frontend, b still serves.
    await until(() => !rig.set.get("a")!.connected || rig.set.get("a")!.active, "a to settle");
    if (!rig.set.get("a")!.connected) {
      const again = await rig.connect("a");
      await again.start();
      await roundTrip(again, rig.disks.a, 3, 0xa3);
    }
    await roundTrip(b, rig.disks.b, 4, 0xb4);
    assert.equal(rig.disks.a.bytes[SECTOR], 0, "b's writes never reach a's disk");
  });
}

describe("VhostUserBackendSet: one device's trouble never reaches another", () => {
  it("garbage on one socket drops that connection only", T, async () => {
    await isolated(async (fe) => {
      // A header with a bad version: the stream cannot be read any further.
      await fe.request(Request.GET_FEATURES, undefined, { flags: 0x2, expectReply: false });
      assert.equal(await fe.waitDisconnect(5000), true);
    }, /version/);
  });

  it("a memory table past the end of its memfd drops that connection only", T, async () => {
    await isolated(async (fe) => {
      const size = fe.memory.totalSize;
      await assert.rejects(
        fe.setMemTable([{ guestAddr: 0, size: size * 2, userAddr: fe.userAddr(0), mmapOffset: 0 }]),
        (err: unknown) => err instanceof VhostUserError,
      );
      assert.equal(await fe.waitDisconnect(5000), true);
    }, /past the end of its file/);
  });

  it("a frontend that goes away with requests in flight", T, async () => {
    await isolated(async (fe) => {
      const { driver } = fe.ring(0);
      for (let i = 0; i < 16; i++) {
        driver.addChain([
          { readable: blockRequestHeader(VIRTIO_BLK_T_OUT, 8 + i) },
          { readable: new Uint8Array(SECTOR).fill(0xa0) },
          { writable: 1 },
        ]);
      }
      fe.kick(0, { force: true });
      await fe.close();
    }, null);
  });

  it("a ring that breaks its device: that device needs a reset, the other serves", T, async () => {
    await isolated(async (fe, rig) => {
      // The driver claims far more available entries than the ring holds (virtio 1.2 §2.7.13.3).
      const { driver } = fe.ring(0);
      driver.setAvailIdx(driver.availIdx + driver.size + 1);
      fe.kick(0, { force: true });
      const a = rig.set.get("a")!;
      await until(() => (a.core.status & DEVICE_NEEDS_RESET) !== 0, "a to need a reset");
      assert.equal(a.connected, true, "the connection stays");
    }, /.+/);
  });

  it("a device unplugged from the set leaves the other serving", T, async () => {
    await withTwo(async (rig) => {
      const a = await rig.connect("a");
      const b = await rig.connect("b");
      await a.start();
      await b.start();
      const socketA = rig.set.get("a")!.socketPath;
      assert.equal(await rig.set.remove("a"), true);
      assert.equal(await rig.set.remove("a"), false);
      assert.equal(await a.waitDisconnect(5000), true);
      assert.equal(existsSync(socketA), false);
      assert.deepEqual(rig.set.ids, ["b"]);
      await roundTrip(b, rig.disks.b, 5, 0xb5);
      assert.deepEqual(rig.errors, []);
    });
  });
});

describe("VhostUserBackendSet", () => {
  it("refuses an id or a socket path twice, and adds to a listening set", T, async () => {
    const dir = mkdtempSync(join(tmpdir(), "vt-set-"));
    const set = new VhostUserBackendSet({ onError: () => {} });
    try {
      const blk = () => new BlockDevice({ backend: new MemoryBackend(1 << 16) });
      set.add({ id: "x", device: blk(), socketPath: join(dir, "x.sock") });
      assert.throws(
        () => set.add({ id: "x", device: blk(), socketPath: join(dir, "y.sock") }),
        /x/,
      );
      assert.throws(
        () => set.add({ id: "y", device: blk(), socketPath: join(dir, "x.sock") }),
        /already listens/,
      );
      set.listen();
      assert.equal(existsSync(join(dir, "x.sock")), true);
      set.add({ id: "z", device: blk(), socketPath: join(dir, "z.sock") });
      assert.equal(existsSync(join(dir, "z.sock")), true, "added to a listening set: listens");
      const fe = await VhostUserFrontend.connect(join(dir, "z.sock"));
      await fe.start();
      const r = await request(fe, VIRTIO_BLK_T_IN, 0, SECTOR);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      await fe.close();
    } finally {
      await set.close();
      rmSync(dir, { recursive: true, force: true });
    }
    assert.throws(
      () =>
        set.add({
          id: "w",
          device: new BlockDevice({ backend: new MemoryBackend(512) }),
          socketPath: "/nonexistent/w.sock",
        }),
      /closed/,
    );
  });
});
