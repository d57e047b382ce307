/**
 * Unix domain sockets through libc, with file descriptor passing (`SCM_RIGHTS`, see unix(7) and
 * cmsg(3)). Deno's own sockets can neither pass descriptors nor adopt one, and vhost-user needs
 * both, so the whole socket lives here as a raw descriptor.
 *
 * For asynchronous use, wait with `FdWatcher`/`waitReady` and then call these functions, which
 * then do not block.
 *
 * @module
 */

import { addressOf, check, Errno, lastErrno, libc, retry, SysError } from "./libc.ts";
import { mappedAddressOf } from "./mman.ts";

/** socket(2): Unix domain (local) sockets. */
export const AF_UNIX = 1;
/** socket(2): the same as `AF_UNIX`. */
export const AF_LOCAL = 1;
/** socket(2): reliable byte stream. */
export const SOCK_STREAM = 1;
/** socket(2): datagrams. */
export const SOCK_DGRAM = 2;
/** socket(2): reliable datagrams with message boundaries. */
export const SOCK_SEQPACKET = 5;
/** socket(2), accept4(2): set `O_NONBLOCK` on the new descriptor. */
export const SOCK_NONBLOCK = 0o4000;
/** socket(2), accept4(2): set close-on-exec on the new descriptor. */
export const SOCK_CLOEXEC = 0o2000000;

/** send(2)/recv(2): look at the data without taking it. */
export const MSG_PEEK = 0x02;
/** recvmsg(2): control data was truncated; some passed descriptors were lost. */
export const MSG_CTRUNC = 0x08;
/** recvmsg(2): a datagram was truncated. */
export const MSG_TRUNC = 0x20;
/** send(2)/recv(2): do not block, for this call only. */
export const MSG_DONTWAIT = 0x40;
/** recv(2): wait for the full request. */
export const MSG_WAITALL = 0x100;
/** send(2): no `SIGPIPE` when the peer is gone (the call fails with EPIPE instead). */
export const MSG_NOSIGNAL = 0x4000;
/** recvmsg(2): set close-on-exec on descriptors received through `SCM_RIGHTS`. */
export const MSG_CMSG_CLOEXEC = 0x40000000;

/** shutdown(2): no more receptions. */
export const SHUT_RD = 0;
/** shutdown(2): no more transmissions. */
export const SHUT_WR = 1;
/** shutdown(2): neither. */
export const SHUT_RDWR = 2;

/** Socket option level of `SCM_RIGHTS` and of the `SO_*` options. */
export const SOL_SOCKET = 1;
/** Socket option: send buffer size (the kernel doubles the value set; capped by wmem_max). */
export const SO_SNDBUF = 7;
/** Socket option: receive buffer size (doubled as `SO_SNDBUF`; capped by rmem_max). */
export const SO_RCVBUF = 8;
/** Control message type carrying file descriptors. */
export const SCM_RIGHTS = 1;

// struct sockaddr_un { sa_family_t sun_family; char sun_path[108]; }
const SUN_PATH_MAX = 108;
// LP64 layouts (x86-64, arm64). struct msghdr: name 0, namelen 8, iov 16, iovlen 24,
// control 32, controllen 40, flags 48; 56 bytes. struct iovec: base 0, len 8; 16 bytes.
// struct cmsghdr: len 0 (size_t), level 8, type 12, data 16.
const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;
const CMSG_HEADER = 16;
/** The most descriptors one `SCM_RIGHTS` message may carry on Linux (SCM_MAX_FD). */
export const SCM_MAX_FD = 253;

const align8 = (n: number) => (n + 7) & ~7;
const cmsgSpace = (n: number) => CMSG_HEADER + align8(n);

// One message header and iovec reused by every call (JS is single-threaded; each Worker has
// its own module instance). Control buffers grow to the largest need seen.
const header = new Uint8Array(new ArrayBuffer(MSGHDR_SIZE + IOVEC_SIZE));
const headerView = new DataView(header.buffer);
let control = new Uint8Array(new ArrayBuffer(cmsgSpace(4 * 8)));

function controlBuffer(fdCount: number): Uint8Array {
  const size = cmsgSpace(4 * fdCount);
  if (control.byteLength < size) control = new Uint8Array(new ArrayBuffer(size));
  return control;
}

function prepareHeader(data: Uint8Array, controlAddress: bigint, controlLength: number): void {
  const iov = addressOf(header) + BigInt(MSGHDR_SIZE);
  headerView.setBigUint64(0, 0n, true); // msg_name
  headerView.setUint32(8, 0, true); // msg_namelen
  headerView.setBigUint64(16, iov, true); // msg_iov
  headerView.setBigUint64(24, 1n, true); // msg_iovlen
  headerView.setBigUint64(32, controlAddress, true); // msg_control
  headerView.setBigUint64(40, BigInt(controlLength), true); // msg_controllen
  headerView.setInt32(48, 0, true); // msg_flags
  headerView.setBigUint64(MSGHDR_SIZE, addressOf(data), true); // iov_base
  headerView.setBigUint64(MSGHDR_SIZE + 8, BigInt(data.byteLength), true); // iov_len
}

function sockaddrUn(path: string): [Uint8Array, number] {
  // A leading NUL selects the abstract namespace: no terminator, the length says where it ends.
  const abstract = path.startsWith("\0");
  const bytes = new TextEncoder().encode(path);
  const length = 2 + bytes.length + (abstract ? 0 : 1);
  if (bytes.length + (abstract ? 0 : 1) > SUN_PATH_MAX) {
    throw new RangeError(`Unix socket path longer than ${SUN_PATH_MAX - 1} bytes: ${path}`);
  }
  if (!abstract && path.includes("\0")) {
    throw new TypeError("Unix socket path contains a NUL character");
  }
  const addr = new Uint8Array(new ArrayBuffer(2 + SUN_PATH_MAX));
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(bytes, 2);
  return [addr, length];
}

/**
 * Creates a socket (socket(2)).
 *
 * @param domain The address family; default `AF_UNIX`.
 * @param type The type and flags; default `SOCK_STREAM | SOCK_CLOEXEC`.
 * @param protocol The protocol; default 0.
 * @returns The socket descriptor.
 * @throws {SysError} When socket(2) fails.
 */
export function socket(
  domain: number = AF_UNIX,
  type: number = SOCK_STREAM | SOCK_CLOEXEC,
  protocol = 0,
): number {
  return check("socket", libc().socket(domain, type, protocol));
}

/**
 * Creates a pair of connected sockets (socketpair(2)).
 *
 * @example A connected pair
 * ```ts
 * import { close, recvmsg, sendmsg, socketpair } from "./mod.ts";
 * const [a, b] = socketpair();
 * sendmsg(a, new Uint8Array([1, 2, 3]));
 * const got = recvmsg(b, new Uint8Array(8));
 * if (got.bytes !== 3) throw new Error("unexpected");
 * close(a);
 * close(b);
 * ```
 *
 * @param domain The address family; default `AF_UNIX`.
 * @param type The type and flags; default `SOCK_STREAM | SOCK_CLOEXEC`.
 * @returns The two descriptors.
 * @throws {SysError} When socketpair(2) fails.
 */
export function socketpair(
  domain: number = AF_UNIX,
  type: number = SOCK_STREAM | SOCK_CLOEXEC,
): [number, number] {
  const sv = new Uint8Array(new ArrayBuffer(8));
  check("socketpair", libc().socketpair(domain, type, 0, sv));
  const view = new DataView(sv.buffer);
  return [view.getInt32(0, true), view.getInt32(4, true)];
}

/**
 * Binds a Unix socket to a path (bind(2)). A path starting with `"\0"` names an abstract
 * socket, which has no file.
 *
 * @param fd The socket.
 * @param path The socket path.
 * @throws {SysError} When bind(2) fails, such as EADDRINUSE if the file exists.
 * @throws {RangeError} If the path does not fit in `sun_path` (107 bytes).
 */
export function bind(fd: number, path: string): void {
  const [addr, length] = sockaddrUn(path);
  check("bind", libc().bind(fd, addr, length));
}

/**
 * Marks a socket as accepting connections (listen(2)).
 *
 * @param fd The bound socket.
 * @param backlog The queue length of pending connections.
 * @throws {SysError} When listen(2) fails.
 */
export function listen(fd: number, backlog = 128): void {
  check("listen", libc().listen(fd, backlog));
}

/**
 * Accepts a connection (accept4(2)). Blocks on a blocking socket; on a non-blocking one fails
 * with EAGAIN when no connection is waiting.
 *
 * @param fd The listening socket.
 * @param flags `SOCK_CLOEXEC` and/or `SOCK_NONBLOCK` for the new socket; default
 *   `SOCK_CLOEXEC`.
 * @returns The connected socket.
 * @throws {SysError} When accept4(2) fails.
 */
export function accept(fd: number, flags: number = SOCK_CLOEXEC): number {
  return retry("accept4", () => libc().accept4(fd, flags));
}

/**
 * Connects a socket to a Unix socket path (connect(2)).
 *
 * @param fd The socket.
 * @param path The path of the listening socket (a leading `"\0"` for an abstract one).
 * @throws {SysError} When connect(2) fails, such as ENOENT or ECONNREFUSED.
 * @throws {RangeError} If the path does not fit in `sun_path`.
 */
export function connect(fd: number, path: string): void {
  const [addr, length] = sockaddrUn(path);
  check("connect", libc().connect(fd, addr, length));
}

/**
 * Shuts down part or all of a full-duplex connection (shutdown(2)).
 *
 * @param fd The socket.
 * @param how `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR` (default).
 * @throws {SysError} When shutdown(2) fails.
 */
export function shutdown(fd: number, how: number = SHUT_RDWR): void {
  check("shutdown", libc().shutdown(fd, how));
}

/**
 * Sends bytes and, optionally, file descriptors (sendmsg(2) with `SCM_RIGHTS`). The receiver
 * gets its own descriptors for the same open files; the caller's stay open.
 *
 * @param fd The connected socket.
 * @param data The bytes; at least one byte when `fds` is not empty.
 * @param fds Descriptors to pass, at most {@link SCM_MAX_FD}.
 * @param flags `MSG_*` flags; default `MSG_NOSIGNAL`, so a closed peer gives EPIPE rather than
 *   a fatal `SIGPIPE`.
 * @returns The number of bytes sent; on a stream socket it may be fewer than `data.byteLength`
 *   (the descriptors go with the first byte).
 * @throws {SysError} When sendmsg(2) fails, such as EAGAIN (non-blocking) or EPIPE.
 * @throws {RangeError} If too many descriptors, or descriptors without data.
 */
export function sendmsg(
  fd: number,
  data: Uint8Array,
  fds: readonly number[] = [],
  flags: number = MSG_NOSIGNAL,
): number {
  if (fds.length > SCM_MAX_FD) throw new RangeError(`Too many descriptors: ${fds.length}`);
  if (fds.length > 0 && data.byteLength === 0) {
    throw new RangeError("Passing descriptors needs at least one byte of data");
  }
  let controlAddress = 0n;
  let controlLength = 0;
  if (fds.length > 0) {
    const buf = controlBuffer(fds.length);
    controlLength = cmsgSpace(4 * fds.length);
    buf.fill(0, 0, controlLength);
    const view = new DataView(buf.buffer);
    view.setBigUint64(0, BigInt(CMSG_HEADER + 4 * fds.length), true); // cmsg_len = CMSG_LEN
    view.setInt32(8, SOL_SOCKET, true);
    view.setInt32(12, SCM_RIGHTS, true);
    fds.forEach((passed, i) => view.setInt32(CMSG_HEADER + 4 * i, passed, true));
    controlAddress = addressOf(buf);
  }
  prepareHeader(data, controlAddress, controlLength);
  return retry("sendmsg", () => libc().sendmsg(fd, header, flags));
}

/** What {@link recvmsg} received. */
export interface RecvResult {
  /** Bytes received; 0 means the peer closed the connection (for a stream socket). */
  bytes: number;
  /** Descriptors received, owned by the caller (close-on-exec by default). */
  fds: number[];
  /**
   * True if the sender passed more descriptors than `maxFds` allowed (`MSG_CTRUNC`): the
   * kernel closed the ones that did not fit. `fds` holds the rest.
   */
  fdsTruncated: boolean;
}

/**
 * Receives bytes and any file descriptors sent with them (recvmsg(2) with `SCM_RIGHTS`).
 *
 * @param fd The connected socket.
 * @param buf Where to put the bytes; at most `buf.byteLength` are received.
 * @param maxFds How many descriptors to accept; more are closed by the kernel and reported as
 *   `fdsTruncated`.
 * @param flags `MSG_*` flags; default `MSG_CMSG_CLOEXEC` (received descriptors are
 *   close-on-exec). Note `msg_flags` carries `MSG_CMSG_CLOEXEC` back; it is not truncation.
 * @returns The byte count, the descriptors and whether some were lost.
 * @throws {SysError} When recvmsg(2) fails, such as EAGAIN on an empty non-blocking socket.
 * @throws {RangeError} If `maxFds` is out of range.
 */
export function recvmsg(
  fd: number,
  buf: Uint8Array,
  maxFds = 0,
  flags: number = MSG_CMSG_CLOEXEC,
): RecvResult {
  if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > SCM_MAX_FD) {
    throw new RangeError(`Invalid maxFds: ${maxFds}`);
  }
  let controlAddress = 0n;
  let controlLength = 0;
  let ctl: Uint8Array | undefined;
  if (maxFds > 0) {
    ctl = controlBuffer(maxFds);
    controlLength = cmsgSpace(4 * maxFds);
    ctl.fill(0, 0, controlLength);
    controlAddress = addressOf(ctl);
  }
  prepareHeader(buf, controlAddress, controlLength);
  const bytes = retry("recvmsg", () => libc().recvmsg(fd, header, flags));
  const msgFlags = headerView.getInt32(48, true);
  const fds: number[] = [];
  if (ctl !== undefined) {
    // The kernel sets msg_controllen to the length it used; walk the headers as CMSG_NXTHDR.
    const used = Number(headerView.getBigUint64(40, true));
    const view = new DataView(ctl.buffer);
    let offset = 0;
    while (offset + CMSG_HEADER <= used) {
      const length = Number(view.getBigUint64(offset, true));
      if (length < CMSG_HEADER || offset + length > used) break;
      const level = view.getInt32(offset + 8, true);
      const type = view.getInt32(offset + 12, true);
      if (level === SOL_SOCKET && type === SCM_RIGHTS) {
        const count = Math.floor((length - CMSG_HEADER) / 4);
        for (let i = 0; i < count; i++) fds.push(view.getInt32(offset + CMSG_HEADER + 4 * i, true));
      }
      offset += align8(length);
    }
  }
  let fdsTruncated = (msgFlags & MSG_CTRUNC) !== 0;
  if (fds.length > maxFds) {
    // CMSG_SPACE rounds up to 8 bytes, so room for an odd count fits one more descriptor:
    // keep the promise of `maxFds` by closing the extra, as the kernel does on truncation.
    for (const extra of fds.splice(maxFds)) libc().close(extra);
    fdsTruncated = true;
  }
  return { bytes, fds, fdsTruncated };
}

/**
 * Receives one datagram without waiting (recvmsg(2) with `MSG_DONTWAIT | MSG_TRUNC`). The
 * result is the datagram's full length even when it was longer than `buf` (only
 * `buf.byteLength` bytes of it are kept; the rest is gone), so a truncated datagram shows.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { close, recvDatagram, sendmsg, SOCK_DGRAM, socketpair } from "./mod.ts";
 * const [a, b] = socketpair(1, SOCK_DGRAM);
 * assert.equal(recvDatagram(b, new Uint8Array(4)), -1);
 * sendmsg(a, new Uint8Array(10));
 * assert.equal(recvDatagram(b, new Uint8Array(4)), 10); // truncated: 10 > 4
 * close(a);
 * close(b);
 * ```
 *
 * @param fd A datagram (or seqpacket) socket.
 * @param buf Where the datagram goes.
 * @returns The datagram's length, or -1 when none is waiting (EAGAIN, not thrown).
 * @throws {SysError} When recvmsg(2) fails otherwise (EINTR is retried).
 */
export function recvDatagram(fd: number, buf: Uint8Array): number {
  prepareHeader(buf, 0n, 0);
  for (;;) {
    const n = libc().recvmsg(fd, header, MSG_DONTWAIT | MSG_TRUNC);
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === Errno.EINTR) continue;
    if (errno === Errno.EAGAIN) return -1;
    throw new SysError("recvmsg", errno);
  }
}

/**
 * Sends all of `data`, looping over short sends (sendmsg(2)); `fds` go with the first byte.
 * For blocking sockets: on a non-blocking one, a full buffer fails with EAGAIN midway.
 *
 * @param fd The connected socket.
 * @param data The bytes.
 * @param fds Descriptors to pass.
 * @throws {SysError} When sendmsg(2) fails.
 */
export function sendAll(fd: number, data: Uint8Array, fds: readonly number[] = []): void {
  let sent = sendmsg(fd, data, fds);
  while (sent < data.byteLength) sent += sendmsg(fd, data.subarray(sent));
}

/**
 * Receives exactly `buf.byteLength` bytes, looping over short receives (recvmsg(2)), and
 * collects the descriptors that arrive with them. For blocking sockets.
 *
 * @param fd The connected socket.
 * @param buf Where to put the bytes.
 * @param maxFds How many descriptors to accept in all.
 * @returns The result; `bytes` is less than `buf.byteLength` only if the peer closed the
 *   connection first (0 if it closed before sending anything).
 * @throws {SysError} When recvmsg(2) fails.
 * @throws {RangeError} If the peer sent more than `maxFds` descriptors; the ones received are
 *   closed first.
 */
export function recvExact(fd: number, buf: Uint8Array, maxFds = 0): RecvResult {
  let bytes = 0;
  const fds: number[] = [];
  while (bytes < buf.byteLength) {
    const got = recvmsg(fd, buf.subarray(bytes), maxFds - fds.length);
    fds.push(...got.fds);
    if (got.fdsTruncated) {
      for (const received of fds) libc().close(received);
      throw new RangeError(`Peer sent more than ${maxFds} file descriptors`);
    }
    if (got.bytes === 0) break;
    bytes += got.bytes;
  }
  return { bytes, fds, fdsTruncated: false };
}

// A message header and an iovec table for the vectored calls (at most IOVEC_MAX entries).
const IOVEC_MAX = 1024;
const vHeader = new Uint8Array(new ArrayBuffer(MSGHDR_SIZE));
const vHeaderView = new DataView(vHeader.buffer);
const iovTable = new Uint8Array(new ArrayBuffer(IOVEC_MAX * IOVEC_SIZE));
const iovTableView = new DataView(iovTable.buffer);

// Lay `bufs` out as iovecs; false when one is not in mapped memory (whose address is stable).
function vectorHeader(bufs: readonly Uint8Array[]): boolean {
  if (bufs.length > IOVEC_MAX) return false;
  for (let i = 0; i < bufs.length; i++) {
    const address = mappedAddressOf(bufs[i]);
    if (address === undefined) return false;
    iovTableView.setBigUint64(i * IOVEC_SIZE, BigInt(address), true);
    iovTableView.setBigUint64(i * IOVEC_SIZE + 8, BigInt(bufs[i].byteLength), true);
  }
  vHeaderView.setBigUint64(0, 0n, true); // msg_name
  vHeaderView.setUint32(8, 0, true); // msg_namelen
  vHeaderView.setBigUint64(16, addressOf(iovTable), true); // msg_iov
  vHeaderView.setBigUint64(24, BigInt(bufs.length), true); // msg_iovlen
  vHeaderView.setBigUint64(32, 0n, true); // msg_control
  vHeaderView.setBigUint64(40, 0n, true); // msg_controllen
  vHeaderView.setInt32(48, 0, true); // msg_flags
  return true;
}

/**
 * Sends `bufs`, in order, as one stream of bytes (sendmsg(2) with one iovec per buffer). Views
 * into the buffer of a `Mapping` (guest memory) go to the kernel as one iovec table without a
 * copy; otherwise one sendmsg per buffer, stopping where the kernel did, so the result means
 * what one call's would. On a non-blocking socket a full buffer gives a short count, and 0
 * (not EAGAIN) when nothing was taken.
 *
 * @param fd The connected socket.
 * @param bufs The bytes, in order.
 * @param flags `MSG_*` flags; default `MSG_NOSIGNAL`.
 * @returns The number of bytes sent.
 * @throws {SysError} When sendmsg(2) fails with anything but EAGAIN (EPIPE, ECONNRESET, …).
 */
export function sendv(
  fd: number,
  bufs: readonly Uint8Array[],
  flags: number = MSG_NOSIGNAL,
): number {
  if (bufs.length === 0) return 0;
  if (vectorHeader(bufs)) {
    const n = libc().sendmsg(fd, vHeader, flags);
    if (n >= 0) return n;
    return againOrThrow("sendmsg");
  }
  let total = 0;
  for (const b of bufs) {
    if (b.byteLength === 0) continue;
    let n: number;
    try {
      n = sendmsg(fd, b, [], flags);
    } catch (err) {
      if (err instanceof SysError && err.errno === Errno.EAGAIN) return total;
      throw err;
    }
    total += n;
    if (n < b.byteLength) break;
  }
  return total;
}

/**
 * Receives into `bufs`, in order (recvmsg(2) with one iovec per buffer); views into a
 * `Mapping` are filled by one call without a copy, others one recvmsg per buffer. On a
 * non-blocking socket with nothing to read it returns -1 (not EAGAIN).
 *
 * @param fd The connected socket.
 * @param bufs Where to put the bytes, in order.
 * @param flags `MSG_*` flags; default none.
 * @returns Bytes received; 0 at end of stream; -1 when nothing is there yet.
 * @throws {SysError} When recvmsg(2) fails with anything but EAGAIN.
 */
export function recvv(fd: number, bufs: readonly Uint8Array[], flags = 0): number {
  if (bufs.length === 0) return 0;
  if (vectorHeader(bufs)) {
    const n = libc().recvmsg(fd, vHeader, flags);
    if (n >= 0) return n;
    return againOrThrow("recvmsg");
  }
  let total = 0;
  for (const b of bufs) {
    if (b.byteLength === 0) continue;
    let n: number;
    try {
      n = recvmsg(fd, b, 0, flags).bytes;
    } catch (err) {
      if (err instanceof SysError && err.errno === Errno.EAGAIN) return total > 0 ? total : -1;
      throw err;
    }
    total += n;
    if (n < b.byteLength) break;
  }
  return total;
}

// After a failed call: -1 for EAGAIN (retrying EINTR is the caller's next call), else throw.
function againOrThrow(call: string): number {
  const errno = lastErrno();
  if (errno === Errno.EAGAIN || errno === Errno.EINTR) return call === "sendmsg" ? 0 : -1;
  throw new SysError(call, errno);
}

const optBuf = new Uint8Array(new ArrayBuffer(8));
const optView = new DataView(optBuf.buffer);

/**
 * Sets an integer socket option (setsockopt(2)), such as `SO_SNDBUF`.
 *
 * @param fd The socket.
 * @param level The level, such as `SOL_SOCKET`.
 * @param name The option, such as `SO_SNDBUF`.
 * @param value The value.
 * @throws {SysError} When setsockopt(2) fails.
 */
export function setSocketOption(fd: number, level: number, name: number, value: number): void {
  optView.setInt32(0, value, true);
  check("setsockopt", libc().setsockopt(fd, level, name, optBuf, 4));
}

/**
 * Reads an integer socket option (getsockopt(2)).
 *
 * @param fd The socket.
 * @param level The level, such as `SOL_SOCKET`.
 * @param name The option, such as `SO_SNDBUF`.
 * @returns The value.
 * @throws {SysError} When getsockopt(2) fails.
 */
export function getSocketOption(fd: number, level: number, name: number): number {
  const len = new Uint8Array(new ArrayBuffer(4));
  new DataView(len.buffer).setUint32(0, 4, true);
  check("getsockopt", libc().getsockopt(fd, level, name, optBuf, len));
  return optView.getInt32(0, true);
}
