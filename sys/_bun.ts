// The Bun backend: `bun:ffi` `dlopen` on glibc.
//
// `bun:ffi` is loaded with `require`, which Bun provides in ES modules, so that loading stays
// synchronous and lazy and `deno check` never has to resolve the `bun:` scheme. The few parts of
// its API used here are typed locally below.
//
// Bun has no threaded ("nonblocking") FFI symbols. To wait on file descriptors without blocking
// the event loop and without busy polling, a poller owns a Worker whose only job is to call
// poll(2) and block; it posts the result back. The Worker is ref'd only while a poll is
// outstanding, so an idle poller does not keep the process alive. The cost is one Worker (a
// JS thread) per poller and two message hops per wake-up.

import type { AsyncPoller, AsyncPollResult, Backend, RawLibc } from "./_backend.ts";

/** The subset of `bun:ffi` used here. */
interface BunFfi {
  dlopen(path: string, symbols: Record<string, BunSymbol>): { symbols: Record<string, BunFn> };
  ptr(view: ArrayBufferView): number;
  toArrayBuffer(address: number, byteOffset: number, byteLength: number): ArrayBuffer;
}
interface BunSymbol {
  args: string[];
  returns: string;
}
// deno-lint-ignore no-explicit-any
type BunFn = (...args: any[]) => any;

/** Bun's Worker has Node-style `ref`/`unref`. */
interface BunWorker extends Worker {
  ref(): void;
  unref(): void;
}

const SYMBOLS: Record<string, BunSymbol> = {
  __errno_location: { args: [], returns: "ptr" },
  close: { args: ["i32"], returns: "i32" },
  open: { args: ["ptr", "i32", "u32"], returns: "i32" },
  ioctl: { args: ["i32", "u64", "u64"], returns: "i32" },
  fcntl: { args: ["i32", "i32", "u64"], returns: "i32" },
  fsync: { args: ["i32"], returns: "i32" },
  fdatasync: { args: ["i32"], returns: "i32" },
  fallocate: { args: ["i32", "i32", "i64", "i64"], returns: "i32" },
  ftruncate: { args: ["i32", "i64"], returns: "i32" },
  memfd_create: { args: ["ptr", "u32"], returns: "i32" },
  statx: { args: ["i32", "ptr", "i32", "u32", "ptr"], returns: "i32" },
  readlink: { args: ["ptr", "ptr", "u64"], returns: "i64" },
  pipe2: { args: ["ptr", "i32"], returns: "i32" },
  read: { args: ["i32", "ptr", "u64"], returns: "i64" },
  write: { args: ["i32", "ptr", "u64"], returns: "i64" },
  pread: { args: ["i32", "ptr", "u64", "i64"], returns: "i64" },
  pwrite: { args: ["i32", "ptr", "u64", "i64"], returns: "i64" },
  preadv: { args: ["i32", "ptr", "i32", "i64"], returns: "i64" },
  pwritev: { args: ["i32", "ptr", "i32", "i64"], returns: "i64" },
  readv: { args: ["i32", "ptr", "i32"], returns: "i64" },
  writev: { args: ["i32", "ptr", "i32"], returns: "i64" },
  mmap: { args: ["u64", "u64", "i32", "i32", "i32", "i64"], returns: "i64" },
  munmap: { args: ["u64", "u64"], returns: "i32" },
  madvise: { args: ["u64", "u64", "i32"], returns: "i32" },
  eventfd: { args: ["u32", "i32"], returns: "i32" },
  poll: { args: ["ptr", "u64", "i32"], returns: "i32" },
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  socketpair: { args: ["i32", "i32", "i32", "ptr"], returns: "i32" },
  bind: { args: ["i32", "ptr", "u32"], returns: "i32" },
  connect: { args: ["i32", "ptr", "u32"], returns: "i32" },
  listen: { args: ["i32", "i32"], returns: "i32" },
  accept4: { args: ["i32", "ptr", "ptr", "i32"], returns: "i32" },
  shutdown: { args: ["i32", "i32"], returns: "i32" },
  sendmsg: { args: ["i32", "ptr", "i32"], returns: "i64" },
  recvmsg: { args: ["i32", "ptr", "i32"], returns: "i64" },
  setsockopt: { args: ["i32", "i32", "i32", "ptr", "u32"], returns: "i32" },
  getsockopt: { args: ["i32", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  getpid: { args: [], returns: "i32" },
  gettid: { args: [], returns: "i32" },
  tgkill: { args: ["i32", "i32", "i32"], returns: "i32" },
  pthread_sigmask: { args: ["i32", "ptr", "ptr"], returns: "i32" },
  // File systems (sys/fs.ts).
  openat: { args: ["i32", "ptr", "i32", "u32"], returns: "i32" },
  syscall: { args: ["i64", "i64", "i64", "i64", "i64", "i64"], returns: "i64" },
  mkdirat: { args: ["i32", "ptr", "u32"], returns: "i32" },
  mknodat: { args: ["i32", "ptr", "u32", "u64"], returns: "i32" },
  symlinkat: { args: ["ptr", "i32", "ptr"], returns: "i32" },
  readlinkat: { args: ["i32", "ptr", "ptr", "u64"], returns: "i64" },
  linkat: { args: ["i32", "ptr", "i32", "ptr", "i32"], returns: "i32" },
  unlinkat: { args: ["i32", "ptr", "i32"], returns: "i32" },
  renameat2: { args: ["i32", "ptr", "i32", "ptr", "u32"], returns: "i32" },
  fchmodat: { args: ["i32", "ptr", "u32", "i32"], returns: "i32" },
  fchmod: { args: ["i32", "u32"], returns: "i32" },
  fchownat: { args: ["i32", "ptr", "u32", "u32", "i32"], returns: "i32" },
  utimensat: { args: ["i32", "ptr", "ptr", "i32"], returns: "i32" },
  futimens: { args: ["i32", "ptr"], returns: "i32" },
  faccessat: { args: ["i32", "ptr", "i32", "i32"], returns: "i32" },
  getdents64: { args: ["i32", "ptr", "u64"], returns: "i64" },
  getxattr: { args: ["ptr", "ptr", "ptr", "u64"], returns: "i64" },
  setxattr: { args: ["ptr", "ptr", "ptr", "u64", "i32"], returns: "i32" },
  listxattr: { args: ["ptr", "ptr", "u64"], returns: "i64" },
  removexattr: { args: ["ptr", "ptr"], returns: "i32" },
  fgetxattr: { args: ["i32", "ptr", "ptr", "u64"], returns: "i64" },
  fsetxattr: { args: ["i32", "ptr", "ptr", "u64", "i32"], returns: "i32" },
  flistxattr: { args: ["i32", "ptr", "u64"], returns: "i64" },
  fremovexattr: { args: ["i32", "ptr"], returns: "i32" },
  lseek: { args: ["i32", "i64", "i32"], returns: "i64" },
  copy_file_range: { args: ["i32", "ptr", "i32", "ptr", "u64", "u32"], returns: "i64" },
  fstatfs: { args: ["i32", "ptr"], returns: "i32" },
  syncfs: { args: ["i32"], returns: "i32" },
  flock: { args: ["i32", "i32"], returns: "i32" },
  prlimit: { args: ["i32", "i32", "ptr", "ptr"], returns: "i32" },
  umask: { args: ["u32"], returns: "u32" },
};

// The Worker that blocks in poll(2). It is plain JavaScript started from a Blob URL, so it works
// wherever the library is loaded from. The pollfd array lives in a SharedArrayBuffer both
// threads see, sent once (and again only when it grows): a round posts two numbers each way,
// not a copy of the array, so a watcher of hundreds of descriptors leaves no garbage per round
// in either heap. Messages in: [nfds, timeout], or { fds } with a new array; out: [result,
// errno] (errno read on the Worker's own thread, right after the call).
const POLL_WORKER = `
const ffi = require("bun:ffi");
const lib = ffi.dlopen("libc.so.6", {
  __errno_location: { args: [], returns: "ptr" },
  poll: { args: ["ptr", "u64", "i32"], returns: "i32" },
});
const errno = new Int32Array(ffi.toArrayBuffer(lib.symbols.__errno_location(), 0, 4));
let fds;
self.onmessage = (event) => {
  if (!Array.isArray(event.data)) {
    fds = event.data.fds;
    return;
  }
  const [nfds, timeout] = event.data;
  const result = lib.symbols.poll(fds, BigInt(nfds), timeout);
  self.postMessage([result, result < 0 ? errno[0] : 0]);
};
`;

let workerUrl: string | undefined;

class BunPoller implements AsyncPoller {
  #worker: BunWorker | undefined;
  #pending:
    | { fds: Uint8Array; resolve(r: AsyncPollResult): void; reject(e: unknown): void }
    | undefined;
  // The pollfd array the Worker polls, over a SharedArrayBuffer (see POLL_WORKER).
  #shared: Uint8Array | undefined;

  #start(): BunWorker {
    workerUrl ??= URL.createObjectURL(
      new Blob([POLL_WORKER], { type: "application/javascript" }),
    );
    const worker = new Worker(workerUrl) as BunWorker;
    worker.onmessage = (event: MessageEvent) => {
      worker.unref();
      const pending = this.#pending;
      this.#pending = undefined;
      if (pending === undefined) return;
      const [result, errno] = event.data as [number, number];
      pending.fds.set(this.#shared!.subarray(0, pending.fds.byteLength));
      pending.resolve({ result, errno });
    };
    worker.onerror = (event: ErrorEvent) => {
      worker.unref();
      const pending = this.#pending;
      this.#pending = undefined;
      this.#worker = undefined;
      worker.terminate();
      pending?.reject(new Error(`poll worker failed: ${event.message}`));
    };
    worker.unref();
    return worker;
  }

  poll(fds: Uint8Array, nfds: number, timeout: number): Promise<AsyncPollResult> {
    if (this.#pending !== undefined) throw new Error("A poll is already pending");
    const fresh = this.#worker === undefined;
    const worker = this.#worker ??= this.#start();
    const bytes = Math.min(nfds * 8, fds.byteLength);
    let shared = this.#shared;
    if (fresh || shared === undefined || shared.byteLength < bytes) {
      // Room for twice as many: a growing watcher sends a new array now and then, not per round.
      shared = this.#shared = new Uint8Array(new SharedArrayBuffer(Math.max(64, 2 * bytes)));
      worker.postMessage({ fds: shared });
    }
    shared.set(fds.subarray(0, bytes));
    return new Promise((resolve, reject) => {
      this.#pending = { fds: fds.subarray(0, bytes), resolve, reject };
      worker.ref();
      worker.postMessage([nfds, timeout]);
    });
  }

  close(): void {
    this.#worker?.terminate();
    this.#worker = undefined;
  }
}

/** Opens glibc with `bun:ffi` and returns the backend. */
export function createBunBackend(): Backend {
  const ffi = require("bun:ffi") as BunFfi;
  const sym = ffi.dlopen("libc.so.6", SYMBOLS).symbols;
  // glibc: the address of this thread's errno; stable for the life of the thread.
  const cell = new Int32Array(ffi.toArrayBuffer(sym.__errno_location() as number, 0, 4));

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
    mmap: (addr, len, prot, flags, fd, off) => BigInt(sym.mmap(addr, len, prot, flags, fd, off)),
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
    runtime: "bun",
    libc,
    errno: () => cell[0],
    addressOf(buf: Uint8Array): bigint {
      if (buf.byteLength === 0) return 0n;
      // Reading `.buffer` gives a small typed array a stable, out-of-line backing store.
      void buf.buffer;
      return BigInt(ffi.ptr(buf));
    },
    view(address: bigint, length: number): ArrayBuffer {
      if (address === 0n) throw new RangeError("Cannot view memory at address 0");
      return ffi.toArrayBuffer(Number(address), 0, length);
    },
    createPoller: () => new BunPoller(),
  };
}
