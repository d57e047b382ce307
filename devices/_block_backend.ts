/**
 * Storage behind a virtio-blk device: the {@linkcode BlockBackend} interface, a
 * raw image file (or block device node) with positional, vectored I/O, and an
 * in-memory disk.
 *
 * @module
 */

import * as fs from "node:fs";
import {
  close as sysClose,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  fdatasync,
  IOV_MAX,
  O_CLOEXEC,
  O_RDONLY,
  O_RDWR,
  open as sysOpen,
  pread,
  preadv,
  pwrite,
  pwritev,
} from "../sys/fd.ts";

/**
 * The storage a {@linkcode BlockDevice} serves. Offsets and lengths are in
 * bytes and always inside `[0, size)` (the device checks them first).
 * Every method is synchronous and throws on failure; the device turns a throw
 * into `VIRTIO_BLK_S_IOERR` for that request only.
 *
 * `read` and `write` receive views that alias guest memory: an implementation
 * must fill or consume them during the call and must not keep them.
 */
export interface BlockBackend {
  /** Size in bytes. */
  readonly size: number;
  /** Whether the storage refuses writes (the device then offers VIRTIO_BLK_F_RO). */
  readonly readOnly: boolean;
  /** Whether `discard` and `writeZeroes(…, true)` may deallocate storage. */
  readonly canUnmap: boolean;
  /**
   * Fill `bufs`, in order, from the bytes starting at `offset`.
   * @param bufs Destination views (aliasing guest memory).
   * @param offset Byte offset of the first byte.
   */
  read(bufs: readonly Uint8Array[], offset: number): void;
  /**
   * Store `bufs`, in order, starting at `offset`.
   * @param bufs Source views (aliasing guest memory).
   * @param offset Byte offset of the first byte.
   */
  write(bufs: readonly Uint8Array[], offset: number): void;
  /** Make every completed write durable (fdatasync). */
  flush(): void;
  /**
   * The range is no longer needed: deallocate it if possible. Reads of it
   * return zeroes afterwards.
   * @param offset Byte offset.
   * @param length Byte length.
   */
  discard(offset: number, length: number): void;
  /**
   * Make the range read as zeroes.
   * @param offset Byte offset.
   * @param length Byte length.
   * @param unmap The storage may be deallocated in the process.
   */
  writeZeroes(offset: number, length: number, unmap: boolean): void;
  /** Release the storage (close files). */
  close(): void;
}

/** Chunk size of the zero buffer used when zeroing without fallocate. */
const ZERO_CHUNK = 1 << 20;
let zeroes: Uint8Array | undefined;

function zeroChunk(): Uint8Array {
  return zeroes ??= new Uint8Array(ZERO_CHUNK);
}

function totalLength(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (let i = 0; i < bufs.length; i++) n += bufs[i].length;
  return n;
}

// Advance a position over `bufs` by `n` bytes; returns the new [index, skip].
function advance(
  bufs: readonly Uint8Array[],
  i: number,
  skip: number,
  n: number,
): [number, number] {
  while (n > 0 && i < bufs.length) {
    const left = bufs[i].length - skip;
    if (n >= left) {
      n -= left;
      i++;
      skip = 0;
    } else {
      skip += n;
      n = 0;
    }
  }
  return [i, skip];
}

/** One direction of positional vectored I/O, and what to do when it makes no progress. */
interface Direction {
  vec(fd: number, bufs: readonly Uint8Array[], pos: number): number;
  one(fd: number, buf: Uint8Array, off: number, len: number, pos: number): number;
  /** No progress at `pos` with `bufs[i]` filled up to `skip`. */
  stalled(bufs: readonly Uint8Array[], i: number, skip: number, pos: number): void;
}

/** preadv; bytes past the end of the file read as zeroes (a sparse or shrunk image). */
const READ: Direction = {
  vec: (fd, bufs, pos) => fs.readvSync(fd, bufs, pos),
  one: (fd, buf, off, len, pos) => fs.readSync(fd, buf, off, len, pos),
  stalled(bufs, i, skip) {
    bufs[i].fill(0, skip);
    for (let j = i + 1; j < bufs.length; j++) bufs[j].fill(0);
  },
};

/** pwritev; a write that makes no progress is an error. */
const WRITE: Direction = {
  vec: (fd, bufs, pos) => fs.writevSync(fd, bufs, pos),
  one: (fd, buf, off, len, pos) => fs.writeSync(fd, buf, off, len, pos),
  stalled(_bufs, _i, _skip, pos) {
    throw new Error(`Short write at offset ${pos}`);
  },
};

/** preadv through the FFI layer (`fd` is an OS descriptor); as {@linkcode READ} otherwise. */
const SYS_READ: Direction = {
  vec: preadv,
  one: (fd, buf, off, len, pos) => pread(fd, buf.subarray(off, off + len), pos),
  stalled: READ.stalled,
};

/** pwritev through the FFI layer. */
const SYS_WRITE: Direction = {
  vec: pwritev,
  one: (fd, buf, off, len, pos) => pwrite(fd, buf.subarray(off, off + len), pos),
  stalled: WRITE.stalled,
};

// The next IOV_MAX views of a longer list, reused by every call (I/O is synchronous).
const ioWindow: Uint8Array[] = [];

/**
 * Transfer the whole of `bufs` at `offset`, retrying short transfers. Every view is its own
 * iovec (a guest buffer that crosses from one memory region into the next arrives as one view
 * per region, each in its own mapping); a list longer than IOV_MAX goes IOV_MAX views at a time.
 */
function transferFully(
  dir: Direction,
  fd: number,
  bufs: readonly Uint8Array[],
  offset: number,
): void {
  let i = 0;
  let skip = 0;
  let pos = offset;
  if (bufs.length <= IOV_MAX) {
    // The common case: one preadv / pwritev moves everything.
    const n = dir.vec(fd, bufs, pos);
    if (n === totalLength(bufs)) return;
    if (n <= 0) return dir.stalled(bufs, 0, 0, pos);
    pos += n;
    [i, skip] = advance(bufs, 0, 0, n);
  }
  while (i < bufs.length) {
    let n: number;
    if (skip === 0) {
      const end = Math.min(bufs.length, i + IOV_MAX);
      ioWindow.length = 0;
      for (let j = i; j < end; j++) ioWindow.push(bufs[j]);
      try {
        n = dir.vec(fd, ioWindow, pos);
      } finally {
        ioWindow.length = 0;
      }
    } else {
      const b = bufs[i];
      n = dir.one(fd, b, skip, b.length - skip, pos);
    }
    if (n <= 0) return dir.stalled(bufs, i, skip, pos);
    pos += n;
    [i, skip] = advance(bufs, i, skip, n);
  }
}

/** Size of a block device node from sysfs (node:fs reports 0 for device nodes). */
function blockDeviceSize(rdev: number): number {
  const dev = BigInt(rdev);
  // glibc's dev_t encoding (gnu_dev_major / gnu_dev_minor).
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  const text = fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, "utf8");
  return Number(text.trim()) * 512;
}

/** Which fallocate(2) modes are still worth trying on a descriptor. */
interface Zeroing {
  punchHole: boolean;
  zeroRange: boolean;
}

// true: done; false: the mode is unavailable here (fall back). Other errors propagate.
function tryFallocate(fd: number | null, mode: number, offset: number, length: number): boolean {
  if (fd === null) return false;
  try {
    fallocate(fd, mode, offset, length);
    return true;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (
      code === "EOPNOTSUPP" || code === "ENOTSUP" || code === "ENOSYS" || code === "EINVAL" ||
      code === "ENODEV"
    ) {
      return false;
    }
    throw err;
  }
}

/**
 * Zero a range of a file: punch a hole when `unmap`, else FALLOC_FL_ZERO_RANGE, else write
 * zeroes; a mode the file system refuses is not tried again (`zeroing` remembers).
 */
function zeroFd(
  zeroing: Zeroing,
  fallocFd: number | null,
  write: Direction,
  ioFd: number,
  offset: number,
  length: number,
  unmap: boolean,
): void {
  if (length === 0) return;
  if (unmap && zeroing.punchHole) {
    if (tryFallocate(fallocFd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)) {
      return;
    }
    zeroing.punchHole = false;
  }
  if (zeroing.zeroRange) {
    if (tryFallocate(fallocFd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)) {
      return;
    }
    zeroing.zeroRange = false;
  }
  const z = zeroChunk();
  const one = [z];
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const n = Math.min(ZERO_CHUNK, end - pos);
    one[0] = n === ZERO_CHUNK ? z : z.subarray(0, n);
    transferFully(write, ioFd, one, pos);
    pos += n;
  }
}

/** Options of {@linkcode FileBackend}. */
export interface FileBackendOptions {
  /** Open the file read-only (default false). */
  readOnly?: boolean;
  /** Size in bytes to expose (default: the file's or device's size). */
  size?: number;
  /**
   * Deallocate with fallocate(2) for DISCARD and WRITE_ZEROES with UNMAP, and
   * zero with FALLOC_FL_ZERO_RANGE (default true). Needs the FFI layer (Deno:
   * `--allow-ffi`); without it, or where the file system lacks the mode, the
   * range is zeroed by writing.
   */
  fallocate?: boolean;
  /**
   * Do reads and writes through the FFI layer's preadv/pwritev when it is
   * available (default true): guest memory mapped from a memfd (vhost-user)
   * goes to the kernel as one iovec table. With `false`, or without FFI
   * (Deno without `--allow-ffi`), `node:fs` does the I/O.
   */
  ffi?: boolean;
}

/**
 * A raw disk image file, or a block device node, served with positional
 * vectored I/O (`preadv`/`pwritev` through the FFI layer, else `node:fs`):
 * there is no shared file offset, and guest-memory views go to the kernel
 * without a copy.
 *
 * @example
 * ```ts ignore
 * const backend = new FileBackend("/var/lib/vm/disk.raw");
 * const blk = new BlockDevice({ backend });
 * ```
 */
export class FileBackend implements BlockBackend {
  /** The path opened. */
  readonly path: string;
  /** The `node:fs` file descriptor used for I/O. */
  readonly fd: number;
  /** Whether the file was opened read-only. */
  readonly readOnly: boolean;
  readonly #size: number | undefined;
  readonly #isBlockDevice: boolean;
  readonly #rdev: number;
  #closed = false;
  // A second descriptor from the FFI layer, for I/O and fallocate: `null` when FFI is unusable.
  #sysFd: number | null;
  // The descriptor and functions reads and writes go through.
  readonly #ioFd: number;
  readonly #read: Direction;
  readonly #write: Direction;
  readonly #zeroing: Zeroing;

  /**
   * Open an image.
   * @param path File or block device path.
   * @param options Read-only, size override, fallocate use.
   * @throws {Error} When the file cannot be opened (the `node:fs` error).
   * @throws {RangeError} When `options.size` is not a non-negative safe integer.
   */
  constructor(path: string, options: FileBackendOptions = {}) {
    if (
      options.size !== undefined && (!Number.isSafeInteger(options.size) || options.size < 0)
    ) {
      throw new RangeError(`Disk size must be a non-negative safe integer, got ${options.size}`);
    }
    this.path = path;
    this.readOnly = options.readOnly ?? false;
    this.fd = fs.openSync(path, this.readOnly ? "r" : "r+");
    try {
      const st = fs.fstatSync(this.fd);
      this.#isBlockDevice = st.isBlockDevice();
      this.#rdev = st.rdev;
      this.#size = options.size;
      void this.size; // fail now, not on first use, if the size is unreadable
    } catch (err) {
      fs.closeSync(this.fd);
      throw err;
    }
    const wantFallocate = (options.fallocate ?? true) && !this.readOnly;
    this.#sysFd = null;
    if (wantFallocate || (options.ffi ?? true)) {
      try {
        this.#sysFd = sysOpen(path, (this.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
      } catch {
        // No FFI (permission or runtime): node:fs does everything, zeroes are written.
      }
    }
    const fallocating = wantFallocate && this.#sysFd !== null;
    this.#zeroing = { punchHole: fallocating, zeroRange: fallocating };
    const sysIo = (options.ffi ?? true) && this.#sysFd !== null;
    this.#ioFd = sysIo ? this.#sysFd! : this.fd;
    this.#read = sysIo ? SYS_READ : READ;
    this.#write = sysIo ? SYS_WRITE : WRITE;
  }

  /** Whether reads and writes go through the FFI layer's preadv/pwritev (else `node:fs`). */
  get usesFfi(): boolean {
    return this.#read === SYS_READ;
  }

  /** Size in bytes: the override, else the file's current size (read each time). */
  get size(): number {
    if (this.#size !== undefined) return this.#size;
    if (this.#isBlockDevice) return blockDeviceSize(this.#rdev);
    return fs.fstatSync(this.fd).size;
  }

  /** Whether deallocation through fallocate(2) may still work. */
  get canUnmap(): boolean {
    return this.#zeroing.punchHole;
  }

  /**
   * Whether discards and unmapping write-zeroes punch holes: `true` while
   * fallocate(2) is usable here, `false` once the file system refused the mode
   * (zeroes are written instead from then on) or without the FFI layer.
   */
  get punchesHoles(): boolean {
    return this.#zeroing.punchHole;
  }

  /**
   * Fill `bufs` from `offset` with one preadv (more only on a short read).
   * @param bufs Destination views.
   * @param offset Byte offset.
   */
  read(bufs: readonly Uint8Array[], offset: number): void {
    transferFully(this.#read, this.#ioFd, bufs, offset);
  }

  /**
   * Store `bufs` at `offset` with one pwritev (more only on a short write).
   * @param bufs Source views.
   * @param offset Byte offset.
   */
  write(bufs: readonly Uint8Array[], offset: number): void {
    transferFully(this.#write, this.#ioFd, bufs, offset);
  }

  /** fdatasync the file. */
  flush(): void {
    fs.fdatasyncSync(this.fd);
  }

  /**
   * Punch a hole (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE), else write zeroes.
   * @param offset Byte offset.
   * @param length Byte length.
   */
  discard(offset: number, length: number): void {
    this.writeZeroes(offset, length, true);
  }

  /**
   * Zero a range: punch a hole when `unmap`, else FALLOC_FL_ZERO_RANGE, else write zeroes.
   * @param offset Byte offset.
   * @param length Byte length.
   * @param unmap Deallocation is allowed.
   */
  writeZeroes(offset: number, length: number, unmap: boolean): void {
    zeroFd(this.#zeroing, this.#sysFd, this.#write, this.#ioFd, offset, length, unmap);
  }

  /**
   * The descriptor and modes another thread of this process needs to serve the same file
   * ({@linkcode FdBackend}), or `undefined` when I/O does not go through the FFI layer. The
   * descriptor stays this backend's: it must outlive every user of the answer.
   * @returns What to hand the thread.
   */
  share(): SharedFileBackend | undefined {
    if (!this.usesFfi || this.#sysFd === null || this.#closed) return undefined;
    return {
      fd: this.#sysFd,
      readOnly: this.readOnly,
      size: this.size,
      punchHole: this.#zeroing.punchHole,
      zeroRange: this.#zeroing.zeroRange,
    };
  }

  /** Close the descriptors; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (typeof this.#sysFd === "number") {
      try {
        sysClose(this.#sysFd);
      } catch {
        // Nothing useful to do: the descriptor is gone either way.
      }
      this.#sysFd = null;
    }
    fs.closeSync(this.fd);
  }
}

/**
 * What {@linkcode FileBackend.share} hands another thread of the same process: the FFI-layer
 * descriptor of the file (descriptors are process-wide) and what is known about it.
 */
export interface SharedFileBackend {
  /** The OS descriptor; it belongs to the FileBackend, which outlives the thread's use. */
  fd: number;
  /** Whether the file was opened read-only. */
  readOnly: boolean;
  /** Size in bytes when shared. */
  size: number;
  /** Whether FALLOC_FL_PUNCH_HOLE is worth trying. */
  punchHole: boolean;
  /** Whether FALLOC_FL_ZERO_RANGE is worth trying. */
  zeroRange: boolean;
}

/**
 * A {@linkcode FileBackend}'s file served on another thread (a Worker serving one queue of a
 * block device): the same positional, vectored I/O through the FFI layer on the shared
 * descriptor, which it never closes.
 */
export class FdBackend implements BlockBackend {
  /** The descriptor. */
  readonly fd: number;
  /** Whether the file refuses writes. */
  readonly readOnly: boolean;
  /** Size in bytes when shared (the device reads the capacity from its configuration). */
  readonly size: number;
  readonly #zeroing: Zeroing;

  /**
   * Serve a shared file.
   * @param shared What {@linkcode FileBackend.share} returned.
   */
  constructor(shared: SharedFileBackend) {
    this.fd = shared.fd;
    this.readOnly = shared.readOnly;
    this.size = shared.size;
    this.#zeroing = { punchHole: shared.punchHole, zeroRange: shared.zeroRange };
  }

  /** Whether discards may deallocate. */
  get canUnmap(): boolean {
    return this.#zeroing.punchHole;
  }

  /**
   * preadv at `offset`.
   * @param bufs Destination views.
   * @param offset Byte offset.
   */
  read(bufs: readonly Uint8Array[], offset: number): void {
    transferFully(SYS_READ, this.fd, bufs, offset);
  }

  /**
   * pwritev at `offset`.
   * @param bufs Source views.
   * @param offset Byte offset.
   */
  write(bufs: readonly Uint8Array[], offset: number): void {
    transferFully(SYS_WRITE, this.fd, bufs, offset);
  }

  /** fdatasync the file. */
  flush(): void {
    fdatasync(this.fd);
  }

  /**
   * Punch a hole, else write zeroes.
   * @param offset Byte offset.
   * @param length Byte length.
   */
  discard(offset: number, length: number): void {
    this.writeZeroes(offset, length, true);
  }

  /**
   * Zero a range as {@linkcode FileBackend.writeZeroes} does.
   * @param offset Byte offset.
   * @param length Byte length.
   * @param unmap Deallocation is allowed.
   */
  writeZeroes(offset: number, length: number, unmap: boolean): void {
    zeroFd(this.#zeroing, this.fd, SYS_WRITE, this.fd, offset, length, unmap);
  }

  /** Nothing to close: the descriptor is the FileBackend's. */
  close(): void {}
}

/**
 * A disk held in memory: for tests, scratch disks and images built on the fly.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MemoryBackend } from "./block.ts";
 * const disk = new MemoryBackend(4096);
 * disk.write([new Uint8Array([1, 2])], 512);
 * const out = new Uint8Array(2);
 * disk.read([out], 512);
 * assert.equal(out[1], 2);
 * ```
 */
export class MemoryBackend implements BlockBackend {
  /** The disk's bytes. */
  readonly bytes: Uint8Array;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** Memory is always "deallocated" by zeroing. */
  readonly canUnmap = true;
  /** Number of `flush` calls so far. */
  flushes = 0;

  /**
   * Create a disk in memory.
   * @param sizeOrBytes Size of a new zeroed disk, or the bytes to serve (aliased, not copied).
   * @param options `readOnly` (default false).
   */
  constructor(sizeOrBytes: number | Uint8Array, options: { readOnly?: boolean } = {}) {
    this.bytes = typeof sizeOrBytes === "number" ? new Uint8Array(sizeOrBytes) : sizeOrBytes;
    this.readOnly = options.readOnly ?? false;
  }

  /** Size in bytes. */
  get size(): number {
    return this.bytes.length;
  }

  /**
   * Copy out of the disk.
   * @param bufs Destination views.
   * @param offset Byte offset.
   */
  read(bufs: readonly Uint8Array[], offset: number): void {
    let pos = offset;
    for (const b of bufs) {
      b.set(this.bytes.subarray(pos, pos + b.length));
      pos += b.length;
    }
  }

  /**
   * Copy into the disk.
   * @param bufs Source views.
   * @param offset Byte offset.
   * @throws {Error} When the disk is read-only.
   */
  write(bufs: readonly Uint8Array[], offset: number): void {
    if (this.readOnly) throw new Error("Memory disk is read-only");
    let pos = offset;
    for (const b of bufs) {
      this.bytes.set(b, pos);
      pos += b.length;
    }
  }

  /** Nothing to make durable; counts the call. */
  flush(): void {
    this.flushes++;
  }

  /**
   * Zero the range.
   * @param offset Byte offset.
   * @param length Byte length.
   */
  discard(offset: number, length: number): void {
    this.writeZeroes(offset, length, true);
  }

  /**
   * Zero the range.
   * @param offset Byte offset.
   * @param length Byte length.
   * @param _unmap Ignored.
   */
  writeZeroes(offset: number, length: number, _unmap: boolean): void {
    if (this.readOnly) throw new Error("Memory disk is read-only");
    this.bytes.fill(0, offset, offset + length);
  }

  /** Nothing to release. */
  close(): void {}
}
