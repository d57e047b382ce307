// The internal interface that each runtime backend implements: a raw table of libc functions
// with plain numeric results (`-1` on failure, errno read separately), plus the few things that
// only the runtime can do (pointer ↔ buffer conversion, blocking in poll(2) off the JS thread).
//
// Everything public in `sys/` is written once on top of this interface.

/** The JavaScript runtime the library runs on. */
export type Runtime = "deno" | "bun" | "unknown";

/**
 * Raw libc calls. Buffers are passed as `Uint8Array` (the call sees the view's first byte),
 * 64-bit arguments (sizes, offsets, addresses, ioctl requests) as `bigint`. Every call returns
 * the C return value as a number (or bigint for `mmap`) and leaves errno to {@link Backend.errno}.
 */
export interface RawLibc {
  close(fd: number): number;
  open(path: Uint8Array, flags: number, mode: number): number;
  ioctl(fd: number, request: bigint, arg: bigint): number;
  fcntl(fd: number, cmd: number, arg: bigint): number;
  fsync(fd: number): number;
  fdatasync(fd: number): number;
  fallocate(fd: number, mode: number, offset: bigint, len: bigint): number;
  ftruncate(fd: number, len: bigint): number;
  memfd_create(name: Uint8Array, flags: number): number;
  statx(dirfd: number, path: Uint8Array, flags: number, mask: number, buf: Uint8Array): number;
  readlink(path: Uint8Array, buf: Uint8Array, size: bigint): number;
  pipe2(fds: Uint8Array, flags: number): number;
  read(fd: number, buf: Uint8Array, count: bigint): number;
  write(fd: number, buf: Uint8Array, count: bigint): number;
  pread(fd: number, buf: Uint8Array, count: bigint, offset: bigint): number;
  pwrite(fd: number, buf: Uint8Array, count: bigint, offset: bigint): number;
  preadv(fd: number, iov: Uint8Array, iovcnt: number, offset: bigint): number;
  pwritev(fd: number, iov: Uint8Array, iovcnt: number, offset: bigint): number;
  readv(fd: number, iov: Uint8Array, iovcnt: number): number;
  writev(fd: number, iov: Uint8Array, iovcnt: number): number;
  mmap(addr: bigint, len: bigint, prot: number, flags: number, fd: number, off: bigint): bigint;
  munmap(addr: bigint, len: bigint): number;
  madvise(addr: bigint, len: bigint, advice: number): number;
  eventfd(initval: number, flags: number): number;
  poll(fds: Uint8Array, nfds: bigint, timeout: number): number;
  socket(domain: number, type: number, protocol: number): number;
  socketpair(domain: number, type: number, protocol: number, sv: Uint8Array): number;
  bind(fd: number, addr: Uint8Array, len: number): number;
  connect(fd: number, addr: Uint8Array, len: number): number;
  listen(fd: number, backlog: number): number;
  accept4(fd: number, flags: number): number;
  shutdown(fd: number, how: number): number;
  sendmsg(fd: number, msg: Uint8Array, flags: number): number;
  recvmsg(fd: number, msg: Uint8Array, flags: number): number;
  setsockopt(fd: number, level: number, name: number, value: Uint8Array, len: number): number;
  getsockopt(fd: number, level: number, name: number, value: Uint8Array, len: Uint8Array): number;
  getpid(): number;
  gettid(): number;
  tgkill(tgid: number, tid: number, sig: number): number;
  pthread_sigmask(how: number, set: Uint8Array, oldset: Uint8Array): number;
  // File systems (sys/fs.ts): calls relative to directory descriptors, attributes, xattrs.
  openat(dirfd: number, path: Uint8Array, flags: number, mode: number): number;
  syscall5(nr: bigint, a1: bigint, a2: bigint, a3: bigint, a4: bigint, a5: bigint): number;
  mkdirat(dirfd: number, path: Uint8Array, mode: number): number;
  mknodat(dirfd: number, path: Uint8Array, mode: number, dev: bigint): number;
  symlinkat(target: Uint8Array, dirfd: number, path: Uint8Array): number;
  readlinkat(dirfd: number, path: Uint8Array, buf: Uint8Array, size: bigint): number;
  linkat(
    olddirfd: number,
    oldpath: Uint8Array,
    newdirfd: number,
    newpath: Uint8Array,
    flags: number,
  ): number;
  unlinkat(dirfd: number, path: Uint8Array, flags: number): number;
  renameat2(
    olddirfd: number,
    oldpath: Uint8Array,
    newdirfd: number,
    newpath: Uint8Array,
    flags: number,
  ): number;
  fchmodat(dirfd: number, path: Uint8Array, mode: number, flags: number): number;
  fchmod(fd: number, mode: number): number;
  fchownat(dirfd: number, path: Uint8Array, uid: number, gid: number, flags: number): number;
  utimensat(dirfd: number, path: Uint8Array, times: Uint8Array, flags: number): number;
  futimens(fd: number, times: Uint8Array): number;
  faccessat(dirfd: number, path: Uint8Array, mode: number, flags: number): number;
  getdents64(fd: number, buf: Uint8Array, size: bigint): number;
  getxattr(path: Uint8Array, name: Uint8Array, value: Uint8Array, size: bigint): number;
  setxattr(
    path: Uint8Array,
    name: Uint8Array,
    value: Uint8Array,
    size: bigint,
    flags: number,
  ): number;
  listxattr(path: Uint8Array, list: Uint8Array, size: bigint): number;
  removexattr(path: Uint8Array, name: Uint8Array): number;
  fgetxattr(fd: number, name: Uint8Array, value: Uint8Array, size: bigint): number;
  fsetxattr(fd: number, name: Uint8Array, value: Uint8Array, size: bigint, flags: number): number;
  flistxattr(fd: number, list: Uint8Array, size: bigint): number;
  fremovexattr(fd: number, name: Uint8Array): number;
  lseek(fd: number, offset: bigint, whence: number): bigint;
  copy_file_range(
    fdIn: number,
    offIn: Uint8Array,
    fdOut: number,
    offOut: Uint8Array,
    len: bigint,
    flags: number,
  ): number;
  fstatfs(fd: number, buf: Uint8Array): number;
  syncfs(fd: number): number;
  flock(fd: number, op: number): number;
  prlimit(pid: number, resource: number, newLimit: Uint8Array | null, oldLimit: Uint8Array): number;
  umask(mask: number): number;
}

/** What a blocking poll(2) run off the JS thread reports back. */
export interface AsyncPollResult {
  /** The return value of poll(2). */
  result: number;
  /** errno when `result` is negative, else 0. */
  errno: number;
}

/**
 * Runs poll(2) somewhere that may block (a thread of the runtime or a Worker) and resolves on
 * the JS thread. Only one poll at a time per poller.
 */
export interface AsyncPoller {
  /**
   * Polls `nfds` `struct pollfd` entries laid out in `fds`; when the promise resolves, the
   * `revents` fields of `fds` are filled in.
   */
  poll(fds: Uint8Array, nfds: number, timeout: number): Promise<AsyncPollResult>;
  /** Releases the poller; must not be called while a poll is pending. */
  close(): void;
}

/** A runtime backend. */
export interface Backend {
  readonly runtime: Runtime;
  readonly libc: RawLibc;
  /** errno of the calling thread, read without any intervening libc call. */
  errno(): number;
  /** The address of the first byte of `buf` (its backing store is made stable first). */
  addressOf(buf: Uint8Array): bigint;
  /** An `ArrayBuffer` over `length` bytes of native memory at `address` (no copy, no free). */
  view(address: bigint, length: number): ArrayBuffer;
  /** A new poller that can block without blocking the event loop. */
  createPoller(): AsyncPoller;
}

/** Detects the runtime from its global object. */
export function detectRuntime(): Runtime {
  const g = globalThis as { Deno?: unknown; Bun?: unknown };
  if (g.Bun !== undefined) return "bun";
  if (g.Deno !== undefined) return "deno";
  return "unknown";
}
