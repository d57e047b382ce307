/**
 * What a file descriptor is: its file status ({@link fstat}), its seals ({@link getSeals}) and
 * its kind ({@link fdKind}, which tells an eventfd from a socket, a pipe or a regular file).
 *
 * These answer the questions a process must ask about a descriptor it received from a peer it
 * does not trust (a vhost-user frontend, say) before it maps or watches it. Everything goes
 * through libc, including the reads of `/proc/self`, so Deno needs only `--allow-ffi`.
 *
 * @module
 */

import { cString, Errno, lastErrno, libc, retry, SysError } from "./libc.ts";
import { fcntl, O_CLOEXEC, O_RDONLY } from "./fd.ts";

/** fcntl(2): add seals to a memfd (`F_SEAL_*` argument). */
export const F_ADD_SEALS = 1033;
/** fcntl(2): get the seals of a memfd. */
export const F_GET_SEALS = 1034;
/** Seal: no further seals may be added. */
export const F_SEAL_SEAL = 0x0001;
/** Seal: the file may not shrink (so a mapping of it cannot lose its backing). */
export const F_SEAL_SHRINK = 0x0002;
/** Seal: the file may not grow. */
export const F_SEAL_GROW = 0x0004;
/** Seal: the contents may not be written (and no writable shared mapping may be made). */
export const F_SEAL_WRITE = 0x0008;
/** Seal: no new writable mapping or write; existing writable mappings stay. */
export const F_SEAL_FUTURE_WRITE = 0x0010;

/** The type of a file, from the `S_IFMT` bits of its mode. */
export type FileType =
  | "regular"
  | "directory"
  | "symlink"
  | "socket"
  | "fifo"
  | "character-device"
  | "block-device"
  /** No type bits: an anonymous inode (eventfd, timerfd, epoll and the like). */
  | "anonymous";

/** What {@link fstat} reports. */
export interface FileStatus {
  /** The file type. */
  type: FileType;
  /** The permission bits (`mode & 0o7777`). */
  mode: number;
  /**
   * The size in bytes (`st_size`): the file's length for a regular file (memfds included),
   * 0 for most other types. Sizes above 2^53 are rounded.
   */
  size: number;
  /** The inode number. */
  ino: bigint;
  /** The device the inode lives on, as `major:minor`. */
  dev: string;
}

const AT_EMPTY_PATH = 0x1000;
const STATX_BASIC_STATS = 0x7ff;
const STATX_SIZE = 0x200;
const STATX_BUFFER_SIZE = 256; // struct statx

const TYPES: ReadonlyMap<number, FileType> = new Map([
  [0o140000, "socket"],
  [0o120000, "symlink"],
  [0o100000, "regular"],
  [0o060000, "block-device"],
  [0o040000, "directory"],
  [0o020000, "character-device"],
  [0o010000, "fifo"],
  [0, "anonymous"],
]);

/**
 * The status of an open file (statx(2) with `AT_EMPTY_PATH`, the portable form of fstat(2)).
 *
 * @example Size of a memfd
 * ```ts
 * import { close, fstat, ftruncate, memfdCreate } from "./mod.ts";
 * const fd = memfdCreate("ram");
 * ftruncate(fd, 8192);
 * const st = fstat(fd);
 * if (st.type !== "regular" || st.size !== 8192) throw new Error("unexpected");
 * close(fd);
 * ```
 *
 * @param fd The file descriptor.
 * @returns Its type, permission bits, size, inode and device.
 * @throws {SysError} When statx(2) fails, such as EBADF.
 */
export function fstat(fd: number): FileStatus {
  if (!Number.isInteger(fd)) throw new TypeError(`Invalid file descriptor: ${fd}`);
  const buf = new Uint8Array(STATX_BUFFER_SIZE);
  const empty = cString("");
  retry("statx", () => libc().statx(fd, empty, AT_EMPTY_PATH, STATX_BASIC_STATS, buf));
  const v = new DataView(buf.buffer);
  const mask = v.getUint32(0, true);
  const mode = v.getUint16(28, true);
  return {
    type: TYPES.get(mode & 0o170000) ?? "anonymous",
    mode: mode & 0o7777,
    size: (mask & STATX_SIZE) !== 0 ? Number(v.getBigUint64(40, true)) : 0,
    ino: v.getBigUint64(32, true),
    dev: `${v.getUint32(136, true)}:${v.getUint32(140, true)}`,
  };
}

/**
 * The seals of a file (fcntl(2) `F_GET_SEALS`). Only memfds made with `MFD_ALLOW_SEALING` can
 * carry seals beyond `F_SEAL_SEAL`; other shmem files report `F_SEAL_SEAL` alone, and files
 * that do not support sealing at all (a file on disk, a socket) report none.
 *
 * @example Seal a memfd against resizing
 * ```ts
 * import {
 *   addSeals, close, F_SEAL_GROW, F_SEAL_SHRINK, getSeals, memfdCreate, MFD_ALLOW_SEALING,
 *   MFD_CLOEXEC,
 * } from "./mod.ts";
 * const fd = memfdCreate("ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
 * addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW);
 * if ((getSeals(fd) & F_SEAL_SHRINK) === 0) throw new Error("not sealed");
 * close(fd);
 * ```
 *
 * @param fd The file descriptor.
 * @returns The `F_SEAL_*` bits in force; 0 when the file does not support sealing (EINVAL).
 * @throws {SysError} When fcntl(2) fails otherwise, such as EBADF.
 */
export function getSeals(fd: number): number {
  try {
    return fcntl(fd, F_GET_SEALS);
  } catch (err) {
    if (err instanceof SysError && err.errno === Errno.EINVAL) return 0;
    throw err;
  }
}

/**
 * Adds seals to a memfd made with `MFD_ALLOW_SEALING` (fcntl(2) `F_ADD_SEALS`). Seals cannot
 * be removed.
 *
 * @param fd The file descriptor.
 * @param seals `F_SEAL_*` bits.
 * @throws {SysError} EPERM when `F_SEAL_SEAL` is already set, EBUSY for `F_SEAL_WRITE` while
 *   writable shared mappings exist, EINVAL when the file cannot be sealed.
 */
export function addSeals(fd: number, seals: number): void {
  fcntl(fd, F_ADD_SEALS, seals);
}

/**
 * The kind of a descriptor, as {@link fdKind} names it: `"eventfd"`, a file type, or, for
 * another anonymous inode, the kernel's name for it (`"anon_inode:[timerfd]"`,
 * `"anon_inode:inotify"`; `"anon_inode:?"` when `/proc` cannot tell).
 */
export type FdKind =
  | "eventfd"
  | "regular file"
  | "directory"
  | "symbolic link"
  | "socket"
  | "pipe"
  | "character device"
  | "block device"
  | `anon_inode:${string}`;

const KINDS: Readonly<Record<FileType, FdKind>> = {
  regular: "regular file",
  directory: "directory",
  symlink: "symbolic link",
  socket: "socket",
  fifo: "pipe",
  "character-device": "character device",
  "block-device": "block device",
  anonymous: "anon_inode:?",
};

/**
 * What kind of object a descriptor refers to; in particular whether it is an eventfd.
 *
 * An eventfd is an anonymous inode, which fstat(2) cannot tell from a timerfd, a signalfd or an
 * epoll instance; the kernel names it in the `/proc/self/fd/N` link (`anon_inode:[eventfd]`),
 * a name no path can take (paths start with `/`). So the file type comes from statx(2), and
 * for anonymous inodes the name from that link. Without `/proc` an anonymous inode is
 * `"anon_inode:?"`: never taken for an eventfd.
 *
 * @example Tell an eventfd from a socket
 * ```ts
 * import { close, EventFd, fdKind, socketpair } from "./mod.ts";
 * const efd = new EventFd();
 * const [a, b] = socketpair();
 * if (fdKind(efd.fd) !== "eventfd" || fdKind(a) !== "socket") throw new Error("unexpected");
 * efd.close();
 * close(a);
 * close(b);
 * ```
 *
 * @param fd The file descriptor.
 * @returns Its kind.
 * @throws {SysError} When the descriptor is not open (EBADF).
 */
export function fdKind(fd: number): FdKind {
  const { type } = fstat(fd);
  const link = procFdLink(fd);
  if (link !== undefined && link.startsWith("anon_inode:")) {
    return link === "anon_inode:[eventfd]" ? "eventfd" : link as FdKind;
  }
  return KINDS[type];
}

/**
 * Whether an eventfd is in semaphore mode (`EFD_SEMAPHORE`), where each read takes 1 from the
 * counter instead of all of it: one write of a large value then keeps it readable for as many
 * reads. Read from `/proc/self/fdinfo/N` (the `eventfd-semaphore` line, Linux 6.5 and later).
 *
 * @param fd The eventfd.
 * @returns `true` or `false`, or `undefined` when the kernel does not say (older kernels, no
 *   `/proc`, or not an eventfd).
 */
export function eventFdSemaphore(fd: number): boolean | undefined {
  const info = readProcText(`/proc/self/fdinfo/${fd}`);
  const match = info?.match(/^eventfd-semaphore:\s*(\d+)/m);
  return match === null || match === undefined ? undefined : match[1] !== "0";
}

const decoder = new TextDecoder();

/** The target of `/proc/self/fd/N`, or `undefined` when it cannot be read. */
function procFdLink(fd: number): string | undefined {
  const path = cString(`/proc/self/fd/${fd}`);
  const buf = new Uint8Array(4096);
  const n = libc().readlink(path, buf, BigInt(buf.byteLength));
  if (n < 0) return undefined;
  return decoder.decode(buf.subarray(0, n));
}

/** A small text file of `/proc`, read with libc; `undefined` when it cannot be read. */
function readProcText(path: string): string | undefined {
  const p = cString(path);
  let fd: number;
  try {
    fd = retry("open", () => libc().open(p, O_RDONLY | O_CLOEXEC, 0));
  } catch {
    return undefined;
  }
  try {
    const buf = new Uint8Array(8192);
    let len = 0;
    while (len < buf.byteLength) {
      const n = libc().read(fd, buf.subarray(len), BigInt(buf.byteLength - len));
      if (n < 0) {
        if (lastErrno() === Errno.EINTR) continue;
        return undefined;
      }
      if (n === 0) break;
      len += n;
    }
    return decoder.decode(buf.subarray(0, len));
  } finally {
    libc().close(fd);
  }
}
