// The Deno backend: `Deno.dlopen` on glibc. Needs `--allow-ffi`.
//
// Buffers are passed as "buffer" parameters (Deno hands the view's data pointer to C), 64-bit
// values as bigints. poll(2) is declared a second time as a `nonblocking` symbol: Deno runs it on
// a thread of its blocking pool and resolves a Promise on the JS thread, which is how waiting on
// file descriptors avoids blocking the event loop. That thread has its own errno, so a failed
// threaded poll is repeated synchronously with a zero timeout to learn why (see `DenoPoller`).

import type { AsyncPoller, AsyncPollResult, Backend, RawLibc } from "./_backend.ts";

const SYMBOLS = {
  __errno_location: { parameters: [], result: "pointer" },
  close: { parameters: ["i32"], result: "i32" },
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "u64"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "u64"], result: "i32" },
  fsync: { parameters: ["i32"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  statx: { parameters: ["i32", "buffer", "i32", "u32", "buffer"], result: "i32" },
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  preadv: { parameters: ["i32", "buffer", "i32", "i64"], result: "isize" },
  pwritev: { parameters: ["i32", "buffer", "i32", "i64"], result: "isize" },
  readv: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  writev: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  mmap: { parameters: ["usize", "usize", "i32", "i32", "i32", "i64"], result: "usize" },
  munmap: { parameters: ["usize", "usize"], result: "i32" },
  madvise: { parameters: ["usize", "usize", "i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  poll_threaded: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  gettid: { parameters: [], result: "i32" },
  tgkill: { parameters: ["i32", "i32", "i32"], result: "i32" },
  pthread_sigmask: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // File systems (sys/fs.ts).
  openat: { parameters: ["i32", "buffer", "i32", "u32"], result: "i32" },
  syscall: { parameters: ["i64", "i64", "i64", "i64", "i64", "i64"], result: "i64" },
  mkdirat: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  mknodat: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  symlinkat: { parameters: ["buffer", "i32", "buffer"], result: "i32" },
  readlinkat: { parameters: ["i32", "buffer", "buffer", "usize"], result: "isize" },
  linkat: { parameters: ["i32", "buffer", "i32", "buffer", "i32"], result: "i32" },
  unlinkat: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  renameat2: { parameters: ["i32", "buffer", "i32", "buffer", "u32"], result: "i32" },
  fchmodat: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  fchmod: { parameters: ["i32", "u32"], result: "i32" },
  fchownat: { parameters: ["i32", "buffer", "u32", "u32", "i32"], result: "i32" },
  utimensat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  futimens: { parameters: ["i32", "buffer"], result: "i32" },
  faccessat: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  getdents64: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  getxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
  setxattr: { parameters: ["buffer", "buffer", "buffer", "usize", "i32"], result: "i32" },
  listxattr: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  removexattr: { parameters: ["buffer", "buffer"], result: "i32" },
  fgetxattr: { parameters: ["i32", "buffer", "buffer", "usize"], result: "isize" },
  fsetxattr: { parameters: ["i32", "buffer", "buffer", "usize", "i32"], result: "i32" },
  flistxattr: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  fremovexattr: { parameters: ["i32", "buffer"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  copy_file_range: {
    parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
    result: "isize",
  },
  fstatfs: { parameters: ["i32", "buffer"], result: "i32" },
  syncfs: { parameters: ["i32"], result: "i32" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
  prlimit: { parameters: ["i32", "i32", "buffer", "buffer"], result: "i32" },
  umask: { parameters: ["u32"], result: "u32" },
} as const;

type DenoLibc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

class DenoPoller implements AsyncPoller {
  readonly #sym: DenoLibc;
  constructor(sym: DenoLibc) {
    this.#sym = sym;
  }

  async poll(fds: Uint8Array, nfds: number, timeout: number): Promise<AsyncPollResult> {
    const result = await this.#sym.poll_threaded(fds, BigInt(nfds), timeout);
    if (result >= 0) return { result, errno: 0 };
    // errno belongs to the pool thread. Ask again on this thread without waiting: a persistent
    // error (EFAULT, EINVAL, ENOMEM) repeats and its errno is ours to read; a transient one
    // (EINTR) does not, and the zero-timeout answer is as good as the threaded one.
    const again = this.#sym.poll(fds, BigInt(nfds), 0);
    return again >= 0 ? { result: again, errno: 0 } : { result: again, errno: errnoView()[0] };
  }

  close(): void {}
}

let errnoCell: Int32Array | undefined;
let symbols: DenoLibc | undefined;

function errnoView(): Int32Array {
  return errnoCell!;
}

/** Opens glibc with `Deno.dlopen` and returns the backend. */
export function createDenoBackend(): Backend {
  const sym = symbols ??= Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  // glibc: __errno_location() returns the address of the calling thread's errno; it does not
  // change for the life of the thread, so a 4-byte view of it is made once.
  const where = sym.__errno_location();
  if (where === null) throw new Error("__errno_location returned NULL");
  errnoCell = new Int32Array(Deno.UnsafePointerView.getArrayBuffer(where, 4));
  const cell = errnoCell;

  const libc: RawLibc = {
    close: sym.close,
    open: sym.open,
    ioctl: sym.ioctl,
    fcntl: sym.fcntl,
    fsync: sym.fsync,
    fdatasync: sym.fdatasync,
    fallocate: sym.fallocate,
    ftruncate: sym.ftruncate,
    memfd_create: sym.memfd_create,
    statx: sym.statx,
    readlink: (path, buf, size) => Number(sym.readlink(path, buf, size)),
    pipe2: sym.pipe2,
    read: (fd, buf, count) => Number(sym.read(fd, buf, count)),
    write: (fd, buf, count) => Number(sym.write(fd, buf, count)),
    pread: (fd, buf, count, offset) => Number(sym.pread(fd, buf, count, offset)),
    pwrite: (fd, buf, count, offset) => Number(sym.pwrite(fd, buf, count, offset)),
    preadv: (fd, iov, iovcnt, offset) => Number(sym.preadv(fd, iov, iovcnt, offset)),
    pwritev: (fd, iov, iovcnt, offset) => Number(sym.pwritev(fd, iov, iovcnt, offset)),
    readv: (fd, iov, iovcnt) => Number(sym.readv(fd, iov, iovcnt)),
    writev: (fd, iov, iovcnt) => Number(sym.writev(fd, iov, iovcnt)),
    mmap: (addr, len, prot, flags, fd, off) =>
      BigInt.asIntN(64, BigInt(sym.mmap(addr, len, prot, flags, fd, off))),
    munmap: sym.munmap,
    madvise: sym.madvise,
    eventfd: sym.eventfd,
    poll: sym.poll,
    socket: sym.socket,
    socketpair: sym.socketpair,
    bind: sym.bind,
    connect: sym.connect,
    listen: sym.listen,
    accept4: (fd, flags) => sym.accept4(fd, null, null, flags),
    shutdown: sym.shutdown,
    sendmsg: (fd, msg, flags) => Number(sym.sendmsg(fd, msg, flags)),
    recvmsg: (fd, msg, flags) => Number(sym.recvmsg(fd, msg, flags)),
    setsockopt: sym.setsockopt,
    getsockopt: sym.getsockopt,
    getpid: sym.getpid,
    gettid: sym.gettid,
    tgkill: sym.tgkill,
    pthread_sigmask: sym.pthread_sigmask,
    openat: sym.openat,
    syscall5: (nr, a1, a2, a3, a4, a5) => Number(sym.syscall(nr, a1, a2, a3, a4, a5)),
    mkdirat: sym.mkdirat,
    mknodat: sym.mknodat,
    symlinkat: sym.symlinkat,
    readlinkat: (fd, path, buf, size) => Number(sym.readlinkat(fd, path, buf, size)),
    linkat: sym.linkat,
    unlinkat: sym.unlinkat,
    renameat2: sym.renameat2,
    fchmodat: sym.fchmodat,
    fchmod: sym.fchmod,
    fchownat: sym.fchownat,
    utimensat: sym.utimensat,
    futimens: sym.futimens,
    faccessat: sym.faccessat,
    getdents64: (fd, buf, size) => Number(sym.getdents64(fd, buf, size)),
    getxattr: (path, name, value, size) => Number(sym.getxattr(path, name, value, size)),
    setxattr: sym.setxattr,
    listxattr: (path, list, size) => Number(sym.listxattr(path, list, size)),
    removexattr: sym.removexattr,
    fgetxattr: (fd, name, value, size) => Number(sym.fgetxattr(fd, name, value, size)),
    fsetxattr: sym.fsetxattr,
    flistxattr: (fd, list, size) => Number(sym.flistxattr(fd, list, size)),
    fremovexattr: sym.fremovexattr,
    lseek: (fd, offset, whence) => BigInt(sym.lseek(fd, offset, whence)),
    copy_file_range: (fdIn, offIn, fdOut, offOut, len, flags) =>
      Number(sym.copy_file_range(fdIn, offIn, fdOut, offOut, len, flags)),
    fstatfs: sym.fstatfs,
    syncfs: sym.syncfs,
    flock: sym.flock,
    prlimit: sym.prlimit,
    umask: sym.umask,
  };

  return {
    runtime: "deno",
    libc,
    errno: () => cell[0],
    addressOf(buf: Uint8Array): bigint {
      if (buf.byteLength === 0) return 0n;
      // Reading `.buffer` moves a small on-heap typed array to a stable backing store.
      void buf.buffer;
      const p = Deno.UnsafePointer.of(buf);
      return p === null ? 0n : BigInt(Deno.UnsafePointer.value(p));
    },
    view(address: bigint, length: number): ArrayBuffer {
      const p = Deno.UnsafePointer.create(address);
      if (p === null) throw new RangeError("Cannot view memory at address 0");
      return Deno.UnsafePointerView.getArrayBuffer(p, length);
    },
    createPoller: () => new DenoPoller(sym),
  };
}
