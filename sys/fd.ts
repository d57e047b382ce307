/**
 * File descriptors: open, close, read and write (positioned or not), sync, allocate, truncate,
 * ioctl, fcntl and memfd.
 *
 * All calls go to libc through FFI and take and return raw Linux file descriptor numbers (not
 * Deno resource ids), so the numbers can be passed to other processes and to KVM.
 *
 * @module
 */

import { backend, check, cString, Errno, fail, lastErrno, libc, retry, SysError } from "./libc.ts";
import { mappedAddressOf } from "./mman.ts";

// open(2) flags. The values are those of x86-64 and the generic table (arm64 and others)
// except where noted; `O_DIRECT`, `O_DIRECTORY` and `O_NOFOLLOW` differ on arm64.
const ARM = (globalThis as { process?: { arch?: string } }).process?.arch === "arm64";

/** open(2): open for reading only. */
export const O_RDONLY = 0;
/** open(2): open for writing only. */
export const O_WRONLY = 1;
/** open(2): open for reading and writing. */
export const O_RDWR = 2;
/** open(2): create the file if it does not exist. */
export const O_CREAT = 0o100;
/** open(2): with `O_CREAT`, fail if the file exists. */
export const O_EXCL = 0o200;
/** open(2): do not make a terminal the controlling terminal. */
export const O_NOCTTY = 0o400;
/** open(2): truncate to length 0. */
export const O_TRUNC = 0o1000;
/** open(2): append on each write. */
export const O_APPEND = 0o2000;
/** open(2): non-blocking mode. */
export const O_NONBLOCK = 0o4000;
/** open(2): writes complete as with fdatasync(2). */
export const O_DSYNC = 0o10000;
/** open(2): writes complete as with fsync(2). */
export const O_SYNC = 0o4010000;
/** open(2): close on exec. */
export const O_CLOEXEC = 0o2000000;
/** open(2): bypass the page cache (arch-dependent value). */
export const O_DIRECT: number = ARM ? 0o200000 : 0o40000;
/** open(2): fail unless the path is a directory (arch-dependent value). */
export const O_DIRECTORY: number = ARM ? 0o40000 : 0o200000;
/** open(2): do not follow a final symbolic link (arch-dependent value). */
export const O_NOFOLLOW: number = ARM ? 0o100000 : 0o400000;

/** fallocate(2): do not change the file size. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/** fallocate(2): deallocate the range (must be combined with `FALLOC_FL_KEEP_SIZE`). */
export const FALLOC_FL_PUNCH_HOLE = 0x02;
/** fallocate(2): zero the range, preferably by unwritten extents. */
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** fcntl(2): duplicate with close-on-exec set. */
export const F_DUPFD_CLOEXEC = 1030;
/** fcntl(2): get the descriptor flags (`FD_CLOEXEC`). */
export const F_GETFD = 1;
/** fcntl(2): set the descriptor flags. */
export const F_SETFD = 2;
/** fcntl(2): get the file status flags (`O_*`). */
export const F_GETFL = 3;
/** fcntl(2): set the file status flags. */
export const F_SETFL = 4;
/** fcntl(2): the close-on-exec descriptor flag. */
export const FD_CLOEXEC = 1;

/** ioctl_tty(2)/ioctl(2): bytes available to read (`int *` argument). */
export const FIONREAD = 0x541b;
/** ioctl(2): set close-on-exec (no argument). */
export const FIOCLEX = 0x5451;
/** ioctl(2): clear close-on-exec (no argument). */
export const FIONCLEX = 0x5450;
/** ioctl(2): set or clear non-blocking mode (`int *` argument). */
export const FIONBIO = 0x5421;

/** memfd_create(2): close on exec. */
export const MFD_CLOEXEC = 0x0001;
/** memfd_create(2): allow seals (fcntl `F_ADD_SEALS`). */
export const MFD_ALLOW_SEALING = 0x0002;
/** memfd_create(2): back with huge pages. */
export const MFD_HUGETLB = 0x0004;

function checkFd(fd: number): void {
  if (!Number.isInteger(fd)) throw new TypeError(`Invalid file descriptor: ${fd}`);
}

function checkOffset(name: string, value: number): bigint {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Invalid ${name}: ${value}`);
  }
  return BigInt(value);
}

/**
 * Closes a file descriptor (close(2)). EINTR is not retried: on Linux the descriptor is closed
 * regardless.
 *
 * @param fd The file descriptor.
 * @throws {SysError} When close(2) fails, such as EBADF.
 */
export function close(fd: number): void {
  checkFd(fd);
  if (libc().close(fd) < 0) fail("close");
}

/**
 * Opens a file (open(2)).
 *
 * @example Open /dev/null
 * ```ts
 * import { close, O_CLOEXEC, O_RDWR, open } from "./mod.ts";
 * const fd = open("/dev/null", O_RDWR | O_CLOEXEC);
 * close(fd);
 * ```
 *
 * @param path The path.
 * @param flags `O_*` flags, such as `O_RDWR | O_CLOEXEC`.
 * @param mode Permission bits for a created file (before the umask).
 * @returns The file descriptor.
 * @throws {SysError} When open(2) fails.
 * @throws {TypeError} If `path` contains a NUL character.
 */
export function open(path: string, flags: number, mode = 0o666): number {
  const p = cString(path);
  return retry("open", () => libc().open(p, flags, mode));
}

/**
 * Reads into `buf` from the file position (read(2)).
 *
 * @param fd The file descriptor.
 * @param buf Where to read to; at most `buf.byteLength` bytes are read.
 * @returns The number of bytes read; 0 at end of file.
 * @throws {SysError} When read(2) fails (EAGAIN on an empty non-blocking descriptor).
 */
export function read(fd: number, buf: Uint8Array): number {
  checkFd(fd);
  return retry("read", () => libc().read(fd, buf, BigInt(buf.byteLength)));
}

/**
 * Writes `buf` at the file position (write(2)).
 *
 * @param fd The file descriptor.
 * @param buf The bytes to write.
 * @returns The number of bytes written, which may be fewer than `buf.byteLength`.
 * @throws {SysError} When write(2) fails.
 */
export function write(fd: number, buf: Uint8Array): number {
  checkFd(fd);
  return retry("write", () => libc().write(fd, buf, BigInt(buf.byteLength)));
}

/**
 * Reads into `buf` from file offset `offset`, without moving the file position (pread(2)).
 *
 * @param fd The file descriptor.
 * @param buf Where to read to; at most `buf.byteLength` bytes are read.
 * @param offset The file offset.
 * @returns The number of bytes read; fewer than asked near the end of the file, 0 at or past it.
 * @throws {SysError} When pread(2) fails.
 * @throws {RangeError} If `offset` is negative or not a safe integer.
 */
export function pread(fd: number, buf: Uint8Array, offset: number): number {
  checkFd(fd);
  const off = checkOffset("offset", offset);
  return retry("pread", () => libc().pread(fd, buf, BigInt(buf.byteLength), off));
}

/**
 * Writes `buf` at file offset `offset`, without moving the file position (pwrite(2)).
 *
 * @param fd The file descriptor.
 * @param buf The bytes to write.
 * @param offset The file offset.
 * @returns The number of bytes written, which may be fewer than `buf.byteLength`.
 * @throws {SysError} When pwrite(2) fails.
 * @throws {RangeError} If `offset` is negative or not a safe integer.
 */
export function pwrite(fd: number, buf: Uint8Array, offset: number): number {
  checkFd(fd);
  const off = checkOffset("offset", offset);
  return retry("pwrite", () => libc().pwrite(fd, buf, BigInt(buf.byteLength), off));
}

/** Linux's limit on iovecs per preadv/pwritev call (IOV_MAX). */
export const IOV_MAX = 1024;
const IOVEC_SIZE = 16; // struct iovec { void *iov_base; size_t iov_len; }
const iovBytes = new Uint8Array(IOV_MAX * IOVEC_SIZE);
const iovView = new DataView(iovBytes.buffer);

/** Lay out `bufs` as iovecs in the shared scratch table; false when one is not mapped memory. */
function fillIovecs(bufs: readonly Uint8Array[]): boolean {
  for (let i = 0; i < bufs.length; i++) {
    const b = bufs[i];
    const address = mappedAddressOf(b);
    if (address === undefined) return false;
    const at = i * IOVEC_SIZE;
    iovView.setUint32(at, address % 0x1_0000_0000, true);
    iovView.setUint32(at + 4, Math.floor(address / 0x1_0000_0000), true);
    iovView.setUint32(at + 8, b.byteLength, true);
    iovView.setUint32(at + 12, 0, true);
  }
  return true;
}

function vectored(write: boolean, fd: number, bufs: readonly Uint8Array[], offset: number): number {
  if (bufs.length === 1) return write ? pwrite(fd, bufs[0], offset) : pread(fd, bufs[0], offset);
  checkFd(fd);
  const off = checkOffset("offset", offset);
  if (bufs.length === 0) return 0;
  if (bufs.length <= IOV_MAX && fillIovecs(bufs)) {
    const n = bufs.length;
    return write
      ? retry("pwritev", () => libc().pwritev(fd, iovBytes, n, off))
      : retry("preadv", () => libc().preadv(fd, iovBytes, n, off));
  }
  // Not all in mapped memory (or too many): one positioned call per buffer, stopping short
  // where the kernel did, so the result means what preadv's would.
  let total = 0;
  for (let i = 0; i < bufs.length; i++) {
    const b = bufs[i];
    const n = write ? pwrite(fd, b, offset + total) : pread(fd, b, offset + total);
    total += n;
    if (n < b.byteLength) break;
  }
  return total;
}

/**
 * Reads into `bufs`, in order, from file offset `offset` without moving the file position
 * (preadv(2)). Views into the buffer of a {@link Mapping} (guest memory) go to the kernel as
 * one iovec table, without a copy and without allocating; other views are read one pread(2)
 * each. Either way the result is what one preadv would return.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { close, ftruncate, memfdCreate, mmapFd, preadv, pwritev } from "./mod.ts";
 * const fd = memfdCreate("disk");
 * ftruncate(fd, 8192);
 * const m = mmapFd(fd, 8192);
 * const bytes = new Uint8Array(m.buffer);
 * bytes.fill(7, 0, 512);
 * pwritev(fd, [bytes.subarray(0, 256), bytes.subarray(256, 512)], 4096);
 * const out = new Uint8Array(m.buffer, 1024, 512);
 * assert.equal(preadv(fd, [out], 4096), 512);
 * assert.equal(out[511], 7);
 * m.unmap();
 * close(fd);
 * ```
 *
 * @param fd The file descriptor.
 * @param bufs Where to read to, in order.
 * @param offset The file offset.
 * @returns The number of bytes read; fewer than asked near the end of the file.
 * @throws {SysError} When the read fails.
 * @throws {RangeError} If `offset` is negative or not a safe integer.
 */
export function preadv(fd: number, bufs: readonly Uint8Array[], offset: number): number {
  return vectored(false, fd, bufs, offset);
}

/**
 * Writes `bufs`, in order, at file offset `offset` without moving the file position
 * (pwritev(2)); views into a {@link Mapping} go as one iovec table, as in {@link preadv}.
 *
 * @param fd The file descriptor.
 * @param bufs The bytes to write, in order.
 * @param offset The file offset.
 * @returns The number of bytes written, which may be fewer than asked.
 * @throws {SysError} When the write fails.
 * @throws {RangeError} If `offset` is negative or not a safe integer.
 */
export function pwritev(fd: number, bufs: readonly Uint8Array[], offset: number): number {
  return vectored(true, fd, bufs, offset);
}

// Lay out `bufs` as iovecs in the scratch table (at most IOV_MAX of them): views of a Mapping by
// the mapping's address, others by the address the runtime gives their buffer. The caller keeps
// `bufs` referenced for the duration of the call, so those buffers stay alive and in place.
function fillAnyIovecs(bufs: readonly Uint8Array[]): void {
  for (let i = 0; i < bufs.length; i++) {
    const b = bufs[i];
    let address = mappedAddressOf(b);
    if (address === undefined) address = b.byteLength === 0 ? 0 : Number(backend().addressOf(b));
    const at = i * IOVEC_SIZE;
    iovView.setUint32(at, address % 0x1_0000_0000, true);
    iovView.setUint32(at + 4, Math.floor(address / 0x1_0000_0000), true);
    iovView.setUint32(at + 8, b.byteLength, true);
    iovView.setUint32(at + 12, 0, true);
  }
}

// One readv/writev, EINTR retried; EAGAIN is -1 (a drained non-blocking descriptor).
function streamVectored(write: boolean, fd: number, n: number): number {
  for (;;) {
    const r = write ? libc().writev(fd, iovBytes, n) : libc().readv(fd, iovBytes, n);
    if (r >= 0) return r;
    const errno = lastErrno();
    if (errno === Errno.EINTR) continue;
    if (errno === Errno.EAGAIN) return -1;
    throw new SysError(write ? "writev" : "readv", errno);
  }
}

function totalLength(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.byteLength;
  return n;
}

/**
 * Reads into `bufs`, in order, from the file position with one readv(2). One call matters for
 * descriptors that hand out whole records: a tap device or a datagram socket fills the views
 * with one frame. Views of a {@link Mapping} (guest memory) and ordinary buffers may be mixed;
 * more than {@link IOV_MAX} views are read through one bounce buffer, still in one call.
 *
 * @example Read one datagram into two views
 * ```ts
 * import assert from "node:assert/strict";
 * import { close, readv, SOCK_DGRAM, socketpair, write } from "./mod.ts";
 * const [a, b] = socketpair(1, SOCK_DGRAM);
 * write(a, new Uint8Array([1, 2, 3, 4, 5]));
 * const head = new Uint8Array(2);
 * const rest = new Uint8Array(8);
 * assert.equal(readv(b, [head, rest]), 5);
 * assert.deepEqual([...head, ...rest.subarray(0, 3)], [1, 2, 3, 4, 5]);
 * close(a);
 * close(b);
 * ```
 *
 * @param fd The file descriptor.
 * @param bufs Where to read to, in order.
 * @returns The number of bytes read (0 at end of file), or -1 when the descriptor is
 *   non-blocking and has nothing to read (EAGAIN: the normal end of draining it, not thrown).
 * @throws {SysError} When readv(2) fails otherwise (EINTR is retried).
 */
export function readv(fd: number, bufs: readonly Uint8Array[]): number {
  checkFd(fd);
  if (bufs.length <= IOV_MAX) {
    fillAnyIovecs(bufs);
    return streamVectored(false, fd, bufs.length);
  }
  const bounce = new Uint8Array(totalLength(bufs));
  fillAnyIovecs([bounce]);
  const n = streamVectored(false, fd, 1);
  let off = 0;
  for (const b of bufs) {
    if (off >= n) break;
    const take = Math.min(b.byteLength, n - off);
    b.set(bounce.subarray(off, off + take));
    off += take;
  }
  return n;
}

/**
 * Writes `bufs`, in order, at the file position with one writev(2): a tap device or a
 * datagram socket receives them as one frame. Views of a {@link Mapping} and ordinary buffers
 * may be mixed; more than {@link IOV_MAX} views are gathered into one bounce buffer first.
 * writev(2) cannot ask for `MSG_NOSIGNAL`: use {@link sendmsg} on stream sockets, whose closed
 * peer would raise `SIGPIPE`.
 *
 * @param fd The file descriptor.
 * @param bufs The bytes to write, in order.
 * @returns The number of bytes written, or -1 when the descriptor is non-blocking and full
 *   (EAGAIN, not thrown: wait for `POLLOUT`).
 * @throws {SysError} When writev(2) fails otherwise (EINTR is retried).
 */
export function writev(fd: number, bufs: readonly Uint8Array[]): number {
  checkFd(fd);
  if (bufs.length <= IOV_MAX) {
    fillAnyIovecs(bufs);
    return streamVectored(true, fd, bufs.length);
  }
  const bounce = new Uint8Array(totalLength(bufs));
  let off = 0;
  for (const b of bufs) {
    bounce.set(b, off);
    off += b.byteLength;
  }
  fillAnyIovecs([bounce]);
  return streamVectored(true, fd, 1);
}

/**
 * Flushes a file's data (and the metadata needed to read it back) to stable storage
 * (fdatasync(2)).
 *
 * @param fd The file descriptor.
 * @throws {SysError} When fdatasync(2) fails, such as EIO.
 */
export function fdatasync(fd: number): void {
  checkFd(fd);
  retry("fdatasync", () => libc().fdatasync(fd));
}

/**
 * Flushes a file's data and metadata to stable storage (fsync(2)).
 *
 * @param fd The file descriptor.
 * @throws {SysError} When fsync(2) fails.
 */
export function fsync(fd: number): void {
  checkFd(fd);
  retry("fsync", () => libc().fsync(fd));
}

/**
 * Allocates, deallocates or zeroes a byte range of a file (fallocate(2)).
 *
 * @example Punch a hole (discard)
 * ```ts ignore
 * fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096);
 * ```
 *
 * @param fd The file descriptor.
 * @param mode 0 to allocate, or `FALLOC_FL_*` flags.
 * @param offset The start of the range.
 * @param length The length of the range.
 * @throws {SysError} When fallocate(2) fails; EOPNOTSUPP when the file system lacks the mode.
 * @throws {RangeError} If `offset` or `length` is negative or not a safe integer.
 */
export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  checkFd(fd);
  const off = checkOffset("offset", offset);
  const len = checkOffset("length", length);
  retry("fallocate", () => libc().fallocate(fd, mode, off, len));
}

/**
 * Sets a file's size (ftruncate(2)).
 *
 * @param fd The file descriptor.
 * @param length The new size in bytes.
 * @throws {SysError} When ftruncate(2) fails.
 * @throws {RangeError} If `length` is negative or not a safe integer.
 */
export function ftruncate(fd: number, length: number): void {
  checkFd(fd);
  const len = checkOffset("length", length);
  retry("ftruncate", () => libc().ftruncate(fd, len));
}

/**
 * Creates an anonymous memory-backed file (memfd_create(2)); size it with {@link ftruncate}
 * and map it with `mmapFd`. This is how guest RAM is shared with another process.
 *
 * @param name A name for debugging (shown in `/proc/self/fd`).
 * @param flags `MFD_*` flags.
 * @returns The file descriptor.
 * @throws {SysError} When memfd_create(2) fails.
 * @throws {TypeError} If `name` contains a NUL character.
 */
export function memfdCreate(name: string, flags: number = MFD_CLOEXEC): number {
  const n = cString(name);
  return check("memfd_create", libc().memfd_create(n, flags));
}

/**
 * The same as {@link memfdCreate}, under its libc name.
 *
 * @param name A name for debugging (shown in `/proc/self/fd`).
 * @param flags `MFD_*` flags.
 * @returns The file descriptor.
 * @throws {SysError} When memfd_create(2) fails.
 */
export function memfd_create(name: string, flags: number = MFD_CLOEXEC): number {
  return memfdCreate(name, flags);
}

/**
 * Performs a device-specific request (ioctl(2)).
 *
 * @example Bytes waiting in a socket
 * ```ts ignore
 * const count = new Uint8Array(4);
 * ioctl(fd, FIONREAD, count);
 * const waiting = new DataView(count.buffer).getInt32(0, true);
 * ```
 *
 * @param fd The file descriptor.
 * @param request The request code (an `unsigned long`; a bigint for codes above 2^53).
 * @param arg An integer argument, or a buffer whose address is passed (for struct and `int *`
 *   arguments; the kernel may write into it).
 * @returns The non-negative result of the call (0 for most requests).
 * @throws {SysError} When ioctl(2) fails.
 */
export function ioctl(
  fd: number,
  request: number | bigint,
  arg: number | bigint | Uint8Array = 0,
): number {
  checkFd(fd);
  const req = BigInt.asUintN(64, BigInt(request));
  if (arg instanceof Uint8Array) {
    // `arg` stays referenced (and so alive and in place) for the duration of the call.
    const address = backend().addressOf(arg);
    return retry("ioctl", () => libc().ioctl(fd, req, address));
  }
  const value = BigInt.asUintN(64, BigInt(arg));
  return retry("ioctl", () => libc().ioctl(fd, req, value));
}

/**
 * Manipulates a file descriptor (fcntl(2)) with an integer argument.
 *
 * @param fd The file descriptor.
 * @param cmd The command, such as `F_GETFL`.
 * @param arg The integer argument.
 * @returns The result of the command.
 * @throws {SysError} When fcntl(2) fails.
 */
export function fcntl(fd: number, cmd: number, arg: number = 0): number {
  checkFd(fd);
  const value = BigInt.asUintN(64, BigInt(arg));
  return retry("fcntl", () => libc().fcntl(fd, cmd, value));
}

/**
 * Creates a pipe (pipe2(2)).
 *
 * @example Bytes through a pipe
 * ```ts
 * import { close, pipe, read, write } from "./mod.ts";
 * const [r, w] = pipe();
 * write(w, new Uint8Array([1, 2, 3]));
 * const got = new Uint8Array(3);
 * if (read(r, got) !== 3 || got[2] !== 3) throw new Error("unexpected");
 * close(r);
 * close(w);
 * ```
 *
 * @param flags `O_CLOEXEC` (default) and/or `O_NONBLOCK`.
 * @returns The read end and the write end.
 * @throws {SysError} When pipe2(2) fails, such as EMFILE.
 */
export function pipe(flags: number = O_CLOEXEC): [number, number] {
  const fds = new Uint8Array(8);
  check("pipe2", libc().pipe2(fds, flags));
  const v = new DataView(fds.buffer);
  return [v.getInt32(0, true), v.getInt32(4, true)];
}

/**
 * Duplicates a file descriptor, with close-on-exec set on the copy.
 *
 * @param fd The file descriptor.
 * @returns The new file descriptor.
 * @throws {SysError} When fcntl(2) fails.
 */
export function dup(fd: number): number {
  return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

/**
 * Turns non-blocking mode (`O_NONBLOCK`) on or off. The flag belongs to the open file
 * description, so it also changes for every other holder of the same file, including other
 * processes that received it.
 *
 * @param fd The file descriptor.
 * @param on Whether to set (true) or clear (false) the flag.
 * @throws {SysError} When fcntl(2) fails.
 */
export function setNonBlocking(fd: number, on = true): void {
  const flags = fcntl(fd, F_GETFL);
  const next = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags) fcntl(fd, F_SETFL, next);
}

/**
 * Sets or clears close-on-exec (`FD_CLOEXEC`) on a descriptor.
 *
 * @param fd The file descriptor.
 * @param on Whether to set (true) or clear (false) the flag.
 * @throws {SysError} When fcntl(2) fails.
 */
export function setCloexec(fd: number, on = true): void {
  const flags = fcntl(fd, F_GETFD);
  const next = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
  if (next !== flags) fcntl(fd, F_SETFD, next);
}
