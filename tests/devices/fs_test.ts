// The virtio-fs device through the driver harness: every opcode, the session rules, the
// cache modes, the read-only share, the limits, and malformed input that must be answered
// without stopping the server.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { AT_FDCWD, Errno, getxattr, mknodat, setxattr } from "../../sys/mod.ts";
import {
  FATTR_ATIME,
  FATTR_FH,
  FATTR_GID,
  FATTR_KILL_SUIDGID,
  FATTR_MODE,
  FATTR_MTIME,
  FATTR_MTIME_NOW,
  FATTR_SIZE,
  FATTR_UID,
  FOPEN_CACHE_DIR,
  FOPEN_DIRECT_IO,
  FOPEN_KEEP_CACHE,
  FS_CONFIG_SIZE,
  FsDevice,
  FUSE_ATOMIC_O_TRUNC,
  FUSE_AUTO_INVAL_DATA,
  FUSE_BMAP,
  FUSE_DO_READDIRPLUS,
  FUSE_FLOCK_LOCKS,
  FUSE_GETATTR,
  FUSE_HANDLE_KILLPRIV_V2,
  FUSE_INIT_EXT,
  FUSE_LOOKUP,
  FUSE_MAP_ALIGNMENT,
  FUSE_MAX_PAGES,
  FUSE_OPEN_KILL_SUIDGID,
  FUSE_POSIX_LOCKS,
  FUSE_READ,
  FUSE_SETXATTR_EXT,
  FUSE_STATFS,
  FUSE_WRITE_KILL_SUIDGID,
  FUSE_WRITEBACK_CACHE,
  fuseRequest,
} from "../../devices/fs.ts";
import { TYPE_VIRTIO_FS } from "../../devices/device.ts";
import { FuseError, FuseSession } from "../../testing/fuse_client.ts";
import { fsRig, MiB } from "./_fs_rig.ts";

const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_EXCL = 0o200, O_TRUNC = 0o1000;
const O_APPEND = 0o2000;
const S_IFREG = 0o100000, S_IFDIR = 0o40000, S_IFLNK = 0o120000, S_IFIFO = 0o10000;
const S_IFSOCK = 0o140000, S_IFCHR = 0o20000;
const F_RDLCK = 0, F_WRLCK = 1, F_UNLCK = 2;
const EOF_END = 0x7fffffffffffffffn;
const enc = new TextEncoder();
const dec = new TextDecoder();

async function errnoOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    if (e instanceof FuseError) return e.errno;
    throw e;
  }
  return 0;
}

async function withRig(
  fn: (s: FuseSession, rig: ReturnType<typeof fsRig>) => Promise<void>,
  options: Parameters<typeof fsRig>[0] = {},
  setup?: Parameters<typeof fsRig>[1],
): Promise<void> {
  const rig = fsRig(options, setup);
  try {
    await rig.session.init();
    await fn(rig.session, rig);
  } finally {
    rig.close();
  }
}

describe("FsDevice: device and configuration (virtio 1.2 §5.11.2–4)", () => {
  it("is type 26 with hiprio plus the request queues, the tag and the queue count in config", () => {
    const rig = fsRig({ tag: "my-share", numRequestQueues: 3, queueSize: 256 });
    try {
      const d = rig.device;
      assert.equal(d.deviceType(), TYPE_VIRTIO_FS);
      assert.deepEqual(d.queueMaxSizes(), [256, 256, 256, 256]);
      const cfg = new Uint8Array(FS_CONFIG_SIZE);
      d.readConfig(0, cfg);
      assert.equal(dec.decode(cfg.subarray(0, 8)), "my-share");
      assert.ok(cfg.subarray(8, 36).every((b) => b === 0), "NUL padding");
      assert.equal(new DataView(cfg.buffer).getUint32(36, true), 3);
      assert.throws(() => d.writeConfig(0, new Uint8Array(1)));
      assert.throws(() => d.readConfig(40, new Uint8Array(1)));
      // VERSION_1, INDIRECT_DESC, EVENT_IDX; no notification queue.
      assert.equal(d.getAvailFeatures(0) & 1, 0);
      assert.equal(d.getAvailFeatures(1) & 1, 1);
    } finally {
      rig.close();
    }
  });

  it("refuses bad tags, counts, sizes and cache modes", () => {
    const share = "/tmp";
    assert.throws(() => new FsDevice({ sharedDir: share, tag: "" }), RangeError);
    assert.throws(() => new FsDevice({ sharedDir: share, tag: "x".repeat(37) }), RangeError);
    assert.throws(
      () => new FsDevice({ sharedDir: share, tag: "a", numRequestQueues: 0 }),
      RangeError,
    );
    assert.throws(() => new FsDevice({ sharedDir: share, tag: "a", queueSize: 100 }), RangeError);
    assert.throws(
      () => new FsDevice({ sharedDir: share, tag: "a", daxWindowSize: 4096 }),
      RangeError,
    );
    assert.throws(
      () => new FsDevice({ sharedDir: share, tag: "a", cache: "sometimes" as "auto" }),
      RangeError,
    );
    assert.throws(() => new FsDevice({ sharedDir: "/nonexistent/dir", tag: "a" }));
  });
});

describe("FsDevice: the FUSE session", () => {
  it("INIT negotiates the intersection of flags, the lower minor, and the sizes", async () => {
    const rig = fsRig();
    try {
      const s = rig.session;
      const init = await s.init(0x7fffffff, { minor: 31 });
      assert.equal(init.major, 7);
      assert.equal(init.minor, 31);
      assert.equal(init.maxWrite, MiB);
      assert.equal(init.maxPages, 256);
      for (
        const f of [
          FUSE_ATOMIC_O_TRUNC,
          FUSE_MAX_PAGES,
          FUSE_INIT_EXT,
          FUSE_AUTO_INVAL_DATA,
          FUSE_DO_READDIRPLUS,
          FUSE_SETXATTR_EXT,
        ]
      ) {
        assert.notEqual(init.flags & f, 0, `flag ${f} negotiated`);
      }
      for (
        const f of [FUSE_POSIX_LOCKS, FUSE_FLOCK_LOCKS, FUSE_WRITEBACK_CACHE, FUSE_MAP_ALIGNMENT]
      ) {
        assert.equal(init.flags & f, 0, `flag ${f} not negotiated by default`);
      }
      const narrow = await s.init(FUSE_ATOMIC_O_TRUNC);
      assert.equal(narrow.flags, FUSE_ATOMIC_O_TRUNC, "never more than the driver offers");
    } finally {
      rig.close();
    }
  });

  it("answers a newer major version with its own, and refuses too old versions", async () => {
    const rig = fsRig();
    try {
      const s = rig.session;
      const r = await s.raw(26, { nodeid: 0 }, [
        new Uint8Array(new Uint32Array([8, 0, 0, 0]).buffer),
      ], 80);
      assert.equal(r.error, 0);
      assert.equal(r.len, 16 + 8);
      assert.equal(new DataView(r.payload.buffer, r.payload.byteOffset).getUint32(0, true), 7);
      assert.equal(await errnoOf(s.init(0, { minor: 20 })), Errno.EPROTO);
      assert.equal(await errnoOf(s.init(0, { major: 6 })), Errno.EPROTO);
    } finally {
      rig.close();
    }
  });

  it("serves nothing before INIT or after DESTROY; a second INIT starts a new session", async () => {
    const rig = fsRig({}, (share) => writeFileSync(join(share, "f"), "x"));
    try {
      const s = rig.session;
      assert.equal(await errnoOf(s.lookup(1, "f")), Errno.EIO);
      await s.init();
      const e = await s.lookup(1, "f");
      await s.open(e.nodeid, O_RDONLY);
      assert.equal(rig.device.stats.handles, 1);
      await s.init(); // a new session: the old one's handles and inodes are gone
      assert.equal(rig.device.stats.handles, 0);
      assert.equal(rig.device.stats.inodes, 1);
      assert.equal(await errnoOf(s.getattr(e.nodeid)), Errno.EINVAL);
      const e2 = await s.lookup(1, "f");
      assert.notEqual(e2.nodeid, e.nodeid, "node ids are never reused");
      await s.destroy();
      assert.equal(await errnoOf(s.getattr(1)), Errno.EIO);
      await s.init();
      assert.equal((await s.getattr(1)).mode & 0o170000, S_IFDIR);
    } finally {
      rig.close();
    }
  });

  it("a device reset ends the session and closes every descriptor", async () => {
    const rig = fsRig({}, (share) => writeFileSync(join(share, "f"), "x"));
    try {
      const s = rig.session;
      await s.init();
      const e = await s.lookup(1, "f");
      await s.open(e.nodeid, O_RDONLY);
      const fds = () => readdirSync("/proc/self/fd").length;
      const before = fds();
      rig.device.reset();
      assert.equal(rig.device.stats.handles, 0);
      assert.equal(rig.device.stats.inodes, 1);
      assert.equal(fds(), before - 2, "the O_PATH descriptor and the open file are closed");
    } finally {
      rig.close();
    }
  });
});

describe("FsDevice: LOOKUP, FORGET, BATCH_FORGET and inode counting", () => {
  it("one node id per host inode; lookups are counted and forgotten", async () => {
    await withRig(
      async (s, rig) => {
        const a = await s.lookup(1, "a");
        const a2 = await s.lookup(1, "a");
        const b = await s.lookup(1, "b"); // a hard link of a
        assert.equal(a.nodeid, a2.nodeid);
        assert.equal(b.nodeid, a.nodeid, "a hard link is the same inode");
        assert.equal(a.attr.nlink, 2);
        assert.equal(a.attr.size, 3);
        assert.equal(a.attr.mode, S_IFREG | 0o640);
        assert.equal(rig.device.stats.inodes, 2);
        await s.forget(a.nodeid, 2);
        assert.equal((await s.getattr(a.nodeid)).size, 3, "one lookup left");
        await s.forget(a.nodeid, 1);
        assert.equal(await errnoOf(s.getattr(a.nodeid)), Errno.EINVAL, "forgotten");
        assert.equal(rig.device.stats.inodes, 1);
        assert.equal(await errnoOf(s.lookup(1, "missing")), Errno.ENOENT);
      },
      {},
      (share) => {
        writeFileSync(join(share, "a"), "abc", { mode: 0o640 });
        chmodSync(join(share, "a"), 0o640);
        linkSync(join(share, "a"), join(share, "b"));
      },
    );
  });

  it("BATCH_FORGET drops several; forgetting the root, unknown ids or too much is harmless", async () => {
    await withRig(
      async (s, rig) => {
        const x = await s.lookup(1, "x");
        const y = await s.lookup(1, "y");
        await s.batchForget([{ nodeid: x.nodeid, nlookup: 1 }, { nodeid: y.nodeid, nlookup: 5 }, {
          nodeid: 999,
          nlookup: 1,
        }]);
        assert.equal(rig.device.stats.inodes, 1);
        await s.forget(1, 100);
        await s.forget(123456, 1);
        assert.equal((await s.getattr(1)).mode & 0o170000, S_IFDIR, "the root stays");
        assert.deepEqual(rig.errors, []);
      },
      {},
      (share) => {
        writeFileSync(join(share, "x"), "");
        writeFileSync(join(share, "y"), "");
      },
    );
  });

  it("a full inode table answers ENFILE and recovers after FORGET", async () => {
    await withRig(
      async (s) => {
        const a = await s.lookup(1, "f0");
        await s.lookup(1, "f1");
        assert.equal(await errnoOf(s.lookup(1, "f2")), Errno.ENFILE);
        assert.equal((await s.lookup(1, "f0")).nodeid, a.nodeid, "known inodes still resolve");
        await s.forget(a.nodeid, 2);
        await s.lookup(1, "f2");
      },
      { maxInodes: 2 },
      (share) => {
        for (let i = 0; i < 3; i++) writeFileSync(join(share, `f${i}`), "");
      },
    );
  });
});

describe("FsDevice: GETATTR and SETATTR", () => {
  it("mode, owner, size and times, by node and by handle", async () => {
    await withRig(
      async (s, rig) => {
        const p = join(rig.share, "f");
        const e = await s.lookup(1, "f");
        const st = statSync(p);
        let a = await s.getattr(e.nodeid);
        assert.deepEqual([a.size, a.uid, a.gid, Number(a.ino)], [10, st.uid, st.gid, st.ino]);
        a = await s.setattr(e.nodeid, { valid: FATTR_MODE, mode: 0o600 });
        assert.equal(statSync(p).mode & 0o7777, 0o600);
        assert.equal(a.mode, S_IFREG | 0o600);
        a = await s.setattr(e.nodeid, { valid: FATTR_SIZE, size: 4 });
        assert.equal(readFileSync(p, "utf8"), "0123");
        assert.equal(a.size, 4);
        a = await s.setattr(e.nodeid, {
          valid: FATTR_ATIME | FATTR_MTIME,
          atime: 1000,
          atimensec: 5,
          mtime: 2000,
          mtimensec: 6,
        });
        assert.deepEqual([a.atime, a.atimensec, a.mtime, a.mtimensec], [1000, 5, 2000, 6]);
        assert.equal(Math.round(statSync(p).mtimeMs), 2000000);
        a = await s.setattr(e.nodeid, { valid: FATTR_MTIME_NOW });
        assert.ok(a.mtime > 1_600_000_000);
        a = await s.setattr(e.nodeid, { valid: FATTR_UID | FATTR_GID, uid: st.uid, gid: st.gid });
        assert.equal(a.uid, st.uid);
        const { fh } = await s.open(e.nodeid, O_RDWR);
        a = await s.setattr(e.nodeid, { valid: FATTR_SIZE | FATTR_FH, fh, size: 100 });
        assert.equal(statSync(p).size, 100);
        assert.equal(
          await errnoOf(s.setattr(e.nodeid, { valid: FATTR_ATIME, atime: 0, atimensec: 2e9 })),
          Errno.EINVAL,
        );
        const d = await s.lookup(1, "d");
        assert.equal(
          await errnoOf(s.setattr(d.nodeid, { valid: FATTR_SIZE, size: 0 })),
          Errno.EISDIR,
        );
        const l = await s.lookup(1, "l");
        assert.equal(
          await errnoOf(s.setattr(l.nodeid, { valid: FATTR_MODE, mode: 0o777 })),
          Errno.EOPNOTSUPP,
        );
        // The times of a symbolic link itself, never of its target.
        const before = statSync(join(rig.outside, "secret")).mtimeMs;
        await s.setattr(l.nodeid, { valid: FATTR_MTIME, mtime: 5000 });
        assert.equal(lstatSync(join(rig.share, "l")).mtimeMs, 5_000_000);
        assert.equal(statSync(join(rig.outside, "secret")).mtimeMs, before);
      },
      {},
      (share, outside) => {
        writeFileSync(join(share, "f"), "0123456789");
        mkdirSync(join(share, "d"));
        symlinkSync(join(outside, "secret"), join(share, "l"));
      },
    );
  });
});

describe("FsDevice: OPEN, CREATE, READ, WRITE, RELEASE", () => {
  it("creates, writes and reads back 1 MiB across descriptors, vectored", async () => {
    await withRig(async (s, rig) => {
      const c = await s.create(1, "big", O_RDWR, 0o644);
      assert.equal(c.entry.attr.mode, S_IFREG | 0o644);
      const data = new Uint8Array(MiB);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
      assert.equal(await s.write(c.entry.nodeid, c.fh, 0, data), MiB);
      assert.deepEqual(new Uint8Array(readFileSync(join(rig.share, "big"))), data);
      const back = await s.read(c.entry.nodeid, c.fh, 0, MiB);
      assert.equal(back.length, MiB);
      assert.ok(back.every((b, i) => b === data[i]));
      const tail = await s.read(c.entry.nodeid, c.fh, MiB - 100, 4096);
      assert.equal(tail.length, 100, "a short read at the end of the file");
      assert.equal((await s.read(c.entry.nodeid, c.fh, 2 * MiB, 4096)).length, 0);
      assert.equal(rig.device.stats.bytesRead, MiB + 100);
      await s.release(c.entry.nodeid, c.fh);
      assert.equal(rig.device.stats.handles, 0);
      assert.equal(await errnoOf(s.read(c.entry.nodeid, c.fh, 0, 10)), Errno.EBADF);
    });
  });

  it("READ writes the header after the data into split writable buffers", async () => {
    await withRig(
      async (s) => {
        const e = await s.lookup(1, "f");
        const { fh } = await s.open(e.nodeid, O_RDONLY);
        const written = await s.transport.roundTrip(
          1,
          [
            fuseRequest(FUSE_READ, { nodeid: e.nodeid, unique: 77n, len: 80 }),
            FuseSession.ioArg(fh, 2, 5),
          ],
          [3, 10, 8],
        );
        const v = new DataView(written.buffer, written.byteOffset);
        assert.equal(written.length, 21);
        assert.equal(v.getUint32(0, true), 21);
        assert.equal(v.getBigUint64(8, true), 77n);
        assert.equal(dec.decode(written.subarray(16)), "23456");
      },
      {},
      (share) => writeFileSync(join(share, "f"), "0123456789"),
    );
  });

  it("OPEN honours O_TRUNC and O_APPEND; access modes are enforced", async () => {
    await withRig(
      async (s, rig) => {
        const p = join(rig.share, "f");
        const e = await s.lookup(1, "f");
        const ro = await s.open(e.nodeid, O_RDONLY);
        assert.equal(await errnoOf(s.write(e.nodeid, ro.fh, 0, enc.encode("x"))), Errno.EBADF);
        const ap = await s.open(e.nodeid, O_WRONLY | O_APPEND);
        await s.write(e.nodeid, ap.fh, 0, enc.encode("END"));
        assert.equal(readFileSync(p, "utf8"), "0123456789END", "O_APPEND writes at the end");
        await s.open(e.nodeid, O_WRONLY | O_TRUNC);
        assert.equal(statSync(p).size, 0);
        assert.equal(await errnoOf(s.open(e.nodeid, 3)), Errno.EINVAL);
      },
      {},
      (share) => writeFileSync(join(share, "f"), "0123456789"),
    );
  });

  it("CREATE opens an existing file unless O_EXCL; it never opens a FIFO, link or directory", async () => {
    await withRig(
      async (s, rig) => {
        const existing = await s.create(1, "f", O_RDWR | O_TRUNC, 0o600);
        assert.equal(existing.entry.attr.size, 0, "O_TRUNC applied");
        assert.equal(
          statSync(join(rig.share, "f")).mode & 0o777,
          0o644,
          "an existing file keeps its mode",
        );
        assert.equal(await errnoOf(s.create(1, "f", O_RDWR | O_EXCL)), Errno.EEXIST);
        // Opening a FIFO would block the server forever; it is refused at once.
        assert.equal(await errnoOf(s.create(1, "fifo", O_RDONLY)), Errno.EINVAL);
        assert.equal(await errnoOf(s.create(1, "d", O_RDWR)), Errno.EISDIR);
        assert.equal(await errnoOf(s.create(1, "l", O_RDWR)), Errno.ELOOP);
        const fifo = await s.lookup(1, "fifo");
        assert.equal(await errnoOf(s.open(fifo.nodeid, O_RDONLY)), Errno.EINVAL);
        const d = await s.lookup(1, "d");
        assert.equal(await errnoOf(s.open(d.nodeid, O_RDONLY)), Errno.EISDIR);
        assert.deepEqual(rig.errors, []);
      },
      {},
      (share, outside) => {
        writeFileSync(join(share, "f"), "old content", { mode: 0o644 });
        chmodSync(join(share, "f"), 0o644);
        mkdirSync(join(share, "d"));
        symlinkSync(join(outside, "secret"), join(share, "l"));
        mknodat(AT_FDCWD, join(share, "fifo"), S_IFIFO | 0o600);
      },
    );
  });

  it("FUSE_HANDLE_KILLPRIV_V2: writes, truncations and chowns that ask clear set-user-id", async () => {
    await withRig(
      async (s, rig) => {
        const init = await s.init();
        assert.notEqual(init.flags & FUSE_HANDLE_KILLPRIV_V2, 0);
        const p = (n: string) => join(rig.share, n);
        const mode = (n: string) => statSync(p(n)).mode & 0o7777;
        const a = await s.lookup(1, "a");
        const { fh } = await s.open(a.nodeid, O_RDWR);
        await s.write(a.nodeid, fh, 0, enc.encode("x"));
        assert.equal(mode("a"), 0o6755, "a plain write keeps the bits");
        await s.write(a.nodeid, fh, 0, enc.encode("x"), FUSE_WRITE_KILL_SUIDGID);
        assert.equal(mode("a"), 0o755, "set-group-id goes too: the group may execute");
        const b = await s.lookup(1, "b");
        await s.open(b.nodeid, O_WRONLY | O_TRUNC, FUSE_OPEN_KILL_SUIDGID);
        assert.equal(mode("b"), 0o2744, "set-group-id stays without group execute");
        const c = await s.lookup(1, "c");
        await s.setattr(c.nodeid, { valid: FATTR_SIZE | FATTR_KILL_SUIDGID, size: 0 });
        assert.equal(mode("c"), 0o755);
      },
      {},
      (share) => {
        for (const [n, m] of [["a", 0o6755], ["b", 0o6744], ["c", 0o4755]] as const) {
          writeFileSync(join(share, n), "data");
          chmodSync(join(share, n), m);
        }
      },
    );
  });

  it("modes the host umask would strip are kept", async () => {
    await withRig(async (s, rig) => {
      await s.mkdir(1, "open", 0o777);
      assert.equal(statSync(join(rig.share, "open")).mode & 0o777, 0o777);
      const c = await s.create(1, "gw", O_RDWR, 0o666);
      assert.equal(statSync(join(rig.share, "gw")).mode & 0o777, 0o666);
      assert.equal(c.entry.attr.mode & 0o777, 0o666);
    });
  });

  it("a full handle table answers EMFILE", async () => {
    await withRig(
      async (s) => {
        const e = await s.lookup(1, "f");
        const a = await s.open(e.nodeid, O_RDONLY);
        await s.open(e.nodeid, O_RDONLY);
        assert.equal(await errnoOf(s.open(e.nodeid, O_RDONLY)), Errno.EMFILE);
        assert.equal(await errnoOf(s.opendir(1)), Errno.EMFILE);
        await s.release(e.nodeid, a.fh);
        await s.open(e.nodeid, O_RDONLY);
      },
      { maxHandles: 2 },
      (share) => writeFileSync(join(share, "f"), "x"),
    );
  });

  it("FLUSH, FSYNC (data and all), FSYNCDIR and SYNCFS", async () => {
    await withRig(async (s) => {
      const c = await s.create(1, "f", O_RDWR);
      await s.write(c.entry.nodeid, c.fh, 0, enc.encode("durable"));
      await s.flush(c.entry.nodeid, c.fh);
      await s.fsync(c.entry.nodeid, c.fh, true);
      await s.fsync(c.entry.nodeid, c.fh, false);
      const d = await s.opendir(1);
      await s.fsync(1, d.fh, false, true);
      await s.syncfs();
      assert.equal(await errnoOf(s.fsync(c.entry.nodeid, 999)), Errno.EBADF);
      assert.equal(
        await errnoOf(s.fsync(1, c.fh, false, true)),
        Errno.EBADF,
        "a file handle is no directory handle",
      );
    });
  });
});

describe("FsDevice: directories", () => {
  it("MKDIR, OPENDIR, READDIR with resumption, RELEASEDIR and RMDIR", async () => {
    await withRig(async (s, rig) => {
      const d = await s.mkdir(1, "dir", 0o750);
      assert.equal(d.attr.mode, S_IFDIR | 0o750);
      for (let i = 0; i < 60; i++) {
        writeFileSync(join(rig.share, "dir", `entry-with-a-longish-name-${i}`), "");
      }
      const h = await s.opendir(d.nodeid);
      const names: string[] = [];
      let cookie = 0n;
      let rounds = 0;
      for (;;) {
        const batch = await s.readdir(d.nodeid, h.fh, cookie, 512);
        if (batch.length === 0) break;
        names.push(...batch.map((e) => e.name));
        cookie = batch[batch.length - 1].off;
        rounds++;
      }
      assert.ok(rounds > 3, "several small replies");
      assert.equal(names.length, 62);
      assert.equal(new Set(names).size, 62, "no entry twice");
      assert.ok(names.includes(".") && names.includes(".."));
      // From the start again (cookie 0 seeks back).
      const again = await s.readdir(d.nodeid, h.fh, 0n, 4096);
      assert.equal(again[0].name, names[0]);
      assert.equal(await errnoOf(s.readdir(d.nodeid, h.fh, 0n, 30)), Errno.EINVAL, "no entry fits");
      await s.release(d.nodeid, h.fh, true);
      assert.equal(await errnoOf(s.rmdir(1, "dir")), Errno.ENOTEMPTY);
      await s.mkdir(1, "empty");
      await s.rmdir(1, "empty");
      assert.ok(!existsSync(join(rig.share, "empty")));
      assert.equal(await errnoOf(s.mkdir(1, "dir")), Errno.EEXIST);
    });
  });

  it("READDIRPLUS looks up each entry but . and ..; the lookups count", async () => {
    await withRig(
      async (s, rig) => {
        const h = await s.opendir(1);
        const entries = await s.readdir(1, h.fh, 0n, 4096, true);
        const byName = new Map(entries.map((e) => [e.name, e]));
        assert.equal(byName.get(".")!.entry.nodeid, 0);
        assert.equal(byName.get("..")!.entry.nodeid, 0);
        const f = byName.get("file")!;
        assert.ok(f.entry.nodeid > 1);
        assert.equal(f.entry.attr.size, 5);
        assert.equal(f.type, 8); // DT_REG
        assert.equal(byName.get("sub")!.type, 4); // DT_DIR
        assert.equal(rig.device.stats.inodes, 3);
        const again = await s.lookup(1, "file");
        assert.equal(again.nodeid, f.entry.nodeid);
        await s.forget(f.entry.nodeid, 1);
        assert.equal((await s.getattr(f.entry.nodeid)).size, 5, "READDIRPLUS counted one lookup");
        await s.forget(f.entry.nodeid, 1);
        assert.equal(await errnoOf(s.getattr(f.entry.nodeid)), Errno.EINVAL);
      },
      {},
      (share) => {
        writeFileSync(join(share, "file"), "12345");
        mkdirSync(join(share, "sub"));
      },
    );
  });

  it("READDIR on a file handle and READ on a directory handle are refused", async () => {
    await withRig(
      async (s) => {
        const e = await s.lookup(1, "f");
        const f = await s.open(e.nodeid, O_RDONLY);
        const d = await s.opendir(1);
        assert.equal(await errnoOf(s.readdir(1, f.fh)), Errno.EBADF);
        assert.equal(await errnoOf(s.read(1, d.fh, 0, 10)), Errno.EBADF);
        assert.equal(await errnoOf(s.opendir(e.nodeid)), Errno.ENOTDIR);
      },
      {},
      (share) => writeFileSync(join(share, "f"), "x"),
    );
  });
});

describe("FsDevice: names", () => {
  it("MKNOD makes FIFOs, sockets and files; device nodes only when allowed", async () => {
    await withRig(async (s, rig) => {
      assert.equal((await s.mknod(1, "fifo", S_IFIFO | 0o600)).attr.mode, S_IFIFO | 0o600);
      assert.ok(lstatSync(join(rig.share, "fifo")).isFIFO());
      assert.ok(
        lstatSync(join(rig.share, (await s.mknod(1, "sock", S_IFSOCK | 0o600), "sock"))).isSocket(),
      );
      assert.ok(
        lstatSync(join(rig.share, (await s.mknod(1, "reg", S_IFREG | 0o600), "reg"))).isFile(),
      );
      assert.equal(await errnoOf(s.mknod(1, "null", S_IFCHR | 0o666, (1 << 8) | 3)), Errno.EPERM);
      assert.ok(!existsSync(join(rig.share, "null")));
    });
  });

  it("MKNOD of a device node when allowed encodes rdev as Linux does", async () => {
    await withRig(async (s, rig) => {
      const e = await s.mknod(1, "null", S_IFCHR | 0o666, (1 << 8) | 3);
      assert.equal(e.attr.rdev, (1 << 8) | 3);
      const st = lstatSync(join(rig.share, "null"));
      assert.ok(st.isCharacterDevice());
      assert.equal(st.rdev, (1 << 8) | 3);
    }, { allowDeviceNodes: true });
  });

  it("SYMLINK stores any target; READLINK returns it; the target is never followed", async () => {
    await withRig(async (s, rig) => {
      const l = await s.symlink(1, "abs", "/etc/passwd");
      assert.equal(l.attr.mode & 0o170000, S_IFLNK);
      assert.equal(readlinkSync(join(rig.share, "abs")), "/etc/passwd");
      assert.equal(await s.readlink(l.nodeid), "/etc/passwd");
      const r = await s.symlink(1, "rel", "../outside/secret");
      assert.equal(await s.readlink(r.nodeid), "../outside/secret");
      assert.equal(await errnoOf(s.readlink(1)), Errno.EINVAL);
    });
  });

  it("LINK adds a name to the same inode; directories cannot be linked", async () => {
    await withRig(
      async (s, rig) => {
        const f = await s.lookup(1, "f");
        const l = await s.link(f.nodeid, 1, "f2");
        assert.equal(l.nodeid, f.nodeid);
        assert.equal(l.attr.nlink, 2);
        assert.equal(statSync(join(rig.share, "f2")).ino, statSync(join(rig.share, "f")).ino);
        const d = await s.mkdir(1, "d");
        assert.equal(await errnoOf(s.link(d.nodeid, 1, "d2")), Errno.EPERM);
      },
      {},
      (share) => writeFileSync(join(share, "f"), "x"),
    );
  });

  it("UNLINK, RENAME and RENAME2 with NOREPLACE and EXCHANGE", async () => {
    await withRig(
      async (s, rig) => {
        const sub = await s.mkdir(1, "sub");
        await s.rename(1, "a", sub.nodeid, "a-moved");
        assert.equal(readFileSync(join(rig.share, "sub", "a-moved"), "utf8"), "A");
        assert.equal(await errnoOf(s.rename(sub.nodeid, "a-moved", 1, "b", 1)), Errno.EEXIST);
        await s.rename(sub.nodeid, "a-moved", 1, "b", 2);
        assert.equal(readFileSync(join(rig.share, "b"), "utf8"), "A");
        assert.equal(readFileSync(join(rig.share, "sub", "a-moved"), "utf8"), "B");
        assert.equal(await errnoOf(s.rename(1, "b", 1, "c", 4)), Errno.EINVAL, "no whiteouts");
        assert.equal(await errnoOf(s.rename(1, "b", 1, "c", 8)), Errno.EINVAL);
        await s.unlink(1, "b");
        assert.ok(!existsSync(join(rig.share, "b")));
        assert.equal(await errnoOf(s.unlink(1, "b")), Errno.ENOENT);
        assert.equal(await errnoOf(s.unlink(1, "sub")), Errno.EISDIR);
      },
      {},
      (share) => {
        writeFileSync(join(share, "a"), "A");
        writeFileSync(join(share, "b"), "B");
      },
    );
  });
});

describe("FsDevice: STATFS, ACCESS, FALLOCATE, LSEEK, COPY_FILE_RANGE", () => {
  it("STATFS and ACCESS", async () => {
    await withRig(
      async (s) => {
        const st = await s.statfs();
        assert.ok(st.blocks > 0n && st.bsize > 0 && st.namelen === 255);
        await s.access(1, 7);
        const e = await s.lookup(1, "f");
        await s.access(e.nodeid, 4);
      },
      {},
      (share) => writeFileSync(join(share, "f"), "x"),
    );
  });

  it("FALLOCATE grows and punches; LSEEK finds data and holes; COPY_FILE_RANGE copies", async () => {
    await withRig(async (s, rig) => {
      const c = await s.create(1, "sparse", O_RDWR);
      await s.fallocate(c.entry.nodeid, c.fh, 0, 1 << 20);
      assert.equal(statSync(join(rig.share, "sparse")).size, 1 << 20);
      await s.write(c.entry.nodeid, c.fh, 0, new Uint8Array(1 << 20).fill(1));
      await s.fallocate(c.entry.nodeid, c.fh, 0, 512 << 10, 0x01 | 0x02); // KEEP_SIZE | PUNCH_HOLE
      const back = await s.read(c.entry.nodeid, c.fh, 0, 8);
      assert.deepEqual([...back], [0, 0, 0, 0, 0, 0, 0, 0]);
      const data = await s.lseek(c.entry.nodeid, c.fh, 0, 3); // SEEK_DATA
      assert.ok(data >= 512n << 10n && data < 1n << 20n);
      assert.equal(await s.lseek(c.entry.nodeid, c.fh, 0, 4), 0n); // SEEK_HOLE
      assert.equal(
        await errnoOf(s.lseek(c.entry.nodeid, c.fh, 0, 1)),
        Errno.EINVAL,
        "SEEK_CUR has no meaning here",
      );
      assert.equal(await errnoOf(s.fallocate(c.entry.nodeid, c.fh, 0, 10, 0x40)), Errno.EOPNOTSUPP);
      assert.equal(await errnoOf(s.fallocate(c.entry.nodeid, c.fh, 0, 0)), Errno.EINVAL);
      const d = await s.create(1, "copy", O_RDWR);
      const n = await s.copyFileRange(
        c.entry.nodeid,
        c.fh,
        512 << 10,
        d.entry.nodeid,
        d.fh,
        10,
        4096,
      );
      assert.equal(n, 4096);
      const copied = readFileSync(join(rig.share, "copy"));
      assert.equal(copied.length, 4106);
      assert.ok(copied.subarray(10).every((b) => b === 1));
      // A huge length is a partial copy, not an error.
      const m = await s.copyFileRange(
        c.entry.nodeid,
        c.fh,
        0,
        d.entry.nodeid,
        d.fh,
        0,
        0xffffffffffffffffn,
      );
      assert.equal(m, 1 << 20);
      assert.equal(
        await errnoOf(s.copyFileRange(c.entry.nodeid, c.fh, 0, 1, d.fh, 0, 10)),
        Errno.EINVAL,
        "node and handle disagree",
      );
      assert.equal(
        await errnoOf(s.copyFileRange(c.entry.nodeid, c.fh, 0, d.entry.nodeid, d.fh, 0, 10, 1)),
        Errno.EINVAL,
      );
    });
  });
});

describe("FsDevice: extended attributes", () => {
  it("SETXATTR, GETXATTR (size query, ERANGE), LISTXATTR and REMOVEXATTR", async () => {
    await withRig(
      async (s, rig) => {
        const e = await s.lookup(1, "f");
        await s.setxattr(e.nodeid, "user.color", enc.encode("blue"));
        const out = new Uint8Array(16);
        assert.equal(getxattr(join(rig.share, "f"), "user.color", out), 4);
        assert.equal(await s.getxattr(e.nodeid, "user.color", 0), 4);
        assert.equal(
          dec.decode(await s.getxattr(e.nodeid, "user.color", 64) as Uint8Array),
          "blue",
        );
        assert.equal(await errnoOf(s.getxattr(e.nodeid, "user.color", 2)), Errno.ERANGE);
        assert.equal(
          await errnoOf(s.setxattr(e.nodeid, "user.color", enc.encode("x"), 1)),
          Errno.EEXIST,
        );
        await s.setxattr(e.nodeid, "user.size", enc.encode("L"));
        assert.deepEqual((await s.listxattr(e.nodeid, 1024) as string[]).sort(), [
          "user.color",
          "user.size",
        ]);
        assert.equal(await s.listxattr(e.nodeid, 0), "user.color\0user.size\0".length);
        assert.equal(await errnoOf(s.listxattr(e.nodeid, 5)), Errno.ERANGE);
        await s.removexattr(e.nodeid, "user.color");
        assert.equal(await errnoOf(s.getxattr(e.nodeid, "user.color", 64)), Errno.ENODATA);
        assert.equal(await errnoOf(s.removexattr(e.nodeid, "user.color")), Errno.ENODATA);
      },
      {},
      (share) => writeFileSync(join(share, "f"), "x"),
    );
  });

  it("only the user. namespace reaches the host unless all are allowed", async () => {
    const setup = (share: string) => {
      writeFileSync(join(share, "f"), "x");
      setxattr(join(share, "f"), "trusted.hidden", enc.encode("t"));
      setxattr(join(share, "f"), "user.visible", enc.encode("u"));
    };
    await withRig(
      async (s, rig) => {
        const e = await s.lookup(1, "f");
        assert.deepEqual(await s.listxattr(e.nodeid, 1024), ["user.visible"]);
        assert.equal(await errnoOf(s.getxattr(e.nodeid, "trusted.hidden", 64)), Errno.ENODATA);
        assert.equal(
          await errnoOf(s.setxattr(e.nodeid, "security.capability", enc.encode("c"))),
          Errno.EOPNOTSUPP,
        );
        assert.equal(await errnoOf(s.removexattr(e.nodeid, "trusted.hidden")), Errno.EOPNOTSUPP);
        assert.equal(getxattr(join(rig.share, "f"), "trusted.hidden", new Uint8Array(4)), 1);
      },
      {},
      setup,
    );
    await withRig(
      async (s) => {
        const e = await s.lookup(1, "f");
        assert.deepEqual((await s.listxattr(e.nodeid, 1024) as string[]).sort(), [
          "trusted.hidden",
          "user.visible",
        ]);
      },
      { allXattrNamespaces: true },
      setup,
    );
    await withRig(async (s) => {
      assert.equal(await errnoOf(s.getxattr(1, "user.x", 10)), Errno.ENOSYS);
    }, { xattr: false });
  });
});

describe("FsDevice: locks", () => {
  it("without the options, lock requests answer ENOSYS and INIT offers no locking", async () => {
    await withRig(async (s) => {
      const c = await s.create(1, "f", O_RDWR);
      assert.equal(
        await errnoOf(
          s.getlk(c.entry.nodeid, c.fh, 1n, { start: 0n, end: EOF_END, type: F_WRLCK }),
        ),
        Errno.ENOSYS,
      );
    });
  });

  it("POSIX record locks conflict between owners; SETLKW waits for the holder; INTERRUPT ends a wait", async () => {
    await withRig(async (s, rig) => {
      const init = await s.init();
      assert.notEqual(init.flags & FUSE_POSIX_LOCKS, 0);
      const c = await s.create(1, "f", O_RDWR);
      const n = c.entry.nodeid;
      await s.setlk(n, c.fh, 1n, { start: 0n, end: 99n, type: F_WRLCK });
      const seen = await s.getlk(n, c.fh, 2n, { start: 50n, end: 60n, type: F_RDLCK });
      assert.deepEqual([seen.type, seen.start, seen.end], [F_WRLCK, 0n, 99n]);
      const free = await s.getlk(n, c.fh, 2n, { start: 100n, end: EOF_END, type: F_WRLCK });
      assert.equal(free.type, F_UNLCK);
      assert.equal(
        await errnoOf(s.setlk(n, c.fh, 2n, { start: 10n, end: 10n, type: F_RDLCK })),
        Errno.EAGAIN,
      );
      // A waiting lock completes once the holder unlocks.
      let granted = false;
      const waiter = s.setlk(n, c.fh, 2n, { start: 10n, end: 10n, type: F_RDLCK }, { wait: true })
        .then(() => granted = true);
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(granted, false);
      assert.equal(rig.device.server.lockWaits, 1);
      await s.setlk(n, c.fh, 1n, { start: 0n, end: 99n, type: F_UNLCK });
      await waiter;
      assert.ok(granted);
      // A waiting lock that is interrupted ends with EINTR.
      const unique = s.nextUnique();
      const blocked = errnoOf(
        s.setlk(n, c.fh, 3n, { start: 10n, end: 10n, type: F_WRLCK }, { wait: true, unique }),
      );
      await new Promise((r) => setTimeout(r, 20));
      await s.interrupt(unique);
      assert.equal(await blocked, Errno.EINTR);
      assert.equal(rig.device.server.lockWaits, 0);
      // FLUSH of an owner releases its locks.
      await s.flush(n, c.fh, 2n);
      await s.setlk(n, c.fh, 3n, { start: 0n, end: EOF_END, type: F_WRLCK });
      assert.equal(
        await errnoOf(s.setlk(n, c.fh, 1n, { start: 0n, end: 0n, type: 7 })),
        Errno.EINVAL,
      );
    }, { posixLocks: true });
  });

  it("flock locks belong to the handle", async () => {
    await withRig(async (s) => {
      const c = await s.create(1, "f", O_RDWR);
      const other = await s.open(c.entry.nodeid, O_RDWR);
      const n = c.entry.nodeid;
      const lk = { start: 0n, end: EOF_END, type: F_WRLCK };
      await s.setlk(n, c.fh, 1n, lk, { flock: true });
      assert.equal(await errnoOf(s.setlk(n, other.fh, 2n, lk, { flock: true })), Errno.EAGAIN);
      const waiting = s.setlk(n, other.fh, 2n, lk, { flock: true, wait: true });
      await s.release(n, c.fh, false, 2); // FUSE_RELEASE_FLOCK_UNLOCK
      await waiting;
    }, { flock: true });
  });
});

describe("FsDevice: read-only share", () => {
  it("every change answers EROFS; reading works", async () => {
    await withRig(
      async (s, rig) => {
        const e = await s.lookup(1, "f");
        const { fh } = await s.open(e.nodeid, O_RDONLY);
        assert.equal(dec.decode(await s.read(e.nodeid, fh, 0, 10)), "content");
        const attempts: [string, Promise<unknown>][] = [
          ["open rw", s.open(e.nodeid, O_RDWR)],
          ["open trunc", s.open(e.nodeid, O_RDONLY | O_TRUNC)],
          ["write", s.write(e.nodeid, fh, 0, enc.encode("x"))],
          ["create", s.create(1, "new", O_RDWR)],
          ["mkdir", s.mkdir(1, "d")],
          ["mknod", s.mknod(1, "p", S_IFIFO | 0o600)],
          ["symlink", s.symlink(1, "l", "f")],
          ["link", s.link(e.nodeid, 1, "f2")],
          ["unlink", s.unlink(1, "f")],
          ["rmdir", s.rmdir(1, "sub")],
          ["rename", s.rename(1, "f", 1, "g")],
          ["setattr", s.setattr(e.nodeid, { valid: FATTR_SIZE, size: 0 })],
          ["setxattr", s.setxattr(e.nodeid, "user.a", enc.encode("b"))],
          ["removexattr", s.removexattr(e.nodeid, "user.a")],
          ["fallocate", s.fallocate(e.nodeid, fh, 0, 10)],
          ["access W_OK", s.access(e.nodeid, 2)],
        ];
        for (const [what, p] of attempts) assert.equal(await errnoOf(p), Errno.EROFS, what);
        assert.equal(readFileSync(join(rig.share, "f"), "utf8"), "content");
        assert.deepEqual(readdirSync(rig.share).sort(), ["f", "sub"]);
      },
      { readOnly: true },
      (share) => {
        writeFileSync(join(share, "f"), "content");
        mkdirSync(join(share, "sub"));
      },
    );
  });
});

describe("FsDevice: cache modes", () => {
  const cases = [
    { cache: "never" as const, timeout: 0, open: FOPEN_DIRECT_IO, dir: 0, plus: false },
    { cache: "auto" as const, timeout: 1, open: 0, dir: 0, plus: true },
    {
      cache: "always" as const,
      timeout: 86400,
      open: FOPEN_KEEP_CACHE,
      dir: FOPEN_CACHE_DIR,
      plus: true,
    },
  ];
  for (const c of cases) {
    it(`cache=${c.cache}: entry/attr timeouts ${c.timeout}s, open flags ${c.open}, readdirplus ${c.plus}`, async () => {
      const rig = fsRig({ cache: c.cache }, (share) => writeFileSync(join(share, "f"), "x"));
      try {
        const s = rig.session;
        const init = await s.init();
        assert.equal((init.flags & FUSE_DO_READDIRPLUS) !== 0, c.plus);
        assert.equal((init.flags & FUSE_AUTO_INVAL_DATA) !== 0, c.plus);
        const e = await s.lookup(1, "f");
        assert.equal(e.entryValid, c.timeout);
        assert.equal(e.attrValid, c.timeout);
        assert.equal((await s.open(e.nodeid, O_RDONLY)).openFlags, c.open);
        assert.equal((await s.opendir(1)).openFlags, c.dir);
        assert.equal((await s.create(1, "g", O_RDWR)).openFlags, c.open);
      } finally {
        rig.close();
      }
    });
  }
});

describe("FsDevice: malformed requests are answered and the server keeps going", () => {
  it("lying lengths, bad names, unknown nodes and opcodes, and hiprio misuse", async () => {
    await withRig(
      async (s, rig) => {
        const good = async () => assert.equal((await s.lookup(1, "f")).attr.size, 1);
        const cases: [string, () => Promise<number>][] = [
          [
            "len beyond the chain",
            async () => -(await s.raw(FUSE_STATFS, { len: 4000 }, [], 96)).error,
          ],
          [
            "len below the header",
            async () => -(await s.raw(FUSE_STATFS, { len: 12 }, [], 96)).error,
          ],
          ["name with '/'", () => errnoOf(s.lookup(1, "../outside"))],
          ["name without NUL", () => errnoOf(s.lookup(1, enc.encode("f")))],
          ["'..'", () => errnoOf(s.lookup(1, ".."))],
          ["unknown node id", () => errnoOf(s.getattr(4242))],
          ["node id 0", () => errnoOf(s.getattr(0))],
          [
            "node id beyond 2^53",
            async () =>
              -(await s.raw(FUSE_GETATTR, { nodeid: 2n ** 60n }, [new Uint8Array(16)], 200)).error,
          ],
          ["unknown fh", () => errnoOf(s.read(1, 77, 0, 10))],
          ["unknown opcode", async () => -(await s.raw(4000, {}, [], 64)).error],
          ["BMAP", async () => -(await s.raw(FUSE_BMAP, {}, [new Uint8Array(16)], 64)).error],
          [
            "huge READ",
            async () =>
              -(await s.raw(FUSE_READ, {}, [FuseSession.ioArg(1, 0, 64 << 20)], 64)).error,
          ],
          [
            "LOOKUP on hiprio",
            async () => -(await s.raw(FUSE_LOOKUP, {}, [enc.encode("f\0")], 200, 0)).error,
          ],
        ];
        const expected = [
          Errno.EINVAL,
          Errno.EINVAL,
          Errno.EINVAL,
          Errno.EINVAL,
          Errno.EINVAL,
          Errno.EINVAL,
          Errno.EINVAL,
          Errno.EINVAL,
          Errno.EBADF,
          Errno.ENOSYS,
          Errno.ENOSYS,
          Errno.EINVAL,
          Errno.EINVAL,
        ];
        for (const [i, [what, run]] of cases.entries()) {
          assert.equal(await run(), expected[i], what);
          await good();
        }
        // Malformed ones are reported to the host; ordinary errors (ENOENT, ENOSYS) are not.
        assert.ok(rig.errors.length >= 6);
        assert.ok(rig.errors.every((e) => e.kind === "InvalidInput"));
        assert.equal(rig.device.stats.refused, rig.errors.length);
      },
      {},
      (share) => writeFileSync(join(share, "f"), "1"),
    );
  });

  it("a chain too short for a header comes back empty; a forget never gets a reply", async () => {
    await withRig(
      async (s, rig) => {
        assert.equal(
          (await s.transport.roundTrip(1, [new Uint8Array(20)], [64])).length,
          16,
          "EIO, unique 0",
        );
        assert.equal((await s.transport.roundTrip(1, [new Uint8Array(20)], [8])).length, 0);
        const forget = fuseRequest(2, { nodeid: 1 }, new Uint8Array(8));
        assert.equal(
          (await s.transport.roundTrip(1, [forget], [64])).length,
          0,
          "no reply even with room",
        );
        assert.equal((await s.lookup(1, "f")).attr.size, 1);
        assert.ok(rig.notified[1] > 0);
      },
      {},
      (share) => writeFileSync(join(share, "f"), "1"),
    );
  });

  it("a second request queue serves the same session", async () => {
    const rig = fsRig({ numRequestQueues: 2 }, (share) => writeFileSync(join(share, "f"), "12"));
    try {
      const s = rig.session;
      await s.init();
      const e = await s.lookup(1, "f");
      s.queue = 2;
      assert.equal((await s.getattr(e.nodeid)).size, 2);
      const { fh } = await s.open(e.nodeid, O_RDONLY);
      s.queue = 1;
      assert.equal(dec.decode(await s.read(e.nodeid, fh, 0, 10)), "12");
    } finally {
      rig.close();
    }
  });
});

describe("FsDevice: host changes are seen", () => {
  it("GETATTR and READ see a file changed on the host", async () => {
    await withRig(
      async (s, rig) => {
        const e = await s.lookup(1, "f");
        const { fh } = await s.open(e.nodeid, O_RDONLY);
        writeFileSync(join(rig.share, "f"), "changed on the host");
        utimesSync(join(rig.share, "f"), 1000, 3000);
        const a = await s.getattr(e.nodeid);
        assert.equal(a.size, 19);
        assert.equal(a.mtime, 3000);
        assert.equal(dec.decode(await s.read(e.nodeid, fh, 0, 100)), "changed on the host");
      },
      {},
      (share) => writeFileSync(join(share, "f"), "v1"),
    );
  });
});
