/**
 * File-system calls: the `*at` family that works relative to directory descriptors (and
 * `openat2(2)` with its `RESOLVE_*` confinement), `statx(2)`, symbolic and hard links,
 * renames, attributes and times, directory entries (`getdents64(2)`), extended attributes,
 * `lseek(2)` with `SEEK_DATA`/`SEEK_HOLE`, `copy_file_range(2)`, record and `flock(2)`
 * locks, `fstatfs(2)`, `syncfs(2)`, resource limits and the umask.
 *
 * Paths are `string`s or NUL-terminated `Uint8Array`s: bytes go to the kernel as they are,
 * so names that are not UTF-8 pass through unchanged, and a caller that already holds the
 * bytes (a file server reading names from a guest) allocates nothing.
 *
 * @module
 */

import { addressOf, check, cString, Errno, fail, libc, retry, SysError } from "./libc.ts";

// ---------------------------------------------------------------------------
// Constants (Linux; the same on x86-64 and arm64 unless noted)

/** `*at` calls: the directory is the current working directory. */
export const AT_FDCWD: number = -100;
/** `*at` calls: do not follow a trailing symbolic link. */
export const AT_SYMLINK_NOFOLLOW = 0x100;
/** unlinkat(2): remove a directory. */
export const AT_REMOVEDIR = 0x200;
/** faccessat(2): check with the effective ids. */
export const AT_EACCESS = 0x200;
/** linkat(2): follow a trailing symbolic link of the old path. */
export const AT_SYMLINK_FOLLOW = 0x400;
/** `*at` calls: an empty path means the descriptor itself. */
export const AT_EMPTY_PATH = 0x1000;

/** open(2): a descriptor that only names the file (no I/O; usable as a `*at` anchor). */
export const O_PATH = 0o10000000;
/** open(2): do not update the access time. */
export const O_NOATIME = 0o1000000;

/** openat2(2): refuse to cross mount points. */
export const RESOLVE_NO_XDEV = 0x01;
/** openat2(2): refuse "magic links" such as `/proc/self/fd/N`. */
export const RESOLVE_NO_MAGICLINKS = 0x02;
/** openat2(2): refuse every symbolic link (a trailing one too, unless `O_PATH|O_NOFOLLOW`). */
export const RESOLVE_NO_SYMLINKS = 0x04;
/** openat2(2): the path must stay beneath the directory (no `..` above it, no absolute link). */
export const RESOLVE_BENEATH = 0x08;
/** openat2(2): resolve as if the directory were the root. */
export const RESOLVE_IN_ROOT = 0x10;

/** statx(2): type, mode, nlink, uid, gid, times, ino, size and blocks. */
export const STATX_BASIC_STATS = 0x7ff;
/** Size of `struct statx`. */
export const STATX_BUFFER_SIZE = 256;

/** File type mask of a mode. */
export const S_IFMT = 0o170000;
/** Socket. */
export const S_IFSOCK = 0o140000;
/** Symbolic link. */
export const S_IFLNK = 0o120000;
/** Regular file. */
export const S_IFREG = 0o100000;
/** Block device. */
export const S_IFBLK = 0o060000;
/** Directory. */
export const S_IFDIR = 0o040000;
/** Character device. */
export const S_IFCHR = 0o020000;
/** FIFO. */
export const S_IFIFO = 0o010000;

/** renameat2(2): fail if the new name exists. */
export const RENAME_NOREPLACE = 1;
/** renameat2(2): swap the two names atomically. */
export const RENAME_EXCHANGE = 2;
/** renameat2(2): leave a whiteout at the old name. */
export const RENAME_WHITEOUT = 4;

/** setxattr(2): fail if the attribute exists. */
export const XATTR_CREATE = 1;
/** setxattr(2): fail if the attribute does not exist. */
export const XATTR_REPLACE = 2;

/** lseek(2): from the start. */
export const SEEK_SET = 0;
/** lseek(2): from the current position. */
export const SEEK_CUR = 1;
/** lseek(2): from the end. */
export const SEEK_END = 2;
/** lseek(2): the next byte of data at or after the offset. */
export const SEEK_DATA = 3;
/** lseek(2): the next hole at or after the offset. */
export const SEEK_HOLE = 4;

/** utimensat(2): set this time to the current time. */
export const UTIME_NOW = (1 << 30) - 1;
/** utimensat(2): leave this time unchanged. */
export const UTIME_OMIT = (1 << 30) - 2;

/** fcntl(2): test a process-associated record lock. */
export const F_GETLK = 5;
/** fcntl(2): set a process-associated record lock without waiting. */
export const F_SETLK = 6;
/** fcntl(2): set a process-associated record lock, waiting. */
export const F_SETLKW = 7;
/** fcntl(2): test an open-file-description lock. */
export const F_OFD_GETLK = 36;
/** fcntl(2): set an open-file-description lock without waiting. */
export const F_OFD_SETLK = 37;
/** fcntl(2): set an open-file-description lock, waiting. */
export const F_OFD_SETLKW = 38;
/** Lock type: shared (read). */
export const F_RDLCK = 0;
/** Lock type: exclusive (write). */
export const F_WRLCK = 1;
/** Lock type: unlock. */
export const F_UNLCK = 2;

/** flock(2): shared lock. */
export const LOCK_SH = 1;
/** flock(2): exclusive lock. */
export const LOCK_EX = 2;
/** flock(2): do not wait. */
export const LOCK_NB = 4;
/** flock(2): unlock. */
export const LOCK_UN = 8;

/** Resource limit: open file descriptors. */
export const RLIMIT_NOFILE = 7;

/** Byte offsets of the fields of `struct statx` (the same layout on every architecture). */
export const StatxOffset = {
  /** u32: which fields are valid (`STATX_*`). */
  mask: 0,
  /** u32: preferred I/O block size. */
  blksize: 4,
  /** u32: number of hard links. */
  nlink: 16,
  /** u32. */
  uid: 20,
  /** u32. */
  gid: 24,
  /** u16: type and permission bits. */
  mode: 28,
  /** u64: inode number. */
  ino: 32,
  /** u64: size in bytes. */
  size: 40,
  /** u64: 512-byte blocks allocated. */
  blocks: 48,
  /** Timestamp: i64 seconds then u32 nanoseconds. */
  atime: 64,
  /** Timestamp of creation. */
  btime: 80,
  /** Timestamp of the last status change. */
  ctime: 96,
  /** Timestamp of the last modification. */
  mtime: 112,
  /** u32 each: the device a special file stands for. */
  rdevMajor: 128,
  /** u32. */
  rdevMinor: 132,
  /** u32 each: the device holding the file. */
  devMajor: 136,
  /** u32. */
  devMinor: 140,
} as const;

/** Size of `struct statfs` (LP64). */
export const STATFS_SIZE = 120;
/** Size of `struct flock` (LP64). */
export const FLOCK_SIZE = 32;

// ---------------------------------------------------------------------------
// Helpers

/** A path: a string, or its bytes ending in one NUL (and containing no other). */
export type PathArg = string | Uint8Array;

const EMPTY_PATH = new Uint8Array(1);
const ONE_BYTE = new Uint8Array(1);

function pathBytes(path: PathArg): Uint8Array {
  if (typeof path === "string") return path === "" ? EMPTY_PATH : cString(path);
  if (path.length === 0 || path.indexOf(0) !== path.length - 1) {
    throw new TypeError("A path given as bytes must end with its only NUL byte");
  }
  return path;
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd)) throw new TypeError(`Invalid file descriptor: ${fd}`);
}

function checkCount(name: string, n: number): bigint {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`Invalid ${name}: ${n}`);
  return BigInt(n);
}

/** A buffer the kernel may write to: never empty, so every runtime passes a real pointer. */
function outBuffer(buf: Uint8Array): Uint8Array {
  return buf.byteLength === 0 ? ONE_BYTE : buf;
}

// ---------------------------------------------------------------------------
// Opening

/**
 * Opens `path` relative to the directory `dirfd` (openat(2)).
 *
 * @param dirfd A directory descriptor (an `O_PATH` one will do), or {@link AT_FDCWD}.
 * @param path The path.
 * @param flags `O_*` flags.
 * @param mode Permission bits of a created file (before the umask).
 * @returns The new descriptor.
 * @throws {SysError} When openat(2) fails.
 */
export function openat(dirfd: number, path: PathArg, flags: number, mode = 0): number {
  checkFd(dirfd);
  const p = pathBytes(path);
  return retry("openat", () => libc().openat(dirfd, p, flags, mode));
}

/** What {@link openat2} does: `struct open_how`. */
export interface OpenHow {
  /** `O_*` flags. */
  flags: number;
  /** Permission bits of a created file (only with `O_CREAT`/`O_TMPFILE`; else 0). */
  mode?: number;
  /** `RESOLVE_*` flags. */
  resolve: number;
}

const SYS_OPENAT2 = 437n; // the same number on every architecture
const howBytes = new Uint8Array(24);
const howView = new DataView(howBytes.buffer);

/**
 * Opens `path` relative to `dirfd` with resolution rules (openat2(2), Linux 5.6): with
 * {@link RESOLVE_BENEATH} the kernel refuses any path that would leave `dirfd` — through
 * `..`, an absolute path or a symbolic link — atomically, with no race against renames.
 *
 * @example Open a name beneath a directory, never following links
 * ```ts ignore
 * const fd = openat2(root, "a/b", {
 *   flags: O_PATH | O_NOFOLLOW | O_CLOEXEC,
 *   resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
 * });
 * ```
 *
 * @param dirfd A directory descriptor, or {@link AT_FDCWD}.
 * @param path The path.
 * @param how Flags, mode and resolution rules.
 * @returns The new descriptor.
 * @throws {SysError} When openat2(2) fails: `EXDEV` for a path that leaves `dirfd`, `ELOOP`
 *   for a refused link, `ENOSYS` on kernels without it (see {@link hasOpenat2}).
 */
export function openat2(dirfd: number, path: PathArg, how: OpenHow): number {
  checkFd(dirfd);
  const p = pathBytes(path);
  howView.setBigUint64(0, BigInt(how.flags >>> 0), true);
  howView.setBigUint64(8, BigInt((how.mode ?? 0) >>> 0), true);
  howView.setBigUint64(16, BigInt(how.resolve >>> 0), true);
  const pathAddr = addressOf(p);
  const howAddr = addressOf(howBytes);
  const fd = BigInt.asUintN(64, BigInt(dirfd));
  // `p` and `howBytes` stay referenced (alive and in place) for the duration of the call.
  return retry("openat2", () => libc().syscall5(SYS_OPENAT2, fd, pathAddr, howAddr, 24n, 0n));
}

let openat2Support: boolean | undefined;

/**
 * Whether this kernel has openat2(2) (Linux 5.6 and later), probed once.
 *
 * @returns True when openat2 works.
 */
export function hasOpenat2(): boolean {
  if (openat2Support !== undefined) return openat2Support;
  try {
    const fd = openat2(AT_FDCWD, "/", { flags: O_PATH | 0o2000000, resolve: 0 });
    libc().close(fd);
    openat2Support = true;
  } catch (err) {
    if (!(err instanceof SysError) || err.errno !== Errno.ENOSYS) throw err;
    openat2Support = false;
  }
  return openat2Support;
}

// ---------------------------------------------------------------------------
// Status

/**
 * File status (statx(2)) into `out`; read it with {@link StatxOffset} or {@link decodeStatx}.
 * `statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)` describes what `fd` names, even an
 * `O_PATH` descriptor of a symbolic link.
 *
 * @param dirfd A directory descriptor, {@link AT_FDCWD}, or the file itself with an empty path.
 * @param path The path.
 * @param flags `AT_*` flags.
 * @param mask `STATX_*` fields wanted (default {@link STATX_BASIC_STATS}).
 * @param out A buffer of at least {@link STATX_BUFFER_SIZE} bytes (default: a new one).
 * @returns `out`.
 * @throws {SysError} When statx(2) fails.
 * @throws {RangeError} When `out` is too small.
 */
export function statx(
  dirfd: number,
  path: PathArg,
  flags: number,
  mask: number = STATX_BASIC_STATS,
  out: Uint8Array = new Uint8Array(STATX_BUFFER_SIZE),
): Uint8Array {
  checkFd(dirfd);
  if (out.byteLength < STATX_BUFFER_SIZE) throw new RangeError("statx needs a 256-byte buffer");
  const p = pathBytes(path);
  retry("statx", () => libc().statx(dirfd, p, flags, mask, out));
  return out;
}

/** A decoded `struct statx` (the basic fields). */
export interface Statx {
  /** Type and permission bits. */
  mode: number;
  /** Hard links. */
  nlink: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** Inode number. */
  ino: bigint;
  /** Size in bytes. */
  size: number;
  /** 512-byte blocks allocated. */
  blocks: number;
  /** Preferred I/O size. */
  blksize: number;
  /** Access time: seconds and nanoseconds. */
  atime: { sec: number; nsec: number };
  /** Modification time. */
  mtime: { sec: number; nsec: number };
  /** Status change time. */
  ctime: { sec: number; nsec: number };
  /** Device of a special file: major and minor. */
  rdev: { major: number; minor: number };
  /** Device holding the file: major and minor. */
  dev: { major: number; minor: number };
}

/**
 * Decode the basic fields of a `struct statx`.
 *
 * @param buf What {@link statx} filled.
 * @returns The fields.
 */
export function decodeStatx(buf: Uint8Array): Statx {
  const v = new DataView(buf.buffer, buf.byteOffset, STATX_BUFFER_SIZE);
  const O = StatxOffset;
  const time = (at: number) => ({
    sec: Number(v.getBigInt64(at, true)),
    nsec: v.getUint32(at + 8, true),
  });
  return {
    mode: v.getUint16(O.mode, true),
    nlink: v.getUint32(O.nlink, true),
    uid: v.getUint32(O.uid, true),
    gid: v.getUint32(O.gid, true),
    ino: v.getBigUint64(O.ino, true),
    size: Number(v.getBigUint64(O.size, true)),
    blocks: Number(v.getBigUint64(O.blocks, true)),
    blksize: v.getUint32(O.blksize, true),
    atime: time(O.atime),
    mtime: time(O.mtime),
    ctime: time(O.ctime),
    rdev: { major: v.getUint32(O.rdevMajor, true), minor: v.getUint32(O.rdevMinor, true) },
    dev: { major: v.getUint32(O.devMajor, true), minor: v.getUint32(O.devMinor, true) },
  };
}

/**
 * File system statistics (fstatfs(2)) into `out` (`struct statfs`, LP64 layout: eleven
 * 64-bit words — type, bsize, blocks, bfree, bavail, files, ffree, fsid, namelen, frsize,
 * flags). Works on `O_PATH` descriptors.
 *
 * @param fd The descriptor.
 * @param out A buffer of at least {@link STATFS_SIZE} bytes (default: a new one).
 * @returns `out`.
 * @throws {SysError} When fstatfs(2) fails.
 */
export function fstatfs(fd: number, out: Uint8Array = new Uint8Array(STATFS_SIZE)): Uint8Array {
  checkFd(fd);
  if (out.byteLength < STATFS_SIZE) throw new RangeError("fstatfs needs a 120-byte buffer");
  retry("fstatfs", () => libc().fstatfs(fd, out));
  return out;
}

/**
 * Checks access permissions (faccessat(2)).
 *
 * @param dirfd A directory descriptor or {@link AT_FDCWD}.
 * @param path The path.
 * @param mode `F_OK` (0) or a mask of `R_OK` (4), `W_OK` (2), `X_OK` (1).
 * @param flags `AT_*` flags.
 * @throws {SysError} When access is refused (`EACCES`) or the call fails.
 */
export function faccessat(dirfd: number, path: PathArg, mode: number, flags = 0): void {
  checkFd(dirfd);
  const p = pathBytes(path);
  retry("faccessat", () => libc().faccessat(dirfd, p, mode, flags));
}

// ---------------------------------------------------------------------------
// Creating, linking and removing names

/**
 * Creates a directory (mkdirat(2)).
 *
 * @param dirfd The parent directory, or {@link AT_FDCWD}.
 * @param path The name.
 * @param mode Permission bits (before the umask).
 * @throws {SysError} When mkdirat(2) fails.
 */
export function mkdirat(dirfd: number, path: PathArg, mode: number): void {
  checkFd(dirfd);
  const p = pathBytes(path);
  retry("mkdirat", () => libc().mkdirat(dirfd, p, mode));
}

/**
 * Creates a file system node (mknodat(2)): a regular file, FIFO, socket or device.
 *
 * @param dirfd The parent directory, or {@link AT_FDCWD}.
 * @param path The name.
 * @param mode Type (`S_IF*`) and permission bits.
 * @param dev The device number of a device node, as glibc's `makedev` encodes it.
 * @throws {SysError} When mknodat(2) fails.
 */
export function mknodat(dirfd: number, path: PathArg, mode: number, dev: bigint = 0n): void {
  checkFd(dirfd);
  const p = pathBytes(path);
  retry("mknodat", () => libc().mknodat(dirfd, p, mode, BigInt.asUintN(64, dev)));
}

/**
 * glibc's `makedev`: a 64-bit `dev_t` from a major and minor number.
 *
 * @param major The major number.
 * @param minor The minor number.
 * @returns The device number.
 */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) |
    (mi & 0xffn);
}

/**
 * Creates a symbolic link `path` holding `target` (symlinkat(2)). The target is stored as
 * it is and never resolved here.
 *
 * @param target The link's content.
 * @param dirfd The parent directory, or {@link AT_FDCWD}.
 * @param path The link's name.
 * @throws {SysError} When symlinkat(2) fails.
 */
export function symlinkat(target: PathArg, dirfd: number, path: PathArg): void {
  checkFd(dirfd);
  const t = pathBytes(target);
  const p = pathBytes(path);
  retry("symlinkat", () => libc().symlinkat(t, dirfd, p));
}

/**
 * Reads a symbolic link's content (readlinkat(2)) into `buf`, without a NUL. With an empty
 * path, `dirfd` is the link itself (an `O_PATH|O_NOFOLLOW` descriptor).
 *
 * @param dirfd The directory, or the link with an empty path.
 * @param path The path.
 * @param buf Where the content goes.
 * @returns Its length (equal to `buf.length` when it may have been cut short).
 * @throws {SysError} When readlinkat(2) fails (`EINVAL` when it is no symbolic link).
 */
export function readlinkat(dirfd: number, path: PathArg, buf: Uint8Array): number {
  checkFd(dirfd);
  const p = pathBytes(path);
  const out = outBuffer(buf);
  return retry("readlinkat", () => libc().readlinkat(dirfd, p, out, BigInt(buf.byteLength)));
}

/**
 * Makes a new hard link (linkat(2)).
 *
 * @param olddirfd The old directory, or the file itself with `AT_EMPTY_PATH`.
 * @param oldpath The existing path.
 * @param newdirfd The new parent directory.
 * @param newpath The new name.
 * @param flags `AT_SYMLINK_FOLLOW` and/or `AT_EMPTY_PATH`.
 * @throws {SysError} When linkat(2) fails.
 */
export function linkat(
  olddirfd: number,
  oldpath: PathArg,
  newdirfd: number,
  newpath: PathArg,
  flags = 0,
): void {
  checkFd(olddirfd);
  checkFd(newdirfd);
  const o = pathBytes(oldpath);
  const n = pathBytes(newpath);
  retry("linkat", () => libc().linkat(olddirfd, o, newdirfd, n, flags));
}

/**
 * Removes a name (unlinkat(2)); a directory with {@link AT_REMOVEDIR}.
 *
 * @param dirfd The parent directory, or {@link AT_FDCWD}.
 * @param path The name.
 * @param flags 0 or {@link AT_REMOVEDIR}.
 * @throws {SysError} When unlinkat(2) fails.
 */
export function unlinkat(dirfd: number, path: PathArg, flags = 0): void {
  checkFd(dirfd);
  const p = pathBytes(path);
  retry("unlinkat", () => libc().unlinkat(dirfd, p, flags));
}

/**
 * Renames (renameat2(2)), optionally without replacing ({@link RENAME_NOREPLACE}) or
 * swapping the two names ({@link RENAME_EXCHANGE}).
 *
 * @param olddirfd The old parent directory.
 * @param oldpath The old name.
 * @param newdirfd The new parent directory.
 * @param newpath The new name.
 * @param flags `RENAME_*` flags.
 * @throws {SysError} When renameat2(2) fails.
 */
export function renameat2(
  olddirfd: number,
  oldpath: PathArg,
  newdirfd: number,
  newpath: PathArg,
  flags = 0,
): void {
  checkFd(olddirfd);
  checkFd(newdirfd);
  const o = pathBytes(oldpath);
  const n = pathBytes(newpath);
  retry("renameat2", () => libc().renameat2(olddirfd, o, newdirfd, n, flags));
}

// ---------------------------------------------------------------------------
// Attributes

/**
 * Changes permission bits (fchmodat(2)).
 *
 * @param dirfd A directory descriptor or {@link AT_FDCWD}.
 * @param path The path.
 * @param mode The new permission bits.
 * @param flags `AT_*` flags (glibc emulates `AT_SYMLINK_NOFOLLOW`).
 * @throws {SysError} When fchmodat(2) fails.
 */
export function fchmodat(dirfd: number, path: PathArg, mode: number, flags = 0): void {
  checkFd(dirfd);
  const p = pathBytes(path);
  retry("fchmodat", () => libc().fchmodat(dirfd, p, mode, flags));
}

/**
 * Changes permission bits of an open file (fchmod(2)).
 *
 * @param fd The descriptor (not `O_PATH`).
 * @param mode The new permission bits.
 * @throws {SysError} When fchmod(2) fails.
 */
export function fchmod(fd: number, mode: number): void {
  checkFd(fd);
  retry("fchmod", () => libc().fchmod(fd, mode));
}

/**
 * Changes owner and group (fchownat(2)); -1 leaves one unchanged. With `AT_EMPTY_PATH` and
 * an empty path it works on an `O_PATH` descriptor.
 *
 * @param dirfd A directory descriptor, {@link AT_FDCWD}, or the file with an empty path.
 * @param path The path.
 * @param uid New owner, or -1.
 * @param gid New group, or -1.
 * @param flags `AT_*` flags.
 * @throws {SysError} When fchownat(2) fails.
 */
export function fchownat(
  dirfd: number,
  path: PathArg,
  uid: number,
  gid: number,
  flags = 0,
): void {
  checkFd(dirfd);
  const p = pathBytes(path);
  retry("fchownat", () => libc().fchownat(dirfd, p, uid >>> 0, gid >>> 0, flags));
}

/** One timestamp for {@link utimensat}: `nsec` may be {@link UTIME_NOW} or {@link UTIME_OMIT}. */
export interface FileTime {
  /** Seconds since the epoch. */
  sec: number;
  /** Nanoseconds, or `UTIME_NOW` / `UTIME_OMIT`. */
  nsec: number;
}

const timesBytes = new Uint8Array(32);
const timesView = new DataView(timesBytes.buffer);

function fillTimes(atime: FileTime, mtime: FileTime): void {
  for (const [i, t] of [atime, mtime].entries()) {
    if (!Number.isSafeInteger(t.sec) || !Number.isInteger(t.nsec) || t.nsec < 0) {
      throw new RangeError(`Invalid time: ${t.sec}.${t.nsec}`);
    }
    timesView.setBigInt64(16 * i, BigInt(t.sec), true);
    timesView.setBigInt64(16 * i + 8, BigInt(t.nsec), true);
  }
}

/**
 * Sets access and modification times (utimensat(2)).
 *
 * @param dirfd A directory descriptor or {@link AT_FDCWD}.
 * @param path The path.
 * @param atime Access time.
 * @param mtime Modification time.
 * @param flags `AT_*` flags.
 * @throws {SysError} When utimensat(2) fails.
 */
export function utimensat(
  dirfd: number,
  path: PathArg,
  atime: FileTime,
  mtime: FileTime,
  flags = 0,
): void {
  checkFd(dirfd);
  const p = pathBytes(path);
  fillTimes(atime, mtime);
  retry("utimensat", () => libc().utimensat(dirfd, p, timesBytes, flags));
}

/**
 * Sets access and modification times of an open file (futimens(3)).
 *
 * @param fd The descriptor (not `O_PATH`).
 * @param atime Access time.
 * @param mtime Modification time.
 * @throws {SysError} When the call fails.
 */
export function futimens(fd: number, atime: FileTime, mtime: FileTime): void {
  checkFd(fd);
  fillTimes(atime, mtime);
  retry("futimens", () => libc().futimens(fd, timesBytes));
}

// ---------------------------------------------------------------------------
// Directories

/** Byte offsets in one `struct linux_dirent64` record. */
export const DirentOffset = {
  /** u64 inode number. */
  ino: 0,
  /** i64: the offset of the next record (an opaque cookie for `lseek`). */
  off: 8,
  /** u16: this record's length. */
  reclen: 16,
  /** u8: `DT_*` type. */
  type: 18,
  /** The NUL-terminated name. */
  name: 19,
} as const;

/**
 * Reads directory entries (getdents64(2)) into `buf` as `struct linux_dirent64` records
 * (see {@link DirentOffset}); `lseek(fd, off, SEEK_SET)` with a record's `off` resumes after it.
 *
 * @param fd A directory opened for reading.
 * @param buf Where the records go.
 * @returns Bytes filled; 0 at the end of the directory.
 * @throws {SysError} When getdents64(2) fails (`EINVAL` when `buf` holds no record).
 */
export function getdents64(fd: number, buf: Uint8Array): number {
  checkFd(fd);
  const out = outBuffer(buf);
  return retry("getdents64", () => libc().getdents64(fd, out, BigInt(buf.byteLength)));
}

// ---------------------------------------------------------------------------
// Extended attributes

/**
 * Reads an extended attribute (getxattr(2)), following a trailing symbolic link; an empty
 * `value` asks for the size only.
 *
 * @param path The file.
 * @param name The attribute (`user.…`).
 * @param value Where the value goes.
 * @returns The value's length.
 * @throws {SysError} When getxattr(2) fails (`ENODATA`: no such attribute; `ERANGE`: `value` too small).
 */
export function getxattr(path: PathArg, name: PathArg, value: Uint8Array): number {
  const p = pathBytes(path);
  const n = pathBytes(name);
  const out = outBuffer(value);
  return retry("getxattr", () => libc().getxattr(p, n, out, BigInt(value.byteLength)));
}

/**
 * Sets an extended attribute (setxattr(2)).
 *
 * @param path The file.
 * @param name The attribute.
 * @param value The value.
 * @param flags 0, {@link XATTR_CREATE} or {@link XATTR_REPLACE}.
 * @throws {SysError} When setxattr(2) fails.
 */
export function setxattr(path: PathArg, name: PathArg, value: Uint8Array, flags = 0): void {
  const p = pathBytes(path);
  const n = pathBytes(name);
  const v = outBuffer(value);
  retry("setxattr", () => libc().setxattr(p, n, v, BigInt(value.byteLength), flags));
}

/**
 * Lists extended attribute names (listxattr(2)), each NUL-terminated; an empty `list` asks
 * for the size only.
 *
 * @param path The file.
 * @param list Where the names go.
 * @returns The list's length.
 * @throws {SysError} When listxattr(2) fails.
 */
export function listxattr(path: PathArg, list: Uint8Array): number {
  const p = pathBytes(path);
  const out = outBuffer(list);
  return retry("listxattr", () => libc().listxattr(p, out, BigInt(list.byteLength)));
}

/**
 * Removes an extended attribute (removexattr(2)).
 *
 * @param path The file.
 * @param name The attribute.
 * @throws {SysError} When removexattr(2) fails.
 */
export function removexattr(path: PathArg, name: PathArg): void {
  const p = pathBytes(path);
  const n = pathBytes(name);
  retry("removexattr", () => libc().removexattr(p, n));
}

/**
 * Reads an extended attribute of an open file (fgetxattr(2); not on `O_PATH` descriptors).
 *
 * @param fd The descriptor.
 * @param name The attribute.
 * @param value Where the value goes; empty to ask for the size.
 * @returns The value's length.
 * @throws {SysError} When fgetxattr(2) fails.
 */
export function fgetxattr(fd: number, name: PathArg, value: Uint8Array): number {
  checkFd(fd);
  const n = pathBytes(name);
  const out = outBuffer(value);
  return retry("fgetxattr", () => libc().fgetxattr(fd, n, out, BigInt(value.byteLength)));
}

/**
 * Sets an extended attribute of an open file (fsetxattr(2)).
 *
 * @param fd The descriptor.
 * @param name The attribute.
 * @param value The value.
 * @param flags 0, {@link XATTR_CREATE} or {@link XATTR_REPLACE}.
 * @throws {SysError} When fsetxattr(2) fails.
 */
export function fsetxattr(fd: number, name: PathArg, value: Uint8Array, flags = 0): void {
  checkFd(fd);
  const n = pathBytes(name);
  const v = outBuffer(value);
  retry("fsetxattr", () => libc().fsetxattr(fd, n, v, BigInt(value.byteLength), flags));
}

/**
 * Lists extended attribute names of an open file (flistxattr(2)).
 *
 * @param fd The descriptor.
 * @param list Where the names go; empty to ask for the size.
 * @returns The list's length.
 * @throws {SysError} When flistxattr(2) fails.
 */
export function flistxattr(fd: number, list: Uint8Array): number {
  checkFd(fd);
  const out = outBuffer(list);
  return retry("flistxattr", () => libc().flistxattr(fd, out, BigInt(list.byteLength)));
}

/**
 * Removes an extended attribute of an open file (fremovexattr(2)).
 *
 * @param fd The descriptor.
 * @param name The attribute.
 * @throws {SysError} When fremovexattr(2) fails.
 */
export function fremovexattr(fd: number, name: PathArg): void {
  checkFd(fd);
  const n = pathBytes(name);
  retry("fremovexattr", () => libc().fremovexattr(fd, n));
}

// ---------------------------------------------------------------------------
// Data

/**
 * Moves the file position (lseek(2)); with {@link SEEK_DATA}/{@link SEEK_HOLE} it finds data
 * and holes of a sparse file. Offsets are bigints because a directory's positions are
 * opaque 64-bit cookies (ext4 hashes), beyond the safe integers.
 *
 * @param fd The descriptor.
 * @param offset The offset (a bigint, or a safe integer).
 * @param whence `SEEK_*`.
 * @returns The resulting offset.
 * @throws {SysError} When lseek(2) fails (`ENXIO` past the last data or hole).
 */
export function lseek(fd: number, offset: number | bigint, whence: number): bigint {
  checkFd(fd);
  if (typeof offset === "number" && !Number.isSafeInteger(offset)) {
    throw new RangeError(`Invalid offset: ${offset}`);
  }
  const r = libc().lseek(fd, BigInt.asIntN(64, BigInt(offset)), whence);
  if (r < 0n) fail("lseek");
  return r;
}

const offInBytes = new Uint8Array(8);
const offOutBytes = new Uint8Array(8);
const offInView = new DataView(offInBytes.buffer);
const offOutView = new DataView(offOutBytes.buffer);

/**
 * Copies a byte range between files inside the kernel (copy_file_range(2)), possibly
 * sharing extents; the file positions are not used or moved.
 *
 * @param fdIn Source.
 * @param offIn Source offset.
 * @param fdOut Destination.
 * @param offOut Destination offset.
 * @param length Most bytes to copy.
 * @returns Bytes copied (fewer at the source's end; 0 at or past it).
 * @throws {SysError} When copy_file_range(2) fails.
 */
export function copyFileRange(
  fdIn: number,
  offIn: number,
  fdOut: number,
  offOut: number,
  length: number,
): number {
  checkFd(fdIn);
  checkFd(fdOut);
  offInView.setBigInt64(0, checkCount("offset", offIn), true);
  offOutView.setBigInt64(0, checkCount("offset", offOut), true);
  const len = checkCount("length", length);
  return retry(
    "copy_file_range",
    () => libc().copy_file_range(fdIn, offInBytes, fdOut, offOutBytes, len, 0),
  );
}

/**
 * Commits the whole file system holding `fd` to stable storage (syncfs(2)).
 *
 * @param fd Any descriptor on the file system (not `O_PATH`).
 * @throws {SysError} When syncfs(2) fails.
 */
export function syncfs(fd: number): void {
  checkFd(fd);
  retry("syncfs", () => libc().syncfs(fd));
}

// ---------------------------------------------------------------------------
// Locks

/** A record lock (`struct flock`). */
export interface FileLock {
  /** `F_RDLCK`, `F_WRLCK` or `F_UNLCK`. */
  type: number;
  /** `SEEK_SET` (0), `SEEK_CUR` or `SEEK_END`. */
  whence: number;
  /** First byte. */
  start: number;
  /** Length in bytes; 0 means to the end of the file. */
  len: number;
  /** Holder's process id (`F_GETLK`); -1 for open-file-description locks. */
  pid: number;
}

const flockBytes = new Uint8Array(FLOCK_SIZE);
const flockView = new DataView(flockBytes.buffer);

/**
 * Tests, sets or clears a record lock (fcntl(2) with `F_GETLK`/`F_SETLK`/`F_SETLKW` or the
 * open-file-description `F_OFD_*` commands). With a `*SETLK` command a conflicting lock
 * fails with `EAGAIN`/`EACCES` instead of waiting.
 *
 * @param fd The descriptor.
 * @param cmd The command.
 * @param lock The lock.
 * @returns For `*GETLK`, the conflicting lock (type `F_UNLCK` when none); else `lock`.
 * @throws {SysError} When fcntl(2) fails.
 */
export function fcntlLock(fd: number, cmd: number, lock: FileLock): FileLock {
  checkFd(fd);
  if (!Number.isSafeInteger(lock.start) || !Number.isSafeInteger(lock.len)) {
    throw new RangeError(`Invalid lock range ${lock.start} (+${lock.len})`);
  }
  flockBytes.fill(0);
  flockView.setInt16(0, lock.type, true);
  flockView.setInt16(2, lock.whence, true);
  flockView.setBigInt64(8, BigInt(lock.start), true);
  flockView.setBigInt64(16, BigInt(lock.len), true);
  flockView.setInt32(24, lock.pid, true);
  const address = addressOf(flockBytes);
  retry("fcntl", () => libc().fcntl(fd, cmd, address));
  if (cmd !== F_GETLK && cmd !== F_OFD_GETLK) return lock;
  return {
    type: flockView.getInt16(0, true),
    whence: flockView.getInt16(2, true),
    start: Number(flockView.getBigInt64(8, true)),
    len: Number(flockView.getBigInt64(16, true)),
    pid: flockView.getInt32(24, true),
  };
}

/**
 * Applies or removes a whole-file advisory lock (flock(2)).
 *
 * @param fd The descriptor.
 * @param operation `LOCK_SH`, `LOCK_EX` or `LOCK_UN`, optionally with `LOCK_NB`.
 * @throws {SysError} When flock(2) fails (`EWOULDBLOCK` with `LOCK_NB` on a conflict).
 */
export function flock(fd: number, operation: number): void {
  checkFd(fd);
  retry("flock", () => libc().flock(fd, operation));
}

// ---------------------------------------------------------------------------
// Process

/** A resource limit; `Infinity` stands for `RLIM_INFINITY`. */
export interface ResourceLimit {
  /** The soft limit (what is enforced). */
  soft: number;
  /** The hard limit (the ceiling of the soft one). */
  hard: number;
}

const RLIM_INFINITY = 0xffffffffffffffffn;

function limitValue(v: bigint): number {
  return v === RLIM_INFINITY ? Infinity : Number(v);
}

function limitWord(n: number): bigint {
  if (n === Infinity) return RLIM_INFINITY;
  return checkCount("limit", n);
}

/**
 * Reads a resource limit of this process (prlimit(2)).
 *
 * @param resource `RLIMIT_*`.
 * @returns The soft and hard limits.
 * @throws {SysError} When prlimit(2) fails.
 */
export function getrlimit(resource: number): ResourceLimit {
  const old = new Uint8Array(16);
  check("prlimit", libc().prlimit(0, resource, null, old));
  const v = new DataView(old.buffer);
  return { soft: limitValue(v.getBigUint64(0, true)), hard: limitValue(v.getBigUint64(8, true)) };
}

/**
 * Sets a resource limit of this process (prlimit(2)); raising the hard limit needs
 * `CAP_SYS_RESOURCE`.
 *
 * @param resource `RLIMIT_*`.
 * @param limit The new limits.
 * @throws {SysError} When prlimit(2) fails (`EPERM`, `EINVAL`).
 */
export function setrlimit(resource: number, limit: ResourceLimit): void {
  const next = new Uint8Array(16);
  const v = new DataView(next.buffer);
  v.setBigUint64(0, limitWord(limit.soft), true);
  v.setBigUint64(8, limitWord(limit.hard), true);
  check("prlimit", libc().prlimit(0, resource, next, new Uint8Array(16)));
}

/**
 * Sets the process's file mode creation mask (umask(2)) and returns the previous one. It
 * is process-wide: prefer reading it with `umask(x)` followed by `umask(previous)`.
 *
 * @param mask The new mask.
 * @returns The previous mask.
 */
export function umask(mask: number): number {
  return libc().umask(mask & 0o777);
}
