// The sandbox against a hostile driver: escape attempts at the FUSE level (names, node ids
// and handles a Linux guest would never send, links planted on the host, a directory
// swapped for a link between requests). After each suite the host checks that nothing
// outside the shared directory changed and nothing there was read (contents, modes, times —
// access times included — extended attributes, and the parent directory's listing).
// Every attempt runs twice: with openat2(RESOLVE_BENEATH) and with the openat(O_NOFOLLOW)
// fallback of older kernels.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { Errno, listxattr, setxattr } from "../../sys/mod.ts";
import { FATTR_MODE, FATTR_MTIME, FATTR_SIZE, FUSE_LINK, FUSE_RENAME } from "../../devices/fs.ts";
import { FuseError, type FuseSession } from "../../testing/fuse_client.ts";
import { fsRig } from "./_fs_rig.ts";

const O_RDONLY = 0, O_RDWR = 2, O_TRUNC = 0o1000;
const S_IFMT = 0o170000, S_IFLNK = 0o120000, S_IFBLK = 0o60000;
const enc = new TextEncoder();
const DAY = 86400;

async function errnoOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    if (e instanceof FuseError) return e.errno;
    throw e;
  }
  return 0;
}

/** Every path of a tree (listing it reads directories: call it before aging the tree). */
function paths(root: string, skip: string): string[] {
  const out = [root];
  for (const name of readdirSync(root).sort()) {
    const child = join(root, name);
    if (child === skip) continue;
    if (lstatSync(child).isDirectory()) out.push(...paths(child, skip));
    else out.push(child);
  }
  return out;
}

/** What `lstat` says of each path, access times included: it reads nothing itself. */
function metadata(list: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of list) {
    const st = lstatSync(p, { bigint: true });
    out[p] = [st.mode, st.size, st.nlink, st.ino, st.mtimeNs, st.atimeNs, st.ctimeNs].join(" ");
  }
  return out;
}

/** Names, contents and extended attributes (this reads files: compare access times first). */
function contents(root: string, skip: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of paths(root, skip)) {
    const st = lstatSync(p);
    let what = `${st.mode}`;
    if (st.isFile()) what += " " + createHash("sha256").update(readFileSync(p)).digest("hex");
    if (st.isSymbolicLink()) what += " -> " + readlinkSync(p);
    if (st.isFile() || st.isDirectory()) {
      const list = new Uint8Array(4096);
      const n = listxattr(p, list);
      what += " " + new TextDecoder().decode(list.subarray(0, n));
    }
    out[p] = what;
  }
  return out;
}

/** Old access times, so that any read of an outside file would move them (relatime). */
function age(list: string[]): void {
  const now = Date.now() / 1000;
  for (const p of list) {
    if (!lstatSync(p).isSymbolicLink()) utimesSync(p, now - 2 * DAY, now - 3 * DAY);
  }
}

for (const openat2 of [true, false]) {
  describe(`virtio-fs sandbox, hostile driver (${openat2 ? "openat2" : "openat fallback"})`, () => {
    it("no request reaches outside the shared directory", async () => {
      const rig = fsRig({ openat2 }, (share, outside) => {
        mkdirSync(join(outside, "dir"));
        writeFileSync(join(outside, "dir", "deep"), "deep secret");
        setxattr(join(outside, "secret"), "user.mark", enc.encode("outside"));
        writeFileSync(join(share, "f"), "inside");
        mkdirSync(join(share, "d"));
        // Links planted on the host: relative up and out, absolute, into /proc, a hard link.
        symlinkSync("../outside", join(share, "up"));
        symlinkSync(join(outside, "secret"), join(share, "abs"));
        symlinkSync("/proc/self/root" + outside, join(share, "proc"));
        symlinkSync("/proc/self/cwd", join(share, "cwd"));
        symlinkSync("/etc/passwd", join(share, "passwd"));
      });
      const parent = dirname(rig.share);
      const watched = paths(parent, rig.share);
      const beforeContents = contents(parent, rig.share);
      age(watched);
      const before = metadata(watched);
      const s: FuseSession = rig.session;
      try {
        await s.init();
        const expect = async (what: string, p: Promise<unknown>, errno: number) =>
          assert.equal(await errnoOf(p), errno, what);

        // 1-6: names that leave the directory never reach the host.
        await expect("lookup ..", s.lookup(1, ".."), Errno.EINVAL);
        await expect("lookup ../outside", s.lookup(1, "../outside"), Errno.EINVAL);
        await expect("lookup /etc/passwd", s.lookup(1, "/etc/passwd"), Errno.EINVAL);
        await expect("lookup up/secret", s.lookup(1, "up/secret"), Errno.EINVAL);
        await expect("mkdir ..", s.mkdir(1, ".."), Errno.EINVAL);
        await expect("create ../outside/new", s.create(1, "../outside/new", O_RDWR), Errno.EINVAL);

        // 7-10: a symbolic link is an inode of its own; nothing is looked up through it.
        const up = await s.lookup(1, "up");
        assert.equal(up.attr.mode & S_IFMT, S_IFLNK);
        await expect("lookup through up", s.lookup(up.nodeid, "secret"), Errno.ENOTDIR);
        await expect("opendir up", s.opendir(up.nodeid), Errno.ENOTDIR);
        const proc = await s.lookup(1, "proc");
        await expect(
          "lookup through /proc/self/root",
          s.lookup(proc.nodeid, "secret"),
          Errno.ENOTDIR,
        );
        const cwd = await s.lookup(1, "cwd");
        await expect("lookup through /proc/self/cwd", s.lookup(cwd.nodeid, "share"), Errno.ENOTDIR);

        // 11-16: what a link names is never opened, truncated, changed or listed.
        const abs = await s.lookup(1, "abs");
        await expect("open a link to outside", s.open(abs.nodeid, O_RDWR), Errno.EINVAL);
        await expect("create over a link", s.create(1, "abs", O_RDWR | O_TRUNC), Errno.ELOOP);
        await expect(
          "truncate a link",
          s.setattr(abs.nodeid, { valid: FATTR_SIZE, size: 0 }),
          Errno.EINVAL,
        );
        await expect(
          "chmod a link",
          s.setattr(abs.nodeid, { valid: FATTR_MODE, mode: 0o777 }),
          Errno.EOPNOTSUPP,
        );
        await expect("xattr of a link", s.getxattr(abs.nodeid, "user.mark", 64), Errno.ENODATA);
        await expect(
          "set xattr on a link",
          s.setxattr(abs.nodeid, "user.mark", enc.encode("x")),
          Errno.EPERM,
        );
        await s.setattr(abs.nodeid, { valid: FATTR_MTIME, mtime: 12345 }); // the link's own time

        // 17-20: a link as the parent of a change.
        await expect("mkdir in a link", s.mkdir(up.nodeid, "x"), Errno.ENOTDIR);
        await expect("create in a link", s.create(up.nodeid, "x", O_RDWR), Errno.ENOTDIR);
        await expect("symlink in a link", s.symlink(up.nodeid, "x", "y"), Errno.ENOTDIR);
        await expect("rename into a link", s.rename(1, "f", up.nodeid, "stolen"), Errno.ENOTDIR);
        await expect("unlink in a link", s.unlink(up.nodeid, "secret"), Errno.ENOTDIR);

        // 21-23: hard links: of a link (the link itself), of forged and forgotten nodes.
        const hl = await s.link(abs.nodeid, 1, "abs-hard");
        assert.equal(hl.nodeid, abs.nodeid);
        assert.ok(lstatSync(join(rig.share, "abs-hard")).isSymbolicLink());
        await expect("link a forged node", s.link(999_999, 1, "x"), Errno.EINVAL);
        await expect("link to a forged parent", s.link(abs.nodeid, 424242, "x"), Errno.EINVAL);

        // 24-27: forged node ids and handles, and ids beyond 2^53.
        await expect("getattr forged", s.getattr(31337), Errno.EINVAL);
        await expect("statfs forged", s.statfs(31337), Errno.EINVAL);
        await expect("read forged fh", s.read(1, 31337, 0, 100), Errno.EBADF);
        const raw = await s.raw(FUSE_LINK, { nodeid: 2n ** 63n }, [
          new Uint8Array(8),
          enc.encode("x\0"),
        ], 200);
        assert.equal(-raw.error, Errno.EINVAL);

        // 28-30: rename names that leave the directory.
        const root = new Uint8Array(8);
        root[0] = 1; // newdir: the root
        const rn = async (oldname: string, newname: string) =>
          -(await s.raw(FUSE_RENAME, {}, [
            root,
            enc.encode(oldname + "\0"),
            enc.encode(newname + "\0"),
          ], 64)).error;
        assert.equal(await rn("f", "../outside/f"), Errno.EINVAL);
        assert.equal(await rn("..", "x"), Errno.EINVAL);
        assert.equal(await rn("f", "/tmp/f"), Errno.EINVAL);

        // 31: a device node for a host disk is refused.
        await expect(
          "mknod a block device",
          s.mknod(1, "sda", S_IFBLK | 0o600, 8 << 8),
          Errno.EPERM,
        );

        // 32: READDIRPLUS never looks up "..".
        const h = await s.opendir(1);
        const entries = await s.readdir(1, h.fh, 0n, 4096, true);
        assert.equal(entries.find((e) => e.name === "..")!.entry.nodeid, 0);

        // 33-34: a directory swapped for a link to the outside between requests: the node
        // the driver holds is still the directory it looked up (now renamed), and the new
        // name is a link, never followed.
        const d = await s.lookup(1, "d");
        renameSync(join(rig.share, "d"), join(rig.share, "d.old"));
        symlinkSync("../outside", join(rig.share, "d"));
        await s.create(d.nodeid, "made-after-swap", O_RDWR);
        assert.ok(statSync(join(rig.share, "d.old", "made-after-swap")).isFile());
        const d2 = await s.lookup(1, "d");
        assert.equal(d2.attr.mode & S_IFMT, S_IFLNK);
        await expect(
          "lookup through the swapped link",
          s.lookup(d2.nodeid, "secret"),
          Errno.ENOTDIR,
        );

        // 35: the share itself renamed away on the host: the root node still is the share.
        const st = await s.getattr(1);
        assert.equal(Number(st.ino), statSync(rig.share).ino);
        assert.equal(await s.readlink(abs.nodeid), join(rig.outside, "secret"));
      } finally {
        rig.stop();
      }
      try {
        // Access times first (they show reads), then names, contents and xattrs.
        assert.deepEqual(
          metadata(watched),
          before,
          "nothing outside the share was read or changed",
        );
        assert.deepEqual(
          contents(parent, rig.share),
          beforeContents,
          "nothing outside was created",
        );
      } finally {
        rig.close();
      }
    });
  });
}

describe("virtio-fs sandbox: a hard link planted on the host", () => {
  it("is the host's choice: the server serves it like any file, and only it", async () => {
    // A hard link to an outside file, made by the host's administrator, is the same inode:
    // sharing it is their decision. What the driver can do with it is what it can do with
    // any file of the share; the test pins that it cannot create new such links itself.
    const rig = fsRig({}, (share, outside) => {
      linkSync(join(outside, "secret"), join(share, "planted"));
    });
    try {
      const s = rig.session;
      await s.init();
      const e = await s.lookup(1, "planted");
      assert.equal(e.attr.nlink, 2);
      const { fh } = await s.open(e.nodeid, O_RDONLY);
      assert.equal(
        new TextDecoder().decode(await s.read(e.nodeid, fh, 0, 100)),
        "outside secret\n",
      );
    } finally {
      rig.close();
    }
  });
});
