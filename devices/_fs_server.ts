/**
 * The passthrough FUSE file server behind the virtio-fs device: it serves parsed requests
 * ({@linkcode parseFuseRequest}) from a host directory, confined to it.
 *
 * Confinement (the sandbox):
 * - Every inode the driver knows is held as an `O_PATH|O_NOFOLLOW` descriptor; every host
 *   call is relative to one: `*at` calls with one checked name component, or the descriptor
 *   itself (`AT_EMPTY_PATH`, or `/proc/self/fd/<our fd>` for calls that only take paths).
 *   No host path is ever built from a guest string.
 * - Names are looked up with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 *   RESOLVE_NO_MAGICLINKS)` where the kernel has it, `openat(O_NOFOLLOW)` of a single
 *   component otherwise; "." and ".." and names with '/' never reach the host.
 * - A symbolic link is never followed on the host: it is an inode like any other, whose
 *   target the driver reads (READLINK) and resolves in its own name space.
 * - Files are opened for I/O only when they are regular files (directories for OPENDIR),
 *   by reopening the inode's own descriptor: a FIFO or device node is never opened.
 * - Files are created as the host process's user and group; the driver's ids are not used.
 *
 * @module
 */

import type { DescriptorChain } from "../queue/chain.ts";
import { Errno, SysError } from "../sys/libc.ts";
import {
  AT_EMPTY_PATH,
  AT_REMOVEDIR,
  AT_SYMLINK_FOLLOW,
  AT_SYMLINK_NOFOLLOW,
  close,
  copyFileRange,
  dup,
  F_OFD_GETLK,
  F_OFD_SETLK,
  F_RDLCK,
  F_UNLCK,
  F_WRLCK,
  faccessat,
  fallocate,
  fchmod,
  fchmodat,
  fchownat,
  fcntlLock,
  fdatasync,
  flock,
  fstatfs,
  fsync,
  ftruncate,
  getdents64,
  getxattr,
  hasOpenat2,
  linkat,
  listxattr,
  LOCK_EX,
  LOCK_NB,
  LOCK_SH,
  LOCK_UN,
  lseek,
  makedev,
  mkdirat,
  mknodat,
  O_APPEND,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECTORY,
  O_EXCL,
  O_NOFOLLOW,
  O_PATH,
  O_RDONLY,
  O_RDWR,
  O_SYNC,
  O_TRUNC,
  O_WRONLY,
  open,
  openat,
  openat2,
  preadv,
  pwritev,
  readlinkat,
  removexattr,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  renameat2,
  RESOLVE_BENEATH,
  RESOLVE_NO_MAGICLINKS,
  RESOLVE_NO_SYMLINKS,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  SEEK_DATA,
  SEEK_END,
  SEEK_HOLE,
  SEEK_SET,
  setxattr,
  statx,
  STATX_BASIC_STATS,
  STATX_BUFFER_SIZE,
  StatxOffset,
  symlinkat,
  syncfs,
  unlinkat,
  UTIME_NOW,
  UTIME_OMIT,
  utimensat,
  XATTR_CREATE,
  XATTR_REPLACE,
} from "../sys/mod.ts";
import {
  FATTR_ATIME,
  FATTR_ATIME_NOW,
  FATTR_FH,
  FATTR_GID,
  FATTR_KILL_SUIDGID,
  FATTR_MODE,
  FATTR_MTIME,
  FATTR_MTIME_NOW,
  FATTR_SIZE,
  FATTR_UID,
  FOPEN_CACHE_DIR,
  FOPEN_DIRECT_IO,
  FOPEN_KEEP_CACHE,
  FUSE_ACCESS,
  FUSE_ASYNC_READ,
  FUSE_ATOMIC_O_TRUNC,
  FUSE_ATTR_OUT_SIZE,
  FUSE_AUTO_INVAL_DATA,
  FUSE_BATCH_FORGET,
  FUSE_BIG_WRITES,
  FUSE_COPY_FILE_RANGE,
  FUSE_CREATE,
  FUSE_DESTROY,
  FUSE_DIRENT_SIZE,
  FUSE_DIRENTPLUS_SIZE,
  FUSE_DO_READDIRPLUS,
  FUSE_ENTRY_OUT_SIZE,
  FUSE_FALLOCATE,
  FUSE_FLOCK_LOCKS,
  FUSE_FLUSH,
  FUSE_FORGET,
  FUSE_FSYNC,
  FUSE_FSYNC_FDATASYNC,
  FUSE_FSYNCDIR,
  FUSE_GETATTR,
  FUSE_GETLK,
  FUSE_GETXATTR,
  FUSE_GETXATTR_OUT_SIZE,
  FUSE_HANDLE_KILLPRIV_V2,
  FUSE_INIT,
  FUSE_INIT_EXT,
  FUSE_INIT_OUT_SIZE,
  FUSE_INTERRUPT,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_LINK,
  FUSE_LISTXATTR,
  FUSE_LK_FLOCK,
  FUSE_LK_OUT_SIZE,
  FUSE_LOOKUP,
  FUSE_LSEEK,
  FUSE_LSEEK_OUT_SIZE,
  FUSE_MAP_ALIGNMENT,
  FUSE_MAX_PAGES,
  FUSE_MIN_MINOR_VERSION,
  FUSE_MKDIR,
  FUSE_MKNOD,
  FUSE_OPEN,
  FUSE_OPEN_KILL_SUIDGID,
  FUSE_OPEN_OUT_SIZE,
  FUSE_OPENDIR,
  FUSE_OUT_HEADER_SIZE,
  FUSE_PARALLEL_DIROPS,
  FUSE_POSIX_LOCKS,
  FUSE_READ,
  FUSE_READDIR,
  FUSE_READDIRPLUS,
  FUSE_READDIRPLUS_AUTO,
  FUSE_READLINK,
  FUSE_RELEASE,
  FUSE_RELEASE_FLOCK_UNLOCK,
  FUSE_RELEASEDIR,
  FUSE_REMOVEMAPPING,
  FUSE_REMOVEXATTR,
  FUSE_RENAME,
  FUSE_RENAME2,
  FUSE_RMDIR,
  FUSE_SETATTR,
  FUSE_SETLK,
  FUSE_SETLKW,
  FUSE_SETUPMAPPING,
  FUSE_SETUPMAPPING_FLAG_WRITE,
  FUSE_SETXATTR,
  FUSE_SETXATTR_EXT,
  FUSE_STATFS,
  FUSE_STATFS_OUT_SIZE,
  FUSE_SYMLINK,
  FUSE_SYMLINK_MAX,
  FUSE_SYNCFS,
  FUSE_UNLINK,
  FUSE_WRITE,
  FUSE_WRITE_KILL_SUIDGID,
  FUSE_WRITE_OUT_SIZE,
  FUSE_WRITEBACK_CACHE,
  FUSE_XATTR_SIZE_MAX,
} from "./_fs_protocol.ts";
import type { FuseLimits, FuseRequest } from "./_fs_request.ts";
import { closeQuietly, type FsHandle, FsInode, HandleTable, InodeTable } from "./_fs_inodes.ts";
import { DAX_MAP_ALIGNMENT, type DaxWindow } from "./_fs_dax.ts";

/** How much the driver may cache (virtiofsd's `cache=` option). */
export type FsCacheMode = "never" | "auto" | "always";

/** Options of {@linkcode FsServer}. */
export interface FsServerOptions {
  /** Refuse every change with EROFS; files are opened read-only. */
  readOnly: boolean;
  /**
   * `never`: no attribute or entry caching, direct I/O; `auto`: one second of caching,
   * data cache dropped on open and when the modification time changes; `always`: a day of
   * caching, data and directory caches kept across opens.
   */
  cache: FsCacheMode;
  /** Serve extended attributes (otherwise ENOSYS and the driver stops asking). */
  xattr: boolean;
  /** Every xattr namespace, not only `user.` (trusted., security., system. reach the host). */
  allXattrNamespaces: boolean;
  /** Negotiate FUSE_POSIX_LOCKS: record locks held on the host (open-file-description locks). */
  posixLocks: boolean;
  /** Negotiate FUSE_FLOCK_LOCKS: flock(2) locks held on the host. */
  flock: boolean;
  /** Let the driver create character and block device nodes (refused with EPERM otherwise). */
  allowDeviceNodes: boolean;
  /** Negotiate FUSE_WRITEBACK_CACHE. */
  writeback: boolean;
  /** Most inodes the driver may hold (ENFILE beyond). */
  maxInodes: number;
  /** Most files and directories open at once, record-lock descriptors included (EMFILE beyond). */
  maxHandles: number;
  /**
   * The host process's umask. The driver's modes arrive masked by the guest's own umask;
   * permission bits the host's would strip are put back right after each creation.
   */
  umask: number;
  /**
   * Resolve names with openat2(RESOLVE_BENEATH…) (default: when the kernel has it); false
   * forces the openat(O_NOFOLLOW) fallback of older kernels.
   */
  openat2?: boolean;
}

/** Completes a chain whose reply was deferred (a waiting lock). */
export interface FsCompleter {
  /**
   * Put the chain in the used ring and notify the driver as needed.
   * @param chain The chain.
   * @param len Used length.
   */
  complete(chain: DescriptorChain, len: number): void;
}

/** Counters of an {@linkcode FsServer}, since creation. */
export interface FsStats {
  /** Requests served (replied, or handled when FUSE has no reply). */
  requests: number;
  /** Requests answered with an error. */
  errors: number;
  /** Bytes read into guest memory (READ). */
  bytesRead: number;
  /** Bytes written from guest memory (WRITE). */
  bytesWritten: number;
}

/** Largest READ and WRITE (1 MiB: `max_pages` 256). */
export const FS_MAX_IO = 1 << 20;
/** Most directory entry bytes in one READDIR / READDIRPLUS reply. */
export const FS_MAX_DIR_REPLY = 64 << 10;
/** Largest COPY_FILE_RANGE done in one request (a partial copy is a valid answer). */
export const FS_MAX_COPY = 16 << 20;
/** Most SETLKW requests waiting for their lock at once (ENOLCK beyond). */
export const FS_MAX_LOCK_WAITS = 64;

const ENTRY_TIMEOUT: Readonly<Record<FsCacheMode, number>> = { never: 0, auto: 1, always: 86400 };
const OFFSET_MAX = 0x7fffffffffffffffn;
/** Guest open flags passed to the host: the access mode, append, truncate and sync. */
const OPEN_FLAGS_KEPT = 3 | O_APPEND | O_TRUNC | O_SYNC;
const RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
const EMPTY = new Uint8Array(1);
const USER_PREFIX = new TextEncoder().encode("user.");
const DIR_BUFFER = 32 << 10;
const encoder = new TextEncoder();
const DOT = encoder.encode(".\0");

/** An errno to answer with, thrown inside the server. */
class Fail {
  constructor(readonly errno: number) {}
}

function fail(errno: number): never {
  throw new Fail(errno);
}

function errnoOf(err: unknown): number | undefined {
  if (err instanceof Fail) return err.errno;
  if (err instanceof SysError) return err.errno;
  return undefined;
}

interface LockWait {
  unique: bigint;
  chain: DescriptorChain;
  completer: FsCompleter;
  attempt(): boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  delay: number;
}

/**
 * The file server: FUSE requests in, host system calls on descriptors under the shared
 * directory, replies written into the chain.
 */
export class FsServer {
  /** Options. */
  readonly options: FsServerOptions;
  /** The inodes the driver holds. */
  readonly inodes: InodeTable;
  /** Open files and directories. */
  readonly handles: HandleTable;
  /** What the parser needs from the session. */
  readonly limits: FuseLimits = { maxRead: FS_MAX_IO, maxWrite: FS_MAX_IO, setxattrExt: false };
  /** Counters. */
  readonly stats: FsStats = { requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };
  /** The DAX window, when the device has one. */
  dax: DaxWindow | undefined;
  readonly #rootDir: number;
  readonly #procFd: number;
  readonly #openat2: boolean;
  readonly #timeout: number;
  #linkByEmptyPath = true;
  #initialized = false;
  #flags = 0;
  readonly #out = new Uint8Array(FUSE_OUT_HEADER_SIZE + FUSE_XATTR_SIZE_MAX + 4096);
  readonly #ov = new DataView(this.#out.buffer);
  readonly #st = new Uint8Array(STATX_BUFFER_SIZE);
  readonly #sv = new DataView(this.#st.buffer);
  readonly #dirBuf = new Uint8Array(DIR_BUFFER);
  readonly #dv = new DataView(this.#dirBuf.buffer);
  readonly #views: Uint8Array[] = [];
  readonly #lockFds = new Map<string, { fd: number; inode: FsInode }>();
  readonly #waits: LockWait[] = [];
  #closed = false;

  /**
   * Open the shared directory.
   * @param sharedDir The directory to share (opened now; it may be a symbolic link, which
   *   is resolved once here, by the host's administrator's choice).
   * @param options Options.
   * @throws {SysError} When the directory or `/proc/self/fd` cannot be opened.
   * @throws {RangeError} When a limit is not a positive integer.
   */
  constructor(sharedDir: string, options: FsServerOptions) {
    for (const k of ["maxInodes", "maxHandles"] as const) {
      if (!Number.isSafeInteger(options[k]) || options[k] < 1) {
        throw new RangeError(`${k} must be a positive integer, got ${options[k]}`);
      }
    }
    this.options = options;
    this.#timeout = ENTRY_TIMEOUT[options.cache];
    this.#openat2 = options.openat2 ?? hasOpenat2();
    const rootPath = open(sharedDir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    let procFd = -1;
    let rootDir = -1;
    try {
      procFd = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
      rootDir = openat(rootPath, DOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      statx(rootPath, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, this.#st);
    } catch (err) {
      for (const fd of [rootPath, procFd, rootDir]) if (fd >= 0) closeQuietly(fd);
      throw err;
    }
    this.#procFd = procFd;
    this.#rootDir = rootDir;
    const root = new FsInode(1, rootPath, this.#key(), S_IFDIR);
    this.inodes = new InodeTable(root, options.maxInodes);
    this.handles = new HandleTable(options.maxHandles);
  }

  /** Whether FUSE_INIT has started a session. */
  get initialized(): boolean {
    return this.#initialized;
  }

  /** The INIT flags negotiated (low 32 bits). */
  get negotiatedFlags(): number {
    return this.#flags;
  }

  /** Requests waiting for a lock. */
  get lockWaits(): number {
    return this.#waits.length;
  }

  /**
   * Serve one request.
   * @param req The parsed request.
   * @param chain Its chain (the reply goes to its writable part).
   * @param completer Completes the chain later, when the reply is deferred.
   * @returns The used length, or `undefined` when the reply is deferred (SETLKW waiting).
   */
  serve(req: FuseRequest, chain: DescriptorChain, completer: FsCompleter): number | undefined {
    this.stats.requests++;
    if (req.opcode === FUSE_FORGET) {
      const inode = this.inodes.get(req.nodeid);
      if (inode !== undefined) this.#forget(inode, req.nlookup);
      return 0;
    }
    if (req.opcode === FUSE_BATCH_FORGET) {
      for (const f of req.forgets) {
        const inode = this.inodes.get(f.nodeid);
        if (inode !== undefined) this.#forget(inode, f.nlookup);
      }
      return 0;
    }
    if (req.opcode === FUSE_INTERRUPT) {
      this.#interrupt(req.target);
      return 0;
    }
    try {
      if (req.opcode === FUSE_INIT) return this.#reply(chain, req.unique, this.#init(req));
      // Nothing is served before FUSE_INIT or after FUSE_DESTROY (virtio 1.2 §5.11.5).
      if (!this.#initialized) fail(Errno.EIO);
      if (req.opcode === FUSE_READ) return this.#read(req, chain);
      const n = this.#dispatch(req, chain, completer);
      if (n === undefined) return undefined;
      return this.#reply(chain, req.unique, n);
    } catch (err) {
      const errno = errnoOf(err);
      if (errno === undefined) throw err;
      return this.error(chain, req.unique, errno);
    }
  }

  /**
   * Answer with an error (and no data).
   * @param chain The chain.
   * @param unique The request id.
   * @param errno A positive errno.
   * @returns The used length (0 when the chain has no room for a header).
   */
  error(chain: DescriptorChain, unique: bigint, errno: number): number {
    this.stats.errors++;
    const w = chain.writer;
    if (w.remaining < FUSE_OUT_HEADER_SIZE) return 0;
    this.#header(FUSE_OUT_HEADER_SIZE, -errno, unique);
    w.writeExact(this.#out.subarray(0, FUSE_OUT_HEADER_SIZE));
    return FUSE_OUT_HEADER_SIZE;
  }

  /** End the session: close every handle and lock, drop every inode, unmap the window. */
  endSession(): void {
    for (const w of this.#waits.splice(0)) clearTimeout(w.timer);
    for (const l of this.#lockFds.values()) closeQuietly(l.fd);
    this.#lockFds.clear();
    this.handles.clear(this.inodes);
    this.inodes.clear();
    this.dax?.clear();
    this.#initialized = false;
    this.#flags = 0;
    this.limits.setxattrExt = false;
  }

  /** End the session and close the shared directory for good. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.endSession();
    closeQuietly(this.inodes.root.fd);
    closeQuietly(this.#rootDir);
    closeQuietly(this.#procFd);
  }

  // -------------------------------------------------------------------------
  // Replies

  #header(len: number, error: number, unique: bigint): void {
    const o = this.#ov;
    o.setUint32(0, len, true);
    o.setInt32(4, error, true);
    o.setBigUint64(8, unique, true);
  }

  /** Send `n` payload bytes from the scratch buffer (after the header). */
  #reply(chain: DescriptorChain, unique: bigint, n: number): number {
    const len = FUSE_OUT_HEADER_SIZE + n;
    const w = chain.writer;
    if (w.remaining < len) return this.error(chain, unique, Errno.EIO);
    this.#header(len, 0, unique);
    w.writeExact(this.#out.subarray(0, len));
    return len;
  }

  #attr(at: number): void {
    const o = this.#ov;
    const s = this.#sv;
    const O = StatxOffset;
    const copy64 = (dst: number, src: number) => {
      o.setUint32(dst, s.getUint32(src, true), true);
      o.setUint32(dst + 4, s.getUint32(src + 4, true), true);
    };
    copy64(at, O.ino);
    copy64(at + 8, O.size);
    copy64(at + 16, O.blocks);
    copy64(at + 24, O.atime);
    copy64(at + 32, O.mtime);
    copy64(at + 40, O.ctime);
    o.setUint32(at + 48, s.getUint32(O.atime + 8, true), true);
    o.setUint32(at + 52, s.getUint32(O.mtime + 8, true), true);
    o.setUint32(at + 56, s.getUint32(O.ctime + 8, true), true);
    o.setUint32(at + 60, s.getUint16(O.mode, true), true);
    o.setUint32(at + 64, s.getUint32(O.nlink, true), true);
    o.setUint32(at + 68, s.getUint32(O.uid, true), true);
    o.setUint32(at + 72, s.getUint32(O.gid, true), true);
    // The driver decodes rdev with Linux's new_decode_dev (12-bit major, 20-bit minor).
    const major = s.getUint32(O.rdevMajor, true);
    const minor = s.getUint32(O.rdevMinor, true);
    o.setUint32(at + 76, ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0, true);
    o.setUint32(at + 80, s.getUint32(O.blksize, true), true);
    o.setUint32(at + 84, 0, true);
  }

  /** `fuse_entry_out` at `at` for `inode`, with the attributes in the stat scratch. */
  #entry(at: number, nodeid: number): void {
    const o = this.#ov;
    o.setBigUint64(at, BigInt(nodeid), true);
    o.setBigUint64(at + 8, 0n, true); // generation: node ids are never reused
    o.setBigUint64(at + 16, BigInt(this.#timeout), true);
    o.setBigUint64(at + 24, BigInt(this.#timeout), true);
    o.setUint32(at + 32, 0, true);
    o.setUint32(at + 36, 0, true);
    this.#attr(at + 40);
  }

  #entryReply(inode: FsInode): number {
    this.#entry(FUSE_OUT_HEADER_SIZE, inode.nodeid);
    return FUSE_ENTRY_OUT_SIZE;
  }

  #openReply(fh: number, flags: number): number {
    const o = this.#ov;
    o.setBigUint64(FUSE_OUT_HEADER_SIZE, BigInt(fh), true);
    o.setUint32(FUSE_OUT_HEADER_SIZE + 8, flags, true);
    o.setUint32(FUSE_OUT_HEADER_SIZE + 12, 0, true);
    return FUSE_OPEN_OUT_SIZE;
  }

  // -------------------------------------------------------------------------
  // Inodes

  #key(): string {
    const s = this.#sv;
    const O = StatxOffset;
    return `${s.getUint32(O.devMajor, true)}:${s.getUint32(O.devMinor, true)}:${
      s.getUint32(O.ino + 4, true)
    }:${s.getUint32(O.ino, true)}`;
  }

  #stat(fd: number): void {
    statx(fd, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, this.#st);
  }

  #type(): number {
    return this.#sv.getUint16(StatxOffset.mode, true) & S_IFMT;
  }

  #size(): number {
    return Number(this.#sv.getBigUint64(StatxOffset.size, true));
  }

  /** Open one name under `dirfd`, never following a link and never leaving the directory. */
  #openChild(dirfd: number, name: Uint8Array, flags: number, mode = 0): number {
    if (this.#openat2) {
      return openat2(dirfd, name, {
        flags: flags | O_NOFOLLOW | O_CLOEXEC,
        mode,
        resolve: RESOLVE,
      });
    }
    // Without openat2: `name` is one component (no '/', not "." or ".."), so with
    // O_NOFOLLOW nothing but the directory's own entry can be reached.
    return openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode);
  }

  /** Reopen an inode through `/proc/self/fd` (the inode itself, whatever its name is now). */
  #reopen(inode: FsInode, flags: number): number {
    return openat(this.#procFd, inode.procName, flags | O_CLOEXEC);
  }

  /** Take `fd` (an `O_PATH` descriptor just statted) as a lookup: a known inode or a new one. */
  #adopt(fd: number): FsInode {
    const key = this.#key();
    const known = this.inodes.find(key);
    if (known !== undefined) {
      closeQuietly(fd);
      known.refs++;
      return known;
    }
    if (this.inodes.full) {
      closeQuietly(fd);
      fail(Errno.ENFILE);
    }
    return this.inodes.add(fd, key, this.#type());
  }

  /** Look one name up: one more lookup of its inode, attributes in the stat scratch. */
  #lookupChild(dirfd: number, name: Uint8Array): FsInode {
    const fd = this.#openChild(dirfd, name, O_PATH);
    try {
      this.#stat(fd);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    const inode = this.#adopt(fd);
    if (this.dax?.has(inode.key)) this.dax.refresh(inode.key);
    return inode;
  }

  /**
   * Clear set-user-id, and set-group-id when the group may execute (the VFS's rule), as a
   * write or truncation by an unprivileged user does (FUSE_HANDLE_KILLPRIV_V2).
   */
  #killSuidgid(inode: FsInode): void {
    if (inode.type !== S_IFREG) return;
    this.#stat(inode.fd);
    const mode = this.#sv.getUint16(StatxOffset.mode, true) & 0o7777;
    let kill = mode & 0o4000;
    if ((mode & 0o2010) === 0o2010) kill |= 0o2000;
    if (kill !== 0) fchmodat(this.#procFd, inode.procName, mode & ~kill);
  }

  #forget(inode: FsInode, n: number): void {
    this.inodes.forget(inode, n);
  }

  #inode(nodeid: number): FsInode {
    const inode = this.inodes.get(nodeid);
    // An id the driver was never given (or forgot): the request lies about its node.
    if (inode === undefined) fail(Errno.EINVAL);
    return inode;
  }

  #dir(nodeid: number): FsInode {
    const inode = this.#inode(nodeid);
    if (inode.type !== S_IFDIR) fail(Errno.ENOTDIR);
    return inode;
  }

  #handle(fh: number, dir: boolean): FsHandle {
    const h = this.handles.get(fh);
    if (h === undefined || h.dir !== dir) fail(Errno.EBADF);
    return h;
  }

  #writable(): void {
    if (this.options.readOnly) fail(Errno.EROFS);
  }

  // -------------------------------------------------------------------------
  // Requests

  #dispatch(req: FuseRequest, chain: DescriptorChain, completer: FsCompleter): number | undefined {
    switch (req.opcode) {
      case FUSE_LOOKUP: {
        const parent = this.#dir(req.nodeid);
        return this.#entryReply(this.#lookupChild(parent.fd, req.name));
      }
      case FUSE_GETATTR: {
        const inode = this.#inode(req.nodeid);
        this.#stat(inode.fd);
        if (this.dax?.has(inode.key)) this.dax.refresh(inode.key);
        return this.#attrReply();
      }
      case FUSE_SETATTR:
        return this.#setattr(req);
      case FUSE_READLINK: {
        const inode = this.#inode(req.nodeid);
        if (inode.type !== S_IFLNK) fail(Errno.EINVAL);
        const out = this.#out.subarray(
          FUSE_OUT_HEADER_SIZE,
          FUSE_OUT_HEADER_SIZE + FUSE_SYMLINK_MAX + 1,
        );
        const n = readlinkat(inode.fd, EMPTY, out);
        return Math.min(n, FUSE_SYMLINK_MAX);
      }
      case FUSE_SYMLINK: {
        this.#writable();
        const parent = this.#dir(req.nodeid);
        symlinkat(req.target, parent.fd, req.name);
        return this.#entryReply(this.#lookupChild(parent.fd, req.name));
      }
      case FUSE_MKNOD:
        return this.#mknod(req.nodeid, req.mode, req.rdev, req.name);
      case FUSE_MKDIR: {
        this.#writable();
        const parent = this.#dir(req.nodeid);
        mkdirat(parent.fd, req.name, req.mode & 0o7777);
        return this.#created(this.#lookupChild(parent.fd, req.name), req.mode, S_IFDIR);
      }
      case FUSE_UNLINK:
      case FUSE_RMDIR: {
        this.#writable();
        const parent = this.#dir(req.nodeid);
        unlinkat(parent.fd, req.name, req.opcode === FUSE_RMDIR ? AT_REMOVEDIR : 0);
        return 0;
      }
      case FUSE_RENAME:
      case FUSE_RENAME2: {
        this.#writable();
        if ((req.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) !== 0) fail(Errno.EINVAL);
        const from = this.#dir(req.nodeid);
        const to = this.#dir(req.newdir);
        renameat2(from.fd, req.oldname, to.fd, req.newname, req.flags);
        return 0;
      }
      case FUSE_LINK:
        return this.#link(req.oldnodeid, req.nodeid, req.name);
      case FUSE_OPEN:
        return this.#open(req.nodeid, req.flags, req.openFlags);
      case FUSE_WRITE:
        return this.#write(req, chain);
      case FUSE_STATFS:
        return this.#statfs(this.#inode(req.nodeid));
      case FUSE_RELEASE:
      case FUSE_RELEASEDIR: {
        const h = this.#handle(req.fh, req.opcode === FUSE_RELEASEDIR);
        if ((req.releaseFlags & FUSE_RELEASE_FLOCK_UNLOCK) !== 0) {
          try {
            flock(h.fd, LOCK_UN);
          } catch { /* the close below drops it anyway */ }
        }
        this.handles.remove(h, this.inodes);
        if (h.inode.handles === 0) this.#dropLocks(h.inode);
        return 0;
      }
      case FUSE_FSYNC:
      case FUSE_FSYNCDIR: {
        const h = this.#handle(req.fh, req.opcode === FUSE_FSYNCDIR);
        if ((req.fsyncFlags & FUSE_FSYNC_FDATASYNC) !== 0) fdatasync(h.fd);
        else fsync(h.fd);
        return 0;
      }
      case FUSE_FLUSH: {
        const h = this.#handle(req.fh, false);
        // As close(2) of a copy would: the host file system may flush on close.
        close(dup(h.fd));
        // POSIX locks belong to the lock owner and end with its close (FUSE_POSIX_LOCKS).
        const key = `${h.inode.nodeid}:${req.lockOwner}`;
        const lk = this.#lockFds.get(key);
        if (lk !== undefined) {
          this.#lockFds.delete(key);
          closeQuietly(lk.fd);
        }
        return 0;
      }
      case FUSE_SETXATTR:
      case FUSE_GETXATTR:
      case FUSE_LISTXATTR:
      case FUSE_REMOVEXATTR:
        return this.#xattr(req);
      case FUSE_OPENDIR: {
        const inode = this.#dir(req.nodeid);
        if (this.handles.full) fail(Errno.EMFILE);
        const fd = this.#reopen(inode, O_RDONLY | O_DIRECTORY);
        const h = this.handles.add(fd, inode, true, false);
        return this.#openReply(h.fh, this.options.cache === "always" ? FOPEN_CACHE_DIR : 0);
      }
      case FUSE_READDIR:
      case FUSE_READDIRPLUS:
        return this.#readdir(req);
      case FUSE_GETLK:
      case FUSE_SETLK:
      case FUSE_SETLKW:
        return this.#lock(req, chain, completer);
      case FUSE_ACCESS: {
        const inode = this.#inode(req.nodeid);
        if ((req.mask & 2) !== 0 && this.options.readOnly) fail(Errno.EROFS);
        faccessat(this.#procFd, inode.procName, req.mask & 7);
        return 0;
      }
      case FUSE_CREATE:
        return this.#create(req);
      case FUSE_DESTROY:
        this.endSession();
        return 0;
      case FUSE_FALLOCATE: {
        this.#writable();
        const h = this.#handle(req.fh, false);
        if ((req.mode & ~(0x01 | 0x02 | 0x10)) !== 0) fail(Errno.EOPNOTSUPP);
        if (req.length === 0) fail(Errno.EINVAL);
        fallocate(h.fd, req.mode, req.offset, req.length);
        if (this.dax?.has(h.inode.key)) this.dax.refresh(h.inode.key);
        return 0;
      }
      case FUSE_LSEEK: {
        const h = this.#handle(req.fh, false);
        if (![SEEK_SET, SEEK_END, SEEK_DATA, SEEK_HOLE].includes(req.whence)) fail(Errno.EINVAL);
        const at = lseek(h.fd, req.offset, req.whence);
        this.#ov.setBigUint64(FUSE_OUT_HEADER_SIZE, at, true);
        return FUSE_LSEEK_OUT_SIZE;
      }
      case FUSE_COPY_FILE_RANGE: {
        this.#writable();
        if (req.flags !== 0) fail(Errno.EINVAL);
        const src = this.#handle(req.fhIn, false);
        const dst = this.#handle(req.fhOut, false);
        if (dst.inode.nodeid !== req.nodeidOut) fail(Errno.EINVAL);
        const n = copyFileRange(
          src.fd,
          req.offIn,
          dst.fd,
          req.offOut,
          Math.min(req.len, FS_MAX_COPY),
        );
        if (this.dax?.has(dst.inode.key)) this.dax.refresh(dst.inode.key);
        this.#ov.setUint32(FUSE_OUT_HEADER_SIZE, n, true);
        this.#ov.setUint32(FUSE_OUT_HEADER_SIZE + 4, 0, true);
        return FUSE_WRITE_OUT_SIZE;
      }
      case FUSE_SETUPMAPPING:
        return this.#setupMapping(req);
      case FUSE_REMOVEMAPPING: {
        const dax = this.dax;
        if (dax === undefined) fail(Errno.ENOSYS);
        for (const r of req.ranges) {
          const e = dax.remove(r.moffset, r.len);
          if (e !== 0) fail(e);
        }
        return 0;
      }
      case FUSE_SYNCFS:
        syncfs(this.#rootDir);
        return 0;
    }
    return fail(Errno.ENOSYS);
  }

  #init(req: Extract<FuseRequest, { opcode: typeof FUSE_INIT }>): number {
    // virtio 1.2 §5.11.5: a new FUSE_INIT ends the session before it and starts another.
    if (this.#initialized) this.endSession();
    const o = this.#ov;
    const at = FUSE_OUT_HEADER_SIZE;
    this.#out.fill(0, at, at + FUSE_INIT_OUT_SIZE);
    if (req.major > FUSE_KERNEL_VERSION) {
      // The driver retries with our major version.
      o.setUint32(at, FUSE_KERNEL_VERSION, true);
      o.setUint32(at + 4, FUSE_KERNEL_MINOR_VERSION, true);
      return 8;
    }
    if (req.major < FUSE_KERNEL_VERSION || req.minor < FUSE_MIN_MINOR_VERSION) fail(Errno.EPROTO);
    const opt = this.options;
    let want = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_PARALLEL_DIROPS |
      FUSE_MAX_PAGES | FUSE_INIT_EXT;
    if (opt.cache !== "never") {
      want |= FUSE_AUTO_INVAL_DATA | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
    }
    if (opt.xattr) want |= FUSE_SETXATTR_EXT;
    if (opt.posixLocks) want |= FUSE_POSIX_LOCKS;
    if (opt.flock) want |= FUSE_FLOCK_LOCKS;
    if (opt.writeback && !opt.readOnly) want |= FUSE_WRITEBACK_CACHE;
    // The server clears set-user-id bits itself (it runs with CAP_FSETID when it is root, so
    // the host kernel would not); the driver then skips a GETXATTR of security.capability
    // before every write.
    if (!opt.readOnly) want |= FUSE_HANDLE_KILLPRIV_V2;
    if (this.dax !== undefined) want |= FUSE_MAP_ALIGNMENT;
    const flags = (req.flags & want) >>> 0;
    o.setUint32(at, FUSE_KERNEL_VERSION, true);
    o.setUint32(at + 4, Math.min(req.minor, FUSE_KERNEL_MINOR_VERSION), true);
    o.setUint32(at + 8, req.maxReadahead, true);
    o.setUint32(at + 12, flags, true);
    o.setUint16(at + 16, 64, true); // max_background
    o.setUint16(at + 18, 48, true); // congestion_threshold
    o.setUint32(at + 20, FS_MAX_IO, true); // max_write
    o.setUint32(at + 24, 1, true); // time_gran: nanoseconds
    o.setUint16(at + 28, FS_MAX_IO / 4096, true); // max_pages
    o.setUint16(at + 30, this.dax !== undefined ? DAX_MAP_ALIGNMENT : 0, true);
    o.setUint32(at + 32, 0, true); // flags2: nothing above bit 31 is wanted
    this.#flags = flags;
    this.limits.setxattrExt = (flags & FUSE_SETXATTR_EXT) !== 0;
    this.#initialized = true;
    return FUSE_INIT_OUT_SIZE;
  }

  #attrReply(): number {
    const o = this.#ov;
    const at = FUSE_OUT_HEADER_SIZE;
    o.setBigUint64(at, BigInt(this.#timeout), true);
    o.setUint32(at + 8, 0, true);
    o.setUint32(at + 12, 0, true);
    this.#attr(at + 16);
    return FUSE_ATTR_OUT_SIZE;
  }

  #setattr(req: Extract<FuseRequest, { opcode: typeof FUSE_SETATTR }>): number {
    const inode = this.#inode(req.nodeid);
    const v = req.valid;
    const changes = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME | FATTR_MTIME |
      FATTR_ATIME_NOW | FATTR_MTIME_NOW;
    if ((v & changes) !== 0) this.#writable();
    const h = (v & FATTR_FH) !== 0 ? this.handles.get(req.fh) : undefined;
    if (h !== undefined && h.inode !== inode) fail(Errno.EBADF);
    const link = inode.type === S_IFLNK;
    if ((v & FATTR_MODE) !== 0) {
      if (link) fail(Errno.EOPNOTSUPP);
      if (h !== undefined && !h.dir) fchmod(h.fd, req.mode & 0o7777);
      else fchmodat(this.#procFd, inode.procName, req.mode & 0o7777);
    }
    if ((v & (FATTR_UID | FATTR_GID)) !== 0) {
      const uid = (v & FATTR_UID) !== 0 ? req.uid : -1;
      const gid = (v & FATTR_GID) !== 0 ? req.gid : -1;
      fchownat(inode.fd, EMPTY, uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    }
    if ((v & FATTR_SIZE) !== 0) {
      if (req.size < 0) fail(Errno.EFBIG);
      if (inode.type === S_IFDIR) fail(Errno.EISDIR);
      if (inode.type !== S_IFREG) fail(Errno.EINVAL);
      if (h !== undefined && h.writable) {
        ftruncate(h.fd, req.size);
      } else {
        const fd = this.#reopen(inode, O_WRONLY);
        try {
          ftruncate(fd, req.size);
        } finally {
          closeQuietly(fd);
        }
      }
      if (this.dax?.has(inode.key)) this.dax.refresh(inode.key);
    }
    if ((v & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)) !== 0) {
      const time = (set: number, now: number, sec: number, nsec: number) => {
        if ((v & now) !== 0) return { sec: 0, nsec: UTIME_NOW };
        if ((v & set) === 0) return { sec: 0, nsec: UTIME_OMIT };
        if (nsec >= 1e9 || !Number.isSafeInteger(sec)) fail(Errno.EINVAL);
        return { sec, nsec };
      };
      const a = time(FATTR_ATIME, FATTR_ATIME_NOW, req.atime, req.atimensec);
      const m = time(FATTR_MTIME, FATTR_MTIME_NOW, req.mtime, req.mtimensec);
      if (!link) {
        utimensat(this.#procFd, inode.procName, a, m, 0);
      } else {
        try {
          utimensat(inode.fd, EMPTY, a, m, AT_EMPTY_PATH);
        } catch (err) {
          // Kernels without AT_EMPTY_PATH here: no race-free way to touch a link's times.
          if (err instanceof SysError && err.errno === Errno.EINVAL) fail(Errno.EPERM);
          throw err;
        }
      }
    }
    if ((v & FATTR_KILL_SUIDGID) !== 0 && (v & FATTR_MODE) === 0) this.#killSuidgid(inode);
    this.#stat(inode.fd);
    return this.#attrReply();
  }

  #mknod(nodeid: number, mode: number, rdev: number, name: Uint8Array): number {
    this.#writable();
    const parent = this.#dir(nodeid);
    const type = mode & S_IFMT;
    if (type === S_IFCHR || type === S_IFBLK) {
      if (!this.options.allowDeviceNodes) fail(Errno.EPERM);
    } else if (type !== S_IFREG && type !== S_IFIFO && type !== S_IFSOCK && type !== 0) {
      fail(Errno.EINVAL);
    }
    // The driver encodes rdev as Linux's new_encode_dev: 12-bit major, 20-bit minor.
    const major = (rdev >>> 8) & 0xfff;
    const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
    mknodat(parent.fd, name, (type || S_IFREG) | (mode & 0o7777), makedev(major, minor));
    return this.#created(this.#lookupChild(parent.fd, name), mode, type || S_IFREG);
  }

  /**
   * Reply to MKDIR / MKNOD with the new inode, first giving back permission bits the host
   * umask took (only when the name still holds what was created: same type).
   */
  #created(inode: FsInode, mode: number, type: number): number {
    if ((mode & this.options.umask & 0o777) !== 0 && inode.type === type) {
      fchmodat(this.#procFd, inode.procName, mode & 0o7777);
      this.#stat(inode.fd);
    }
    return this.#entryReply(inode);
  }

  #link(oldnodeid: number, newparent: number, name: Uint8Array): number {
    this.#writable();
    const inode = this.#inode(oldnodeid);
    const parent = this.#dir(newparent);
    if (inode.type === S_IFDIR) fail(Errno.EPERM);
    if (this.#linkByEmptyPath) {
      try {
        linkat(inode.fd, EMPTY, parent.fd, name, AT_EMPTY_PATH);
        return this.#entryReply(this.#lookupChild(parent.fd, name));
      } catch (err) {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it ENOENT: use /proc from now on.
        if (!(err instanceof SysError && err.errno === Errno.ENOENT)) throw err;
        this.#linkByEmptyPath = false;
      }
    }
    // Following the magic link lands on the inode itself, even a symbolic link, never on
    // what a symbolic link points to.
    linkat(this.#procFd, inode.procName, parent.fd, name, AT_SYMLINK_FOLLOW);
    return this.#entryReply(this.#lookupChild(parent.fd, name));
  }

  #hostOpenFlags(flags: number): number {
    const f = flags & OPEN_FLAGS_KEPT;
    if (this.options.readOnly && ((f & 3) !== O_RDONLY || (f & O_TRUNC) !== 0)) fail(Errno.EROFS);
    if ((f & 3) === 3) fail(Errno.EINVAL);
    return f;
  }

  #fileOpenFlags(): number {
    switch (this.options.cache) {
      case "never":
        return FOPEN_DIRECT_IO;
      case "always":
        return FOPEN_KEEP_CACHE;
      default:
        return 0;
    }
  }

  #open(nodeid: number, flags: number, openFlags: number): number {
    const inode = this.#inode(nodeid);
    if (inode.type === S_IFDIR) fail(Errno.EISDIR);
    // Only regular files are opened: a FIFO would block, a device node would reach hardware.
    if (inode.type !== S_IFREG) fail(Errno.EINVAL);
    const host = this.#hostOpenFlags(flags);
    if (this.handles.full) fail(Errno.EMFILE);
    const fd = this.#reopen(inode, host);
    if ((host & O_TRUNC) !== 0) {
      if ((openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0) this.#killSuidgid(inode);
      if (this.dax?.has(inode.key)) this.dax.refresh(inode.key);
    }
    const h = this.handles.add(fd, inode, false, (host & 3) !== O_RDONLY);
    return this.#openReply(h.fh, this.#fileOpenFlags());
  }

  #create(req: Extract<FuseRequest, { opcode: typeof FUSE_CREATE }>): number {
    this.#writable();
    const parent = this.#dir(req.nodeid);
    const host = this.#hostOpenFlags(req.flags);
    if (this.handles.full || this.inodes.full) {
      fail(this.handles.full ? Errno.EMFILE : Errno.ENFILE);
    }
    const mode = req.mode & 0o7777;
    // Create exclusively; when the name exists (and the driver did not ask for O_EXCL),
    // open the existing inode as OPEN would: only a regular file, never a FIFO or device.
    for (let attempt = 0; attempt < 4; attempt++) {
      let fd: number;
      try {
        fd = this.#openChild(parent.fd, req.name, (host & ~O_TRUNC) | O_CREAT | O_EXCL, mode);
      } catch (err) {
        if (!(err instanceof SysError && err.errno === Errno.EEXIST)) throw err;
        if ((req.flags & O_EXCL) !== 0) throw err;
        let inode: FsInode;
        try {
          inode = this.#lookupChild(parent.fd, req.name);
        } catch (e) {
          if (e instanceof SysError && e.errno === Errno.ENOENT) continue; // gone: retry
          throw e;
        }
        try {
          if ((host & O_TRUNC) !== 0 && (req.openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0) {
            this.#killSuidgid(inode);
          }
          return this.#openExisting(inode, host);
        } catch (e) {
          this.#forget(inode, 1);
          throw e;
        }
      }
      let pathFd = -1;
      try {
        if ((mode & this.options.umask & 0o777) !== 0) fchmod(fd, mode);
        pathFd = this.#reopenFd(fd, O_PATH);
        this.#stat(pathFd);
      } catch (err) {
        closeQuietly(fd);
        if (pathFd >= 0) closeQuietly(pathFd);
        throw err;
      }
      const inode = this.#adopt(pathFd);
      const h = this.handles.add(fd, inode, false, (host & 3) !== O_RDONLY);
      this.#entry(FUSE_OUT_HEADER_SIZE, inode.nodeid);
      this.#openReply2(h.fh);
      return FUSE_ENTRY_OUT_SIZE + FUSE_OPEN_OUT_SIZE;
    }
    return fail(Errno.EIO);
  }

  #openExisting(inode: FsInode, host: number): number {
    if (inode.type === S_IFDIR) fail(Errno.EISDIR);
    if (inode.type === S_IFLNK) fail(Errno.ELOOP);
    if (inode.type !== S_IFREG) fail(Errno.EINVAL);
    const fd = this.#reopen(inode, host);
    const h = this.handles.add(fd, inode, false, (host & 3) !== O_RDONLY);
    if ((host & O_TRUNC) !== 0) this.#stat(inode.fd); // the entry shows the new size
    this.#entry(FUSE_OUT_HEADER_SIZE, inode.nodeid);
    this.#openReply2(h.fh);
    return FUSE_ENTRY_OUT_SIZE + FUSE_OPEN_OUT_SIZE;
  }

  #openReply2(fh: number): void {
    const o = this.#ov;
    const at = FUSE_OUT_HEADER_SIZE + FUSE_ENTRY_OUT_SIZE;
    o.setBigUint64(at, BigInt(fh), true);
    o.setUint32(at + 8, this.#fileOpenFlags(), true);
    o.setUint32(at + 12, 0, true);
  }

  #reopenFd(fd: number, flags: number): number {
    return openat(this.#procFd, encoder.encode(`${fd}\0`), flags | O_CLOEXEC);
  }

  #read(req: Extract<FuseRequest, { opcode: typeof FUSE_READ }>, chain: DescriptorChain): number {
    const h = this.#handle(req.fh, false);
    const w = chain.writer;
    const views = this.#views;
    // The header goes in front of the data, once the data's length is known.
    const header = w.views(FUSE_OUT_HEADER_SIZE, []);
    const size = Math.min(req.size, w.remaining);
    let n = 0;
    try {
      if (size > 0) {
        w.views(size, views);
        n = this.#readFull(h.fd, views, req.offset, size);
      }
    } finally {
      views.length = 0;
    }
    this.stats.bytesRead += n;
    this.#header(FUSE_OUT_HEADER_SIZE + n, 0, req.unique);
    let at = 0;
    for (const v of header) {
      v.set(this.#out.subarray(at, at + v.length));
      at += v.length;
    }
    return FUSE_OUT_HEADER_SIZE + n;
  }

  /** preadv until `size` bytes or the end of the file: a short read means the end to FUSE. */
  #readFull(fd: number, views: Uint8Array[], offset: number, size: number): number {
    let n = preadv(fd, views, offset);
    if (n === 0 || n === size) return n;
    // Rare: the kernel stopped short before the end. Go on from where it stopped.
    let skip = n;
    const rest: Uint8Array[] = [];
    for (const v of views) {
      if (skip >= v.length) {
        skip -= v.length;
        continue;
      }
      rest.push(skip > 0 ? v.subarray(skip) : v);
      skip = 0;
    }
    while (n < size) {
      const got = preadv(fd, rest, offset + n);
      if (got === 0) break;
      n += got;
      let drop = got;
      while (drop > 0 && rest.length > 0) {
        if (drop >= rest[0].length) {
          drop -= rest[0].length;
          rest.shift();
        } else {
          rest[0] = rest[0].subarray(drop);
          drop = 0;
        }
      }
    }
    return n;
  }

  #write(req: Extract<FuseRequest, { opcode: typeof FUSE_WRITE }>, chain: DescriptorChain): number {
    this.#writable();
    const h = this.#handle(req.fh, false);
    if (!h.writable) fail(Errno.EBADF);
    const views = this.#views;
    let n = 0;
    try {
      if (req.size > 0) {
        chain.reader.views(req.size, views);
        n = pwritev(h.fd, views, req.offset);
        // A short write is rare for a regular file; finish it (the driver expects all).
        if (n > 0 && n < req.size) n = this.#writeRest(h.fd, views, req.offset, n, req.size);
      }
    } finally {
      views.length = 0;
    }
    this.stats.bytesWritten += n;
    if ((req.writeFlags & FUSE_WRITE_KILL_SUIDGID) !== 0) this.#killSuidgid(h.inode);
    if (this.dax?.has(h.inode.key)) this.dax.refresh(h.inode.key);
    this.#ov.setUint32(FUSE_OUT_HEADER_SIZE, n, true);
    this.#ov.setUint32(FUSE_OUT_HEADER_SIZE + 4, 0, true);
    return FUSE_WRITE_OUT_SIZE;
  }

  #writeRest(fd: number, views: Uint8Array[], offset: number, done: number, size: number): number {
    let n = done;
    let skip = done;
    for (const v of views) {
      if (skip >= v.length) {
        skip -= v.length;
        continue;
      }
      let part = skip > 0 ? v.subarray(skip) : v;
      skip = 0;
      while (part.length > 0) {
        const got = pwritev(fd, [part], offset + n);
        if (got === 0) return n;
        n += got;
        part = part.subarray(got);
      }
    }
    return Math.min(n, size);
  }

  #statfs(inode: FsInode): number {
    const b = fstatfs(inode.fd);
    const s = new DataView(b.buffer);
    const o = this.#ov;
    const at = FUSE_OUT_HEADER_SIZE;
    this.#out.fill(0, at, at + FUSE_STATFS_OUT_SIZE);
    o.setBigUint64(at, s.getBigUint64(16, true), true); // blocks
    o.setBigUint64(at + 8, s.getBigUint64(24, true), true); // bfree
    o.setBigUint64(at + 16, s.getBigUint64(32, true), true); // bavail
    o.setBigUint64(at + 24, s.getBigUint64(40, true), true); // files
    o.setBigUint64(at + 32, s.getBigUint64(48, true), true); // ffree
    o.setUint32(at + 40, Number(s.getBigUint64(8, true)), true); // bsize
    o.setUint32(at + 44, Number(s.getBigUint64(64, true)), true); // namelen
    o.setUint32(at + 48, Number(s.getBigUint64(72, true)), true); // frsize
    return FUSE_STATFS_OUT_SIZE;
  }

  #xattrAllowed(name: Uint8Array): boolean {
    if (this.options.allXattrNamespaces) return true;
    if (name.length < USER_PREFIX.length) return false;
    for (let i = 0; i < USER_PREFIX.length; i++) if (name[i] !== USER_PREFIX[i]) return false;
    return true;
  }

  #xattr(
    req: Extract<
      FuseRequest,
      {
        opcode:
          | typeof FUSE_SETXATTR
          | typeof FUSE_GETXATTR
          | typeof FUSE_LISTXATTR
          | typeof FUSE_REMOVEXATTR;
      }
    >,
  ): number {
    if (!this.options.xattr) fail(Errno.ENOSYS);
    const inode = this.#inode(req.nodeid);
    // Path-only calls reach the inode through /proc/self/fd/<our descriptor>: following
    // that magic link lands on the inode itself, a symbolic link included (never its target).
    const path = inode.procPath;
    const at = FUSE_OUT_HEADER_SIZE;
    switch (req.opcode) {
      case FUSE_GETXATTR: {
        if (!this.#xattrAllowed(req.name)) fail(Errno.ENODATA);
        if (req.size === 0) {
          const n = getxattr(path, req.name, this.#out.subarray(at, at));
          this.#ov.setUint32(at, n, true);
          this.#ov.setUint32(at + 4, 0, true);
          return FUSE_GETXATTR_OUT_SIZE;
        }
        return getxattr(
          path,
          req.name,
          this.#out.subarray(at, at + Math.min(req.size, FUSE_XATTR_SIZE_MAX)),
        );
      }
      case FUSE_LISTXATTR: {
        const list = this.#out.subarray(at, at + FUSE_XATTR_SIZE_MAX);
        let n: number;
        try {
          n = listxattr(path, list);
        } catch (err) {
          if (err instanceof SysError && err.errno === Errno.ERANGE) fail(Errno.E2BIG);
          throw err;
        }
        if (!this.options.allXattrNamespaces) n = this.#filterNames(list, n);
        if (req.size === 0) {
          this.#ov.setUint32(at, n, true);
          this.#ov.setUint32(at + 4, 0, true);
          return FUSE_GETXATTR_OUT_SIZE;
        }
        if (n > req.size) fail(Errno.ERANGE);
        return n;
      }
      case FUSE_SETXATTR: {
        this.#writable();
        if (!this.#xattrAllowed(req.name)) fail(Errno.EOPNOTSUPP);
        if ((req.flags & ~(XATTR_CREATE | XATTR_REPLACE)) !== 0) fail(Errno.EINVAL);
        setxattr(path, req.name, req.value, req.flags);
        return 0;
      }
      case FUSE_REMOVEXATTR: {
        this.#writable();
        if (!this.#xattrAllowed(req.name)) fail(Errno.EOPNOTSUPP);
        removexattr(path, req.name);
        return 0;
      }
    }
  }

  /** Keep only `user.` names in a NUL-separated list; returns the new length. */
  #filterNames(list: Uint8Array, n: number): number {
    let out = 0;
    let at = 0;
    while (at < n) {
      let end = list.indexOf(0, at);
      if (end < 0 || end >= n) end = n;
      const entry = list.subarray(at, end + 1);
      if (this.#xattrAllowed(entry)) {
        list.copyWithin(out, at, end + 1);
        out += end + 1 - at;
      }
      at = end + 1;
    }
    return Math.min(out, n);
  }

  #readdir(
    req: Extract<FuseRequest, { opcode: typeof FUSE_READDIR | typeof FUSE_READDIRPLUS }>,
  ): number {
    const h = this.#handle(req.fh, true);
    const plus = req.opcode === FUSE_READDIRPLUS;
    const limit = Math.min(req.size, FS_MAX_DIR_REPLY);
    if (h.pos !== req.cookie) {
      lseek(h.fd, req.cookie, SEEK_SET);
      h.pos = req.cookie;
    }
    const o = this.#ov;
    const out = this.#out;
    const buf = this.#dirBuf;
    const dv = this.#dv;
    let used = 0;
    let emitted = 0;
    let lastOff = h.pos;
    let full = false;
    while (!full) {
      // Read about as many records as fit in what is left of the reply.
      const left = limit - used;
      const want = Math.max(512, Math.min(DIR_BUFFER, plus ? left >> 2 : left));
      const got = getdents64(h.fd, buf.subarray(0, want));
      if (got === 0) break;
      let at = 0;
      while (at < got) {
        const reclen = dv.getUint16(at + 16, true);
        const nameStart = at + 19;
        let nameEnd = buf.indexOf(0, nameStart);
        if (nameEnd < 0 || nameEnd > at + reclen) nameEnd = at + reclen;
        const namelen = nameEnd - nameStart;
        const fixed = plus ? FUSE_DIRENTPLUS_SIZE : FUSE_DIRENT_SIZE;
        const size = (fixed + namelen + 7) & ~7;
        if (used + size > limit) {
          full = true;
          break;
        }
        const off = dv.getBigUint64(at + 8, true);
        const type = buf[at + 18];
        const base = FUSE_OUT_HEADER_SIZE + used;
        let direntAt = base;
        if (plus) {
          const dot = namelen <= 2 && buf[nameStart] === 0x2e &&
            (namelen === 1 || buf[nameStart + 1] === 0x2e);
          let nodeid = 0;
          if (!dot) {
            try {
              const inode = this.#lookupChild(h.fd, buf.subarray(nameStart, nameEnd + 1));
              nodeid = inode.nodeid;
            } catch (err) {
              const e = errnoOf(err);
              if (e === undefined) throw err;
              if (e === Errno.ENOENT) {
                // Gone since getdents64: leave it out.
                lastOff = off;
                at += reclen;
                continue;
              }
            }
          }
          if (nodeid !== 0) {
            this.#entry(base, nodeid);
          } else {
            // No lookup ("." and "..", or one that failed): the driver creates no dentry.
            out.fill(0, base, base + FUSE_ENTRY_OUT_SIZE);
            o.setBigUint64(base + 40, dv.getBigUint64(at, true), true);
            o.setUint32(base + 40 + 60, type << 12, true);
          }
          direntAt = base + FUSE_ENTRY_OUT_SIZE;
        }
        o.setBigUint64(direntAt, dv.getBigUint64(at, true), true);
        o.setBigUint64(direntAt + 8, off, true);
        o.setUint32(direntAt + 16, namelen, true);
        o.setUint32(direntAt + 20, type, true);
        out.set(buf.subarray(nameStart, nameEnd), direntAt + FUSE_DIRENT_SIZE);
        out.fill(0, direntAt + FUSE_DIRENT_SIZE + namelen, base + size);
        used += size;
        emitted++;
        lastOff = off;
        at += reclen;
      }
      if (full && at < got) {
        // Records were read past what fits: put the position back after the last one sent.
        lseek(h.fd, lastOff, SEEK_SET);
      }
      h.pos = lastOff;
    }
    if (emitted === 0 && full) fail(Errno.EINVAL); // not even one entry fits in `size`
    return used;
  }

  #setupMapping(req: Extract<FuseRequest, { opcode: typeof FUSE_SETUPMAPPING }>): number {
    const dax = this.dax;
    if (dax === undefined) fail(Errno.ENOSYS);
    const writable = (req.flags & FUSE_SETUPMAPPING_FLAG_WRITE) !== 0;
    if (writable) this.#writable();
    // Linux sends fh ~0 and the node: the file is opened by the device itself.
    const h = req.fh >= 0 ? this.handles.get(req.fh) : undefined;
    const inode = h?.inode ?? this.#inode(req.nodeid);
    if (inode.type !== S_IFREG) fail(Errno.EINVAL);
    const e = dax.setup(
      (w) => this.#reopen(inode, w ? O_RDWR : O_RDONLY),
      inode.key,
      { foffset: req.foffset, len: req.len, moffset: req.moffset, writable },
    );
    if (e !== 0) fail(e);
    return 0;
  }

  // -------------------------------------------------------------------------
  // Locks

  #lock(
    req: Extract<
      FuseRequest,
      { opcode: typeof FUSE_GETLK | typeof FUSE_SETLK | typeof FUSE_SETLKW }
    >,
    chain: DescriptorChain,
    completer: FsCompleter,
  ): number | undefined {
    const h = this.#handle(req.fh, false);
    const flockStyle = (req.lkFlags & FUSE_LK_FLOCK) !== 0;
    if (flockStyle ? !this.options.flock : !this.options.posixLocks) fail(Errno.ENOSYS);
    if (req.type !== F_RDLCK && req.type !== F_WRLCK && req.type !== F_UNLCK) fail(Errno.EINVAL);
    let attempt: () => void;
    if (flockStyle) {
      if (req.opcode === FUSE_GETLK) fail(Errno.EINVAL);
      const op = req.type === F_UNLCK ? LOCK_UN : req.type === F_RDLCK ? LOCK_SH : LOCK_EX;
      attempt = () => flock(h.fd, op | LOCK_NB);
    } else {
      if (req.start > OFFSET_MAX || req.end < req.start) fail(Errno.EINVAL);
      if (req.start > BigInt(Number.MAX_SAFE_INTEGER)) fail(Errno.EINVAL);
      const start = Number(req.start);
      const span = req.end >= OFFSET_MAX ? 0n : req.end - req.start + 1n;
      if (span > BigInt(Number.MAX_SAFE_INTEGER)) fail(Errno.EINVAL);
      const fd = this.#lockFd(h.inode, req.owner);
      const lock = { type: req.type, whence: SEEK_SET, start, len: Number(span), pid: 0 };
      if (req.opcode === FUSE_GETLK) {
        const got = fcntlLock(fd, F_OFD_GETLK, lock);
        const o = this.#ov;
        const at = FUSE_OUT_HEADER_SIZE;
        o.setBigUint64(at, BigInt(got.start), true);
        const end = got.len === 0 ? OFFSET_MAX : BigInt(got.start + got.len - 1);
        o.setBigUint64(at + 8, got.type === F_UNLCK ? 0n : end, true);
        o.setUint32(at + 16, got.type, true);
        o.setUint32(at + 20, 0, true); // an open-file-description lock has no process
        return FUSE_LK_OUT_SIZE;
      }
      attempt = () => void fcntlLock(fd, F_OFD_SETLK, lock);
    }
    const busy = (err: unknown) =>
      err instanceof SysError && (err.errno === Errno.EAGAIN || err.errno === Errno.EACCES);
    try {
      attempt();
      return 0;
    } catch (err) {
      if (!busy(err)) throw err;
      if (req.opcode === FUSE_SETLK) fail(Errno.EAGAIN);
    }
    // SETLKW: the lock is taken; try again later without holding up anything else.
    if (this.#waits.length >= FS_MAX_LOCK_WAITS) fail(Errno.ENOLCK);
    const wait: LockWait = {
      unique: req.unique,
      chain,
      completer,
      timer: undefined,
      delay: 5,
      attempt: () => {
        try {
          attempt();
          return true;
        } catch (err) {
          if (busy(err)) return false;
          throw err;
        }
      },
    };
    this.#waits.push(wait);
    this.#schedule(wait);
    return undefined;
  }

  #schedule(wait: LockWait): void {
    wait.timer = setTimeout(() => {
      const i = this.#waits.indexOf(wait);
      if (i < 0) return;
      let len: number;
      try {
        if (!wait.attempt()) {
          wait.delay = Math.min(wait.delay * 2, 100);
          this.#schedule(wait);
          return;
        }
        len = this.#reply(wait.chain, wait.unique, 0);
      } catch (err) {
        const e = errnoOf(err) ?? Errno.EIO;
        len = this.error(wait.chain, wait.unique, e);
      }
      this.#waits.splice(i, 1);
      wait.completer.complete(wait.chain, len);
    }, wait.delay);
  }

  #interrupt(target: bigint): void {
    const i = this.#waits.findIndex((w) => w.unique === target);
    if (i < 0) return; // everything else completes at once: nothing to interrupt
    const [wait] = this.#waits.splice(i, 1);
    clearTimeout(wait.timer);
    wait.completer.complete(wait.chain, this.error(wait.chain, wait.unique, Errno.EINTR));
  }

  /** Drop waiting locks without answering them (their queue stopped or was reset). */
  dropWaits(): void {
    for (const w of this.#waits.splice(0)) clearTimeout(w.timer);
  }

  /** The descriptor holding the record locks of one lock owner on one inode. */
  #lockFd(inode: FsInode, owner: bigint): number {
    const key = `${inode.nodeid}:${owner}`;
    const known = this.#lockFds.get(key);
    if (known !== undefined) return known.fd;
    if (this.handles.size + this.#lockFds.size >= this.handles.max) fail(Errno.ENOLCK);
    let fd: number;
    try {
      fd = this.#reopen(inode, this.options.readOnly ? O_RDONLY : O_RDWR);
    } catch (err) {
      if (!(err instanceof SysError && err.errno === Errno.EACCES)) throw err;
      fd = this.#reopen(inode, O_RDONLY);
    }
    this.#lockFds.set(key, { fd, inode });
    return fd;
  }

  #dropLocks(inode: FsInode): void {
    for (const [key, l] of this.#lockFds) {
      if (l.inode !== inode) continue;
      closeQuietly(l.fd);
      this.#lockFds.delete(key);
    }
  }
}
