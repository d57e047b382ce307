// virtio-fs over vhost-user, driven the way QEMU and a guest would: the frontend harness
// shares memfd guest memory, sets up hiprio and two request rings, and a FUSE client puts
// requests on them; the CLI (`--device fs`) serves a directory with its options.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FOPEN_DIRECT_IO, FsDevice, FUSE_DO_READDIRPLUS } from "../../devices/fs.ts";
import { FrontendTransport, FuseSession } from "../../testing/fuse_client.ts";
import { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { startBackend } from "../../launcher/backends.ts";
import { main } from "../../vhost_user/main.ts";
import { T, withBackend } from "./_harness.ts";

const MiB = 1 << 20;
let dir = "";
before(() => {
  dir = mkdtempSync(join(tmpdir(), "vt-fs-vu-"));
  writeFileSync(join(dir, "hello"), "hello over vhost-user\n");
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** Start the frontend with hiprio and `requestQueues` request rings of roomy buffer areas. */
async function startFs(fe: VhostUserFrontend, requestQueues: number): Promise<FuseSession> {
  await fe.start({ memorySize: 32 * MiB, queues: 0 });
  for (let i = 0; i <= requestQueues; i++) {
    await fe.setupRing(i, { size: 128, bufferSize: i === 0 ? 64 << 10 : 6 * MiB });
  }
  return new FuseSession(new FrontendTransport(fe));
}

function pattern(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i ^ (i >> 8) ^ (i >> 16)) & 0xff;
  return b;
}

describe("virtio-fs over vhost-user", () => {
  it("serves a session on several request rings, with 1 MiB I/O in shared memory", T, async () => {
    const device = new FsDevice({ sharedDir: dir, tag: "vu", numRequestQueues: 2 });
    try {
      await withBackend(device, async (h) => {
        const fe = await h.connect();
        const s = await startFs(fe, 2);
        assert.ok(h.backend.active);
        await s.init();
        const e = await s.lookup(1, "hello");
        const { fh } = await s.open(e.nodeid, 0);
        assert.equal(
          new TextDecoder().decode(await s.read(e.nodeid, fh, 0, 100)),
          "hello over vhost-user\n",
        );
        s.queue = 2;
        const c = await s.create(1, "big", 2);
        const data = pattern(MiB);
        assert.equal(await s.write(c.entry.nodeid, c.fh, 0, data), MiB);
        assert.deepEqual(new Uint8Array(readFileSync(join(dir, "big"))), data);
        const back = await s.read(c.entry.nodeid, c.fh, 0, MiB);
        assert.ok(back.length === MiB && back.every((b, i) => b === data[i]));
        // Several requests in flight at once on one ring.
        const many = await Promise.all(
          Array.from({ length: 16 }, (_, i) => s.read(c.entry.nodeid, c.fh, i * 4096, 4096)),
        );
        many.forEach((m, i) => assert.deepEqual(m, data.subarray(i * 4096, (i + 1) * 4096)));
        // FORGET on hiprio: no reply, and the inode is gone.
        await s.release(c.entry.nodeid, c.fh);
        await s.forget(c.entry.nodeid, 1);
        assert.equal(device.stats.inodes, 2);
        assert.deepEqual(h.errors, []);
      });
    } finally {
      device.remove();
    }
  });

  it("a frontend that goes away ends the session; the next one starts afresh", T, async () => {
    const device = new FsDevice({ sharedDir: dir, tag: "vu" });
    try {
      await withBackend(device, async (h) => {
        const fe = await h.connect();
        const s = await startFs(fe, 1);
        await s.init();
        const e = await s.lookup(1, "hello");
        await s.open(e.nodeid, 0);
        assert.equal(device.stats.handles, 1);
        await fe.close();
        for (let i = 0; i < 100 && h.backend.connected; i++) {
          await new Promise((r) => setTimeout(r, 10));
        }
        assert.equal(device.stats.handles, 0, "the reset closed the handles");
        const s2 = await startFs(await h.connect(), 1);
        await s2.init();
        assert.equal((await s2.lookup(1, "hello")).attr.size, 22);
      });
    } finally {
      device.remove();
    }
  });
});

describe("vhost_user/main.ts --device fs", () => {
  it("serves --shared-dir under --tag with --cache never", T, async () => {
    const socket = join(dir, "fs.sock");
    const share = mkdtempSync(join(dir, "share-"));
    writeFileSync(join(share, "f"), "cli");
    const backend = await startBackend([
      ...["--socket", socket, "--device", "fs", "--shared-dir", share, "--tag", "clitag"],
      ...["--cache", "never", "--queues", "2"],
    ]);
    try {
      const fe = await VhostUserFrontend.connect(socket);
      try {
        assert.equal(await fe.getQueueNum(), 3, "hiprio and two request queues");
        const cfg = await fe.getConfig(0, 40);
        assert.equal(new TextDecoder().decode(cfg.subarray(0, 6)), "clitag");
        assert.equal(new DataView(cfg.buffer, cfg.byteOffset).getUint32(36, true), 2);
        await fe.close();
        const fe2 = await VhostUserFrontend.connect(socket);
        const s = await startFs(fe2, 1);
        try {
          const init = await s.init();
          assert.equal(init.flags & FUSE_DO_READDIRPLUS, 0, "cache=never: no READDIRPLUS");
          const e = await s.lookup(1, "f");
          assert.equal(e.entryValid, 0);
          const o = await s.open(e.nodeid, 0);
          assert.equal(o.openFlags, FOPEN_DIRECT_IO);
          assert.equal(new TextDecoder().decode(await s.read(e.nodeid, o.fh, 0, 10)), "cli");
        } finally {
          await fe2.close();
        }
      } finally {
        await fe.close();
      }
    } finally {
      await backend.stop();
    }
  });

  it("refuses missing or misplaced fs options", T, async () => {
    const sock = join(dir, "never.sock");
    assert.equal(await main(["--socket", sock, "--device", "fs"]), 2);
    assert.equal(await main(["--socket", sock, "--device", "fs", "--shared-dir", dir]), 2);
    assert.equal(
      await main([
        "--socket",
        sock,
        "--device",
        "fs",
        "--shared-dir",
        dir,
        "--tag",
        "t",
        "--cache",
        "sometimes",
      ]),
      2,
    );
    assert.equal(await main(["--socket", sock, "--device", "rng", "--tag", "t"]), 2);
    assert.equal(
      await main([
        "--socket",
        sock,
        "--device",
        "fs",
        "--shared-dir",
        join(dir, "missing"),
        "--tag",
        "t",
      ]),
      1,
    );
    assert.equal(
      await main([
        "--socket",
        sock,
        "--device",
        "fs",
        "--shared-dir",
        dir,
        "--tag",
        "x".repeat(40),
      ]),
      1,
    );
  });
});
