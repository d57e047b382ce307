import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  AT_REMOVEDIR,
  AT_SYMLINK_FOLLOW,
  AT_SYMLINK_NOFOLLOW,
  close,
  copyFileRange,
  decodeStatx,
  DirentOffset,
  F_OFD_GETLK,
  F_OFD_SETLK,
  F_RDLCK,
  F_UNLCK,
  F_WRLCK,
  faccessat,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  fallocate,
  fchmod,
  fchmodat,
  fchownat,
  fcntlLock,
  fgetxattr,
  flistxattr,
  flock,
  fremovexattr,
  fsetxattr,
  fstatfs,
  ftruncate,
  futimens,
  getdents64,
  getrlimit,
  getxattr,
  hasOpenat2,
  linkat,
  listxattr,
  LOCK_EX,
  LOCK_NB,
  LOCK_UN,
  lseek,
  makedev,
  mkdirat,
  mknodat,
  mmapAnonymous,
  mmapFixed,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_PATH,
  O_RDONLY,
  O_RDWR,
  open,
  openat,
  openat2,
  pread,
  pwrite,
  readlinkat,
  removexattr,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  renameat2,
  RESOLVE_BENEATH,
  RESOLVE_NO_MAGICLINKS,
  RESOLVE_NO_SYMLINKS,
  RLIMIT_NOFILE,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  SEEK_DATA,
  SEEK_END,
  SEEK_HOLE,
  setrlimit,
  setxattr,
  statx,
  StatxOffset,
  symlinkat,
  syncfs,
  SysError,
  umask,
  unlinkat,
  UTIME_NOW,
  UTIME_OMIT,
  utimensat,
  XATTR_CREATE,
} from "../../sys/mod.ts";

let dir = "";
let dirFd = -1;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "virtio-ts-sysfs-"));
  dirFd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
});
after(() => {
  close(dirFd);
  rmSync(dir, { recursive: true, force: true });
});

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof SysError) return e.code;
    throw e;
  }
  return "ok";
}

const enc = new TextEncoder();
const dec = new TextDecoder();
/** NUL-terminated bytes, as a file server passes guest names. */
const z = (s: string) => enc.encode(s + "\0");
const BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

describe("sys/fs: opening relative to directories", () => {
  it("openat opens names under an O_PATH directory, from strings and NUL-terminated bytes", () => {
    writeFileSync(join(dir, "a.txt"), "alpha");
    const fd = openat(dirFd, z("a.txt"), O_RDONLY | O_CLOEXEC);
    const buf = new Uint8Array(16);
    assert.equal(pread(fd, buf, 0), 5);
    close(fd);
    const fd2 = openat(dirFd, "a.txt", O_RDONLY | O_CLOEXEC);
    close(fd2);
    assert.throws(() => openat(dirFd, enc.encode("a.txt"), O_RDONLY), TypeError);
    assert.throws(() => openat(dirFd, enc.encode("a\0b\0"), O_RDONLY), TypeError);
  });

  it("openat2 with RESOLVE_BENEATH refuses .., absolute paths and symbolic links", () => {
    if (!hasOpenat2()) return;
    mkdirSync(join(dir, "inner"));
    symlinkSync("/etc/passwd", join(dir, "inner", "abs"));
    symlinkSync("../../", join(dir, "inner", "up"));
    const inner = openat(dirFd, "inner", O_PATH | O_DIRECTORY | O_CLOEXEC);
    const how = { flags: O_RDONLY | O_CLOEXEC, resolve: BENEATH };
    assert.equal(code(() => openat2(inner, "..", how)), "EXDEV");
    assert.equal(code(() => openat2(inner, "/etc/passwd", how)), "EXDEV");
    assert.equal(code(() => openat2(inner, "abs", how)), "ELOOP");
    assert.equal(code(() => openat2(inner, "up/etc", how)), "ELOOP");
    // O_PATH|O_NOFOLLOW names the link itself, without following it.
    const link = openat2(inner, "abs", {
      flags: O_PATH | O_NOFOLLOW | O_CLOEXEC,
      resolve: BENEATH,
    });
    const st = decodeStatx(statx(link, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
    assert.equal(st.mode & S_IFMT, S_IFLNK);
    const target = new Uint8Array(64);
    const n = readlinkat(link, "", target);
    assert.equal(dec.decode(target.subarray(0, n)), "/etc/passwd");
    close(link);
    close(inner);
  });

  it("a symbolic link's extended attributes through /proc/self/fd stay on the link", () => {
    writeFileSync(join(dir, "target"), "t");
    setxattr(join(dir, "target"), "user.secret", enc.encode("yes"));
    symlinkSync(join(dir, "target"), join(dir, "to-target"));
    const link = openat(dirFd, "to-target", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    const out = new Uint8Array(16);
    // Following the magic link lands on the link inode, never on what it points to.
    assert.equal(code(() => getxattr(`/proc/self/fd/${link}`, "user.secret", out)), "ENODATA");
    close(link);
    const file = openat(dirFd, "target", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    assert.equal(getxattr(`/proc/self/fd/${file}`, "user.secret", out), 3);
    close(file);
  });
});

describe("sys/fs: status", () => {
  it("statx describes files, directories and links; fstatfs the file system", () => {
    writeFileSync(join(dir, "sized"), new Uint8Array(1234));
    const b = statx(dirFd, "sized", AT_SYMLINK_NOFOLLOW);
    const st = decodeStatx(b);
    const ref = statSync(join(dir, "sized"), { bigint: true });
    assert.equal(st.size, 1234);
    assert.equal(st.mode & S_IFMT, S_IFREG);
    assert.equal(st.ino, ref.ino);
    assert.equal(st.nlink, 1);
    assert.equal(new DataView(b.buffer).getUint16(StatxOffset.mode, true), st.mode);
    assert.equal(decodeStatx(statx(dirFd, "", AT_EMPTY_PATH)).mode & S_IFMT, S_IFDIR);
    assert.equal(code(() => statx(dirFd, "missing", 0)), "ENOENT");
    const fs = new DataView(fstatfs(dirFd).buffer);
    assert.ok(fs.getBigUint64(8, true) > 0n, "block size");
    assert.throws(() => statx(dirFd, "sized", 0, undefined, new Uint8Array(10)), RangeError);
  });

  it("faccessat checks permissions", () => {
    writeFileSync(join(dir, "acc"), "x");
    faccessat(dirFd, "acc", 4);
    assert.equal(code(() => faccessat(dirFd, "nope", 0)), "ENOENT");
  });
});

describe("sys/fs: names", () => {
  it("mkdirat, mknodat, symlinkat, linkat, renameat2 and unlinkat", () => {
    mkdirat(dirFd, z("d1"), 0o755);
    assert.ok(statSync(join(dir, "d1")).isDirectory());
    assert.equal(code(() => mkdirat(dirFd, "d1", 0o755)), "EEXIST");
    mknodat(dirFd, "fifo", S_IFIFO | 0o600);
    assert.ok(lstatSync(join(dir, "fifo")).isFIFO());
    mknodat(dirFd, "plain", S_IFREG | 0o640);
    assert.ok(lstatSync(join(dir, "plain")).isFile());
    symlinkat("../anything/at/all", dirFd, "sl");
    assert.equal(readlinkSync(join(dir, "sl")), "../anything/at/all");
    linkat(dirFd, "plain", dirFd, "plain2");
    assert.equal(lstatSync(join(dir, "plain")).nlink, 2);
    // A hard link of what an O_PATH descriptor names, through /proc/self/fd.
    const held = openat(dirFd, "plain", O_PATH | O_CLOEXEC);
    const proc = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
    linkat(proc, String(held), dirFd, "plain3", AT_SYMLINK_FOLLOW);
    assert.equal(lstatSync(join(dir, "plain")).nlink, 3);
    close(proc);
    close(held);
    writeFileSync(join(dir, "x1"), "one");
    writeFileSync(join(dir, "x2"), "two");
    assert.equal(code(() => renameat2(dirFd, "x1", dirFd, "x2", RENAME_NOREPLACE)), "EEXIST");
    renameat2(dirFd, "x1", dirFd, "x2", RENAME_EXCHANGE);
    assert.equal(readFileSync(join(dir, "x2"), "utf8"), "one");
    assert.equal(readFileSync(join(dir, "x1"), "utf8"), "two");
    renameat2(dirFd, "x1", dirFd, "x3");
    assert.ok(!existsSync(join(dir, "x1")));
    unlinkat(dirFd, "x3");
    assert.equal(code(() => unlinkat(dirFd, "d1")), "EISDIR");
    unlinkat(dirFd, "d1", AT_REMOVEDIR);
    assert.ok(!existsSync(join(dir, "d1")));
  });

  it("makedev encodes like glibc", () => {
    assert.equal(makedev(8, 1), 0x801n);
    assert.equal(makedev(259, 65536), (0x103n << 8n) | (0x10000n << 12n));
  });
});

describe("sys/fs: attributes", () => {
  it("fchmodat, fchmod, fchownat and utimensat / futimens", () => {
    writeFileSync(join(dir, "attr"), "a");
    fchmodat(dirFd, "attr", 0o600);
    assert.equal(statSync(join(dir, "attr")).mode & 0o7777, 0o600);
    const fd = openat(dirFd, "attr", O_RDWR | O_CLOEXEC);
    fchmod(fd, 0o640);
    assert.equal(statSync(join(dir, "attr")).mode & 0o7777, 0o640);
    const me = statSync(join(dir, "attr"));
    fchownat(dirFd, "attr", me.uid, -1);
    const path = openat(dirFd, "attr", O_PATH | O_CLOEXEC);
    fchownat(path, "", -1, me.gid, AT_EMPTY_PATH);
    close(path);
    utimensat(dirFd, "attr", { sec: 1000, nsec: 5 }, { sec: 2000, nsec: 7 });
    let st = decodeStatx(statx(dirFd, "attr", 0));
    assert.deepEqual([st.atime.sec, st.atime.nsec, st.mtime.sec, st.mtime.nsec], [
      1000,
      5,
      2000,
      7,
    ]);
    futimens(fd, { sec: 0, nsec: UTIME_OMIT }, { sec: 3000, nsec: 0 });
    st = decodeStatx(statx(dirFd, "attr", 0));
    assert.equal(st.atime.sec, 1000);
    assert.equal(st.mtime.sec, 3000);
    utimensat(dirFd, "attr", { sec: 0, nsec: UTIME_NOW }, { sec: 0, nsec: UTIME_OMIT });
    st = decodeStatx(statx(dirFd, "attr", 0));
    assert.ok(st.atime.sec > 1_600_000_000);
    close(fd);
    assert.throws(
      () => utimensat(dirFd, "attr", { sec: 1.5, nsec: 0 }, { sec: 0, nsec: 0 }),
      RangeError,
    );
  });

  it("path and descriptor extended attributes", () => {
    writeFileSync(join(dir, "xa"), "x");
    const p = join(dir, "xa");
    setxattr(p, "user.one", enc.encode("1"));
    assert.equal(code(() => setxattr(p, "user.one", enc.encode("1"), XATTR_CREATE)), "EEXIST");
    assert.equal(getxattr(p, "user.one", new Uint8Array(0)), 1, "size query");
    assert.equal(code(() => getxattr(p, "user.one", new Uint8Array(0).subarray(0))), "ok");
    const fd = openat(dirFd, "xa", O_RDONLY | O_CLOEXEC);
    fsetxattr(fd, "user.two", enc.encode("22"));
    const v = new Uint8Array(8);
    assert.equal(fgetxattr(fd, "user.two", v), 2);
    assert.equal(dec.decode(v.subarray(0, 2)), "22");
    const list = new Uint8Array(64);
    const n = listxattr(p, list);
    const names = dec.decode(list.subarray(0, n)).split("\0").filter(Boolean).sort();
    assert.deepEqual(names, ["user.one", "user.two"]);
    assert.equal(flistxattr(fd, new Uint8Array(0)), n);
    assert.equal(code(() => getxattr(p, "user.one", new Uint8Array(0).fill(0))), "ok");
    assert.equal(code(() => fgetxattr(fd, "user.two", new Uint8Array(1))), "ERANGE");
    fremovexattr(fd, "user.two");
    removexattr(p, "user.one");
    assert.equal(code(() => getxattr(p, "user.one", v)), "ENODATA");
    close(fd);
  });
});

describe("sys/fs: directories and data", () => {
  it("getdents64 lists entries and lseek resumes after one", () => {
    mkdirSync(join(dir, "list"));
    for (const n of ["a", "bb", "ccc"]) writeFileSync(join(dir, "list", n), n);
    const fd = openat(dirFd, "list", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const buf = new Uint8Array(4096);
    const n = getdents64(fd, buf);
    const v = new DataView(buf.buffer);
    const names: string[] = [];
    const offs: bigint[] = [];
    for (let at = 0; at < n;) {
      const reclen = v.getUint16(at + DirentOffset.reclen, true);
      const nameStart = at + DirentOffset.name;
      const nameEnd = buf.indexOf(0, nameStart);
      names.push(dec.decode(buf.subarray(nameStart, nameEnd)));
      offs.push(v.getBigInt64(at + DirentOffset.off, true));
      at += reclen;
    }
    assert.deepEqual([...names].sort(), [".", "..", "a", "bb", "ccc"]);
    assert.equal(getdents64(fd, buf), 0, "end of directory");
    lseek(fd, offs[offs.length - 2], 0);
    const m = getdents64(fd, buf);
    assert.ok(m > 0 && m < n, "one entry left");
    close(fd);
  });

  it("lseek finds data and holes; copyFileRange copies inside the kernel; fallocate punches", () => {
    const fd = openat(dirFd, "sparse", O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    ftruncate(fd, 1 << 20);
    pwrite(fd, new Uint8Array(4096).fill(9), 512 << 10);
    const data = Number(lseek(fd, 0, SEEK_DATA));
    assert.ok(data <= 512 << 10);
    assert.ok(lseek(fd, data, SEEK_HOLE) > BigInt(data));
    assert.equal(lseek(fd, 0, SEEK_END), 1n << 20n);
    assert.equal(code(() => lseek(fd, 2 << 20, SEEK_DATA)), "ENXIO");
    const out = openat(dirFd, "copy", O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    assert.equal(copyFileRange(fd, 512 << 10, out, 100, 4096), 4096);
    const back = new Uint8Array(4096);
    assert.equal(pread(out, back, 100), 4096);
    assert.ok(back.every((b) => b === 9));
    fallocate(out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096 + 100);
    assert.equal(pread(out, back, 100), 4096);
    assert.ok(back.every((b) => b === 0));
    syncfs(out);
    close(fd);
    close(out);
  });
});

describe("sys/fs: locks and limits", () => {
  it("open-file-description record locks conflict between two descriptions", () => {
    writeFileSync(join(dir, "lk"), "0123456789");
    const a = openat(dirFd, "lk", O_RDWR | O_CLOEXEC);
    const b = openat(dirFd, "lk", O_RDWR | O_CLOEXEC);
    fcntlLock(a, F_OFD_SETLK, { type: F_WRLCK, whence: 0, start: 0, len: 5, pid: 0 });
    const seen = fcntlLock(b, F_OFD_GETLK, { type: F_RDLCK, whence: 0, start: 2, len: 1, pid: 0 });
    assert.equal(seen.type, F_WRLCK);
    assert.equal(seen.start, 0);
    assert.equal(seen.len, 5);
    assert.equal(seen.pid, -1);
    const busy = code(() =>
      fcntlLock(b, F_OFD_SETLK, { type: F_RDLCK, whence: 0, start: 0, len: 1, pid: 0 })
    );
    assert.ok(busy === "EAGAIN" || busy === "EACCES", busy);
    fcntlLock(a, F_OFD_SETLK, { type: F_UNLCK, whence: 0, start: 0, len: 5, pid: 0 });
    fcntlLock(b, F_OFD_SETLK, { type: F_RDLCK, whence: 0, start: 0, len: 1, pid: 0 });
    flock(a, LOCK_EX | LOCK_NB);
    assert.equal(code(() => flock(b, LOCK_EX | LOCK_NB)), "EAGAIN");
    flock(a, LOCK_UN);
    close(a);
    close(b);
  });

  it("getrlimit / setrlimit and umask", () => {
    const lim = getrlimit(RLIMIT_NOFILE);
    assert.ok(lim.soft > 0 && lim.soft <= lim.hard);
    setrlimit(RLIMIT_NOFILE, { soft: lim.soft, hard: lim.hard });
    assert.deepEqual(getrlimit(RLIMIT_NOFILE), lim);
    assert.equal(
      code(() => setrlimit(RLIMIT_NOFILE, { soft: lim.hard + 1, hard: lim.hard })),
      "EINVAL",
    );
    const old = umask(0o077);
    assert.equal(umask(old), 0o077);
  });
});

describe("sys/mman: mmapFixed", () => {
  it("places a file's pages inside an anonymous reservation and back", () => {
    writeFileSync(join(dir, "pages"), new Uint8Array(8192).fill(0x5a));
    const fd = openat(dirFd, "pages", O_RDWR | O_CLOEXEC);
    const win = mmapAnonymous(4 * 4096);
    const bytes = new Uint8Array(win.buffer);
    bytes.fill(1);
    mmapFixed(win.address + 4096n, 8192, fd, 0);
    assert.equal(bytes[0], 1);
    assert.equal(bytes[4096], 0x5a);
    assert.equal(bytes[3 * 4096 - 1], 0x5a);
    bytes[4096] = 0x33; // shared: reaches the file
    const one = new Uint8Array(1);
    pread(fd, one, 0);
    assert.equal(one[0], 0x33);
    mmapFixed(win.address + 4096n, 4096, -1);
    assert.equal(bytes[4096], 0, "anonymous again");
    assert.equal(bytes[2 * 4096], 0x5a);
    win.unmap();
    close(fd);
    assert.equal(code(() => mmapFixed(0x1000n, 4096, 987654)), "EBADF");
  });
});

describe("sys/fs: argument checks", () => {
  it("refuses non-integer descriptors and bad counts before calling libc", () => {
    assert.throws(() => openat(1.5, "x", 0), TypeError);
    assert.throws(() => copyFileRange(0, -1, 1, 0, 1), RangeError);
    assert.throws(() => lseek(0, Number.MAX_VALUE, 0), RangeError);
    assert.equal(code(() => statx(AT_FDCWD, "/", 0)), "ok");
  });
});
