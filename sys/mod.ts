/**
 * The system layer: libc through FFI, on Deno (`Deno.dlopen`) and Bun (`bun:ffi`) alike. It is
 * the only part of virtio-ts that knows which runtime it runs on.
 *
 * - File descriptors: {@link open}, {@link close}, {@link pread}, {@link pwrite}, {@link preadv},
 *   {@link pwritev}, {@link fdatasync}, {@link fallocate}, {@link ftruncate}, {@link ioctl},
 *   {@link memfdCreate}, {@link pipe}.
 * - Memory: {@link mmapFd} and {@link mmapAnonymous} give a {@link Mapping} whose `buffer` is
 *   the mapped memory.
 * - {@link EventFd}, with a non-blocking {@link EventFd.wait}; {@link watchEventFd} for an
 *   eventfd another party controls.
 * - What a descriptor is: {@link fstat}, {@link getSeals} / {@link addSeals}, {@link fdKind}
 *   (an eventfd or not), {@link eventFdSemaphore}.
 * - Waiting: {@link poll}, {@link FdWatcher}, {@link watchReadable}, {@link waitReady}.
 * - Unix sockets with descriptor passing: {@link socketpair}, {@link bind}, {@link listen},
 *   {@link accept}, {@link connect}, {@link sendmsg}, {@link recvmsg}, {@link recvExact}, and
 *   vectored {@link sendv}, {@link recvv}.
 * - Threads and signals: {@link threadId}, {@link blockSignalInThread}, {@link signalThread}.
 * - Failures throw {@link SysError} with the call name and errno.
 *
 * libc is opened on first use; Deno needs `--allow-ffi`. Linux only (glibc, LP64).
 *
 * @example Share memory through a memfd
 * ```ts
 * import { close, ftruncate, memfdCreate, mmapFd } from "./mod.ts";
 * const fd = memfdCreate("guest-ram");
 * ftruncate(fd, 1 << 20);
 * const ram = mmapFd(fd, 1 << 20);
 * new DataView(ram.buffer).setUint32(0, 0xcafe, true);
 * ram.unmap();
 * close(fd);
 * ```
 *
 * @module
 */

export {
  addressOf,
  Errno,
  errnoName,
  type Runtime,
  runtime,
  SysError,
  unsafeView,
} from "./libc.ts";
export { hasKvm } from "./runtime.ts";
export {
  close,
  dup,
  F_DUPFD_CLOEXEC,
  F_GETFD,
  F_GETFL,
  F_SETFD,
  F_SETFL,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  fcntl,
  FD_CLOEXEC,
  fdatasync,
  FIOCLEX,
  FIONBIO,
  FIONCLEX,
  FIONREAD,
  fsync,
  ftruncate,
  ioctl,
  IOV_MAX,
  memfd_create,
  memfdCreate,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MFD_HUGETLB,
  O_APPEND,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECT,
  O_DIRECTORY,
  O_DSYNC,
  O_EXCL,
  O_NOCTTY,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_RDONLY,
  O_RDWR,
  O_SYNC,
  O_TRUNC,
  O_WRONLY,
  open,
  pipe,
  pread,
  preadv,
  pwrite,
  pwritev,
  read,
  readv,
  setCloexec,
  setNonBlocking,
  write,
  writev,
} from "./fd.ts";
export {
  MADV_DONTDUMP,
  MADV_DONTFORK,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_REMOVE,
  MADV_WILLNEED,
  madvise,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_HUGETLB,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MAP_SHARED_VALIDATE,
  mappedAddressOf,
  Mapping,
  mmapAnonymous,
  mmapFd,
  type MmapOptions,
  munmap,
  PROT_EXEC,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from "./mman.ts";
export {
  addSeals,
  eventFdSemaphore,
  F_ADD_SEALS,
  F_GET_SEALS,
  F_SEAL_FUTURE_WRITE,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  type FdKind,
  fdKind,
  type FileStatus,
  type FileType,
  fstat,
  getSeals,
} from "./stat.ts";
export {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EFD_SEMAPHORE,
  EventFd,
  EVENTFD_MAX_DRAIN,
  type EventFdOptions,
  type EventFdWaitOptions,
  watchEventFd,
  type WatchEventFdOptions,
} from "./eventfd.ts";
export {
  FdWatcher,
  type FdWatcherOptions,
  poll,
  POLLERR,
  type PollFd,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  POLLOUT,
  POLLPRI,
  POLLRDHUP,
  type WaitOptions,
  waitReady,
  type Watch,
  type WatchCallback,
  watchReadable,
} from "./poll.ts";
export {
  accept,
  AF_LOCAL,
  AF_UNIX,
  bind,
  connect,
  getSocketOption,
  listen,
  MSG_CMSG_CLOEXEC,
  MSG_CTRUNC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSG_PEEK,
  MSG_TRUNC,
  MSG_WAITALL,
  recvDatagram,
  recvExact,
  recvmsg,
  type RecvResult,
  recvv,
  SCM_MAX_FD,
  SCM_RIGHTS,
  sendAll,
  sendmsg,
  sendv,
  setSocketOption,
  SHUT_RD,
  SHUT_RDWR,
  SHUT_WR,
  shutdown,
  SO_RCVBUF,
  SO_SNDBUF,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  SOCK_STREAM,
  socket,
  socketpair,
  SOL_SOCKET,
} from "./socket.ts";
export {
  blockSignalInThread,
  SIG_BLOCK,
  SIG_UNBLOCK,
  signalThread,
  SIGWINCH,
  threadId,
} from "./signal.ts";
