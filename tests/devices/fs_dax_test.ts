// The virtio-fs DAX window (virtio 1.2 §5.11.6.5) on the device side: the device reserves
// its window in setResource, returns it as shared memory region 0, and FUSE_SETUPMAPPING /
// FUSE_REMOVEMAPPING place file ranges in it with MAP_FIXED. The window is in guest memory
// as the VMM would insert it, so request buffers may live in it too. Touching a file page
// past the end of its file would kill this process with SIGBUS: these tests touch every
// byte the driver may touch, so a missing guard fails them (fatally).

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { GuestRegion } from "../../memory/guest_memory.ts";
import {
  DeviceResources,
  type ResourceConstraint,
  type VirtioSharedMemoryList,
} from "../../devices/device.ts";
import {
  FATTR_SIZE,
  FS_DAX_ALIGN,
  FsDevice,
  FUSE_MAP_ALIGNMENT,
  FUSE_SETUPMAPPING_FLAG_READ,
  FUSE_SETUPMAPPING_FLAG_WRITE,
  FUSE_WRITE,
  fuseRequest,
} from "../../devices/fs.ts";
import { Errno } from "../../sys/mod.ts";
import { FuseError, FuseSession } from "../../testing/fuse_client.ts";
import { fsRig, MiB } from "./_fs_rig.ts";

const RW = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;
const WINDOW = 4 * MiB;
const WINDOW_BASE = 0x4000_0000;
const O_RDWR = 2;

async function errnoOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    if (e instanceof FuseError) return e.errno;
    throw e;
  }
  return 0;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed + (i >> 9)) & 0xff;
  return b;
}

/** A rig whose device got a DAX window from "the VMM" before activation. */
function daxRig(options: Parameters<typeof fsRig>[0] = {}) {
  let shm: VirtioSharedMemoryList | undefined;
  const rig = fsRig({ daxWindowSize: WINDOW, ...options }, (share) => {
    writeFileSync(join(share, "small"), pattern(10000, 1));
    writeFileSync(join(share, "other"), pattern(MiB, 2));
  }, (device: FsDevice): GuestRegion[] => {
    const needs: ResourceConstraint[] = [];
    device.getResourceRequirements(needs, false);
    assert.deepEqual(needs.slice(-2), [
      { type: "MemAddress", size: WINDOW, align: FS_DAX_ALIGN },
      { type: "KvmMemSlot" },
    ]);
    shm = device.setResource(
      new DeviceResources([
        { type: "LegacyIrq", irq: 5 },
        { type: "MemAddress", base: WINDOW_BASE, size: WINDOW },
        { type: "KvmMemSlot", slot: 7 },
      ]),
    );
    // The VMM's VirtioRegionHandler would insert this region into guest memory.
    return [shm!.mmapRegion];
  });
  return { rig, shm: shm! };
}

describe("virtio-fs DAX window", () => {
  it("setResource returns the window as shared memory region 0", () => {
    const { rig, shm } = daxRig();
    try {
      assert.equal(shm.guestAddr, WINDOW_BASE);
      assert.equal(shm.len, WINDOW);
      assert.equal(shm.kvmUserspaceMemoryRegionSlot, 7);
      assert.deepEqual(shm.regionList, [{ offset: 0, len: WINDOW }]);
      assert.equal(shm.mmapRegion.size, WINDOW);
      assert.equal(shm.hostAddr, rig.device.daxWindow!.mapping.address);
      // Every byte of an empty window reads as zero.
      assert.ok(shm.mmapRegion.bytes.every((b) => b === 0));
      assert.throws(() => rig.device.setResource(new DeviceResources([])), /memory window/);
    } finally {
      rig.close();
    }
    const none = new FsDevice({ sharedDir: "/tmp", tag: "t" });
    assert.equal(none.setResource(new DeviceResources([])), undefined);
    none.remove();
  });

  it("SETUPMAPPING maps a file; past its end the window reads zero; writes reach the file", async () => {
    const { rig, shm } = daxRig();
    try {
      const s = rig.session;
      const init = await s.init();
      assert.notEqual(init.flags & FUSE_MAP_ALIGNMENT, 0);
      assert.equal(init.mapAlignment, 12);
      const f = await s.lookup(1, "small");
      // As Linux does: fh ~0, 2 MiB at a 2 MiB window offset.
      await s.setupMapping(f.nodeid, { foffset: 0, len: 2 * MiB, flags: RW, moffset: 2 * MiB });
      const win = shm.mmapRegion.bytes;
      const file = pattern(10000, 1);
      assert.deepEqual(win.subarray(2 * MiB, 2 * MiB + 10000), file);
      // Past the end of the file, up to the end of the mapping: zero, and no SIGBUS.
      assert.ok(win.subarray(2 * MiB + 10000, 4 * MiB).every((b) => b === 0));
      win[2 * MiB + 5] = 0xee;
      assert.equal(readFileSync(join(rig.share, "small"))[5], 0xee, "MAP_SHARED");
      assert.equal(rig.device.daxWindow!.count, 1);

      // The file grows through FUSE_WRITE: the mapping now shows the new pages.
      const { fh } = await s.open(f.nodeid, O_RDWR);
      const more = pattern(30000, 9);
      await s.write(f.nodeid, fh, 20000, more);
      assert.deepEqual(win.subarray(2 * MiB + 20000, 2 * MiB + 50000), more);
      // It shrinks through SETATTR: the pages past the new end read zero again.
      await s.setattr(f.nodeid, { valid: FATTR_SIZE, size: 100 });
      assert.ok(win.subarray(2 * MiB + 4096, 4 * MiB).every((b) => b === 0));
      assert.equal(win[2 * MiB + 5], 0xee);
      // It grows on the host: GETATTR shows the device the new size.
      writeFileSync(join(rig.share, "small"), pattern(9000, 4));
      await s.getattr(f.nodeid);
      assert.deepEqual(win.subarray(2 * MiB, 2 * MiB + 9000), pattern(9000, 4));
      assert.ok(win.subarray(2 * MiB + 12288, 4 * MiB).every((b) => b === 0));
    } finally {
      rig.close();
    }
  });

  it("overlapping mappings replace and split; REMOVEMAPPING puts zero pages back", async () => {
    const { rig, shm } = daxRig();
    try {
      const s = rig.session;
      await s.init();
      const other = await s.lookup(1, "other");
      const win = shm.mmapRegion.bytes;
      await s.setupMapping(other.nodeid, { foffset: 0, len: MiB, flags: RW, moffset: 0 });
      // Map the middle page again, from another part of the file: the first record splits.
      await s.setupMapping(other.nodeid, { foffset: 8192, len: 4096, flags: RW, moffset: 4096 });
      assert.equal(rig.device.daxWindow!.count, 3);
      const data = pattern(MiB, 2);
      assert.deepEqual(win.subarray(0, 4096), data.subarray(0, 4096));
      assert.deepEqual(win.subarray(4096, 8192), data.subarray(8192, 12288));
      assert.deepEqual(win.subarray(8192, MiB), data.subarray(8192, MiB));
      await s.removeMapping(1, [{ moffset: 0, len: 8192 }, { moffset: MiB - 4096, len: 4096 }]);
      assert.ok(win.subarray(0, 8192).every((b) => b === 0));
      assert.ok(win.subarray(MiB - 4096, MiB).every((b) => b === 0));
      assert.deepEqual(win.subarray(8192, 12288), data.subarray(8192, 12288));
      assert.equal(readFileSync(join(rig.share, "other")).length, MiB, "the file is untouched");
      // A new session (or a reset) unmaps everything.
      await s.init();
      assert.equal(rig.device.daxWindow!.count, 0);
      assert.ok(win.subarray(0, MiB).every((b) => b === 0));
    } finally {
      rig.close();
    }
  });

  it("refuses misaligned, out-of-window and non-file mappings", async () => {
    const { rig } = daxRig();
    try {
      const s = rig.session;
      await s.init();
      const f = await s.lookup(1, "small");
      const cases: [string, Parameters<FuseSession["setupMapping"]>[1], number][] = [
        [
          "unaligned window offset",
          { foffset: 0, len: 4096, flags: RW, moffset: 100 },
          Errno.EINVAL,
        ],
        ["unaligned file offset", { foffset: 10, len: 4096, flags: RW, moffset: 0 }, Errno.EINVAL],
        ["unaligned length", { foffset: 0, len: 100, flags: RW, moffset: 0 }, Errno.EINVAL],
        ["empty", { foffset: 0, len: 0, flags: RW, moffset: 0 }, Errno.EINVAL],
        [
          "past the window",
          { foffset: 0, len: 2 * MiB, flags: RW, moffset: 3 * MiB },
          Errno.EINVAL,
        ],
        ["a forged handle", { fh: 77, foffset: 0, len: 4096, flags: RW, moffset: 0 }, Errno.EINVAL],
      ];
      for (const [what, m, errno] of cases) {
        const nodeid = what === "a forged handle" ? 31337 : f.nodeid;
        assert.equal(await errnoOf(s.setupMapping(nodeid, m)), errno, what);
      }
      assert.equal(
        await errnoOf(s.setupMapping(1, { foffset: 0, len: 4096, flags: RW, moffset: 0 })),
        Errno.EINVAL,
        "a directory",
      );
      assert.equal(await errnoOf(s.removeMapping(1, [{ moffset: 3, len: 4096 }])), Errno.EINVAL);
      assert.equal(await errnoOf(s.removeMapping(1, [{ moffset: 0, len: 8 * MiB }])), Errno.EINVAL);
      assert.equal(rig.device.daxWindow!.count, 0);
    } finally {
      rig.close();
    }
  });

  it("a read-only share maps read-only and refuses writable mappings", async () => {
    const { rig, shm } = daxRig({ readOnly: true });
    try {
      const s = rig.session;
      await s.init();
      const f = await s.lookup(1, "small");
      assert.equal(
        await errnoOf(s.setupMapping(f.nodeid, { foffset: 0, len: 4096, flags: RW, moffset: 0 })),
        Errno.EROFS,
      );
      await s.setupMapping(f.nodeid, {
        foffset: 0,
        len: 4096,
        flags: FUSE_SETUPMAPPING_FLAG_READ,
        moffset: 0,
      });
      assert.deepEqual(shm.mmapRegion.bytes.subarray(0, 100), pattern(100, 1));
    } finally {
      rig.close();
    }
  });

  it("without a window, SETUPMAPPING and REMOVEMAPPING answer ENOSYS and INIT has no alignment", async () => {
    const rig = fsRig({}, (share) => writeFileSync(join(share, "f"), "x"));
    try {
      const s = rig.session;
      const init = await s.init();
      assert.equal(init.flags & FUSE_MAP_ALIGNMENT, 0);
      const f = await s.lookup(1, "f");
      assert.equal(
        await errnoOf(s.setupMapping(f.nodeid, { foffset: 0, len: 4096, flags: RW, moffset: 0 })),
        Errno.ENOSYS,
      );
      assert.equal(await errnoOf(s.removeMapping(1, [{ moffset: 0, len: 4096 }])), Errno.ENOSYS);
    } finally {
      rig.close();
    }
  });

  it("a request buffer inside the window is served (data written from a DAX page)", async () => {
    const { rig, shm } = daxRig();
    try {
      const s = rig.session;
      await s.init();
      const src = await s.lookup(1, "other");
      await s.setupMapping(src.nodeid, { foffset: 0, len: MiB, flags: RW, moffset: 0 });
      const c = await s.create(1, "copy", O_RDWR);
      // The WRITE's data descriptor points into the window, at the mapped file's bytes.
      const driver = rig.drivers[1];
      const data = 8192;
      driver.addChain([
        {
          readable: fuseRequest(FUSE_WRITE, {
            nodeid: c.entry.nodeid,
            unique: 99n,
            len: 80 + data,
          }),
        },
        { readable: FuseSession.ioArg(c.fh, 0, data) },
        { readable: shm.mmapRegion.bytes.subarray(4096, 4096 + data), at: WINDOW_BASE + 4096 },
        { writable: 24 },
      ]);
      rig.device.processQueue(1);
      const used = driver.takeUsed()!;
      assert.equal(new DataView(used.written.buffer).getInt32(4, true), 0);
      assert.deepEqual(
        new Uint8Array(readFileSync(join(rig.share, "copy"))),
        pattern(MiB, 2).subarray(4096, 4096 + data),
      );
    } finally {
      rig.close();
    }
  });
});
