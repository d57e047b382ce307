/**
 * Memory mappings (mmap(2)) exposed as `ArrayBuffer`s: guest RAM, and memory shared with other
 * processes through file descriptors (memfd, vhost-user memory tables).
 *
 * @module
 */

import { backend, fail, libc } from "./libc.ts";

/** mmap(2): pages may not be accessed. */
export const PROT_NONE = 0;
/** mmap(2): pages may be read. */
export const PROT_READ = 1;
/** mmap(2): pages may be written. */
export const PROT_WRITE = 2;
/** mmap(2): pages may be executed. */
export const PROT_EXEC = 4;

/** mmap(2): share the mapping with every other mapping of the same file. */
export const MAP_SHARED = 0x01;
/** mmap(2): copy-on-write private mapping. */
export const MAP_PRIVATE = 0x02;
/** mmap(2): `MAP_SHARED`, failing on unknown flags. */
export const MAP_SHARED_VALIDATE = 0x03;
/** mmap(2): place the mapping exactly at the given address. */
export const MAP_FIXED = 0x10;
/** mmap(2): not backed by a file; zero-filled. */
export const MAP_ANONYMOUS = 0x20;
/** mmap(2): do not reserve swap space. */
export const MAP_NORESERVE = 0x4000;
/** mmap(2): prefault the pages. */
export const MAP_POPULATE = 0x8000;
/** mmap(2): use huge pages. */
export const MAP_HUGETLB = 0x40000;

/** madvise(2): expect access soon. */
export const MADV_WILLNEED = 3;
/** madvise(2): drop the pages; private anonymous pages read back as zero. */
export const MADV_DONTNEED = 4;
/** madvise(2): the pages may be freed lazily. */
export const MADV_FREE = 8;
/** madvise(2): free the pages and their backing store (shared mappings). */
export const MADV_REMOVE = 9;
/** madvise(2): do not make the pages available to a child after fork(2). */
export const MADV_DONTFORK = 10;
/** madvise(2): enable transparent huge pages. */
export const MADV_HUGEPAGE = 14;
/** madvise(2): leave the pages out of core dumps. */
export const MADV_DONTDUMP = 16;

/** Options of {@link mmapFd} and {@link mmapAnonymous}. */
export interface MmapOptions {
  /** `PROT_*` protection; default `PROT_READ | PROT_WRITE`. */
  prot?: number;
  /**
   * `MAP_*` flags; default `MAP_SHARED` for {@link mmapFd} and
   * `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE` for {@link mmapAnonymous}.
   */
  flags?: number;
}

// The address of each live Mapping's buffer, so vectored I/O can hand the kernel pointers into
// it without asking the runtime per view: mapped memory never moves, unlike a small on-heap
// typed array, whose address is only good until the next allocation.
const mappedAddresses = new WeakMap<ArrayBuffer, number>();

/**
 * The address of `view`'s first byte when it lies in the buffer of a live {@link Mapping},
 * else `undefined`. Allocates nothing.
 *
 * @param view A view.
 * @returns The address as a number (user-space addresses are below 2^53), or `undefined`.
 */
export function mappedAddressOf(view: ArrayBufferView): number | undefined {
  const base = mappedAddresses.get(view.buffer as ArrayBuffer);
  return base === undefined ? undefined : base + view.byteOffset;
}

/**
 * A memory mapping seen as an `ArrayBuffer`. The memory stays mapped until {@link Mapping.unmap}
 * is called; dropping the object does not unmap it.
 */
export class Mapping {
  /** The address of the first mapped byte. */
  readonly address: bigint;
  /** The length in bytes. */
  readonly length: number;
  #buffer: ArrayBuffer;
  #mapped = true;

  /**
   * Wraps an existing mapping. Normally made by {@link mmapFd} or {@link mmapAnonymous}.
   *
   * @param address The address of the mapping.
   * @param length Its length in bytes.
   * @throws {RangeError} If `length` is not a positive safe integer.
   */
  constructor(address: bigint, length: number) {
    checkLength(length);
    this.address = address;
    this.length = length;
    this.#buffer = backend().view(address, length);
    mappedAddresses.set(this.#buffer, Number(address));
  }

  /**
   * The mapped memory, without copying. Views made on it alias the mapping (and, for a
   * `MAP_SHARED` mapping, every other mapping of the same file). After {@link Mapping.unmap} it
   * is detached (length 0), so stale views fail safely instead of touching unmapped memory.
   *
   * @returns The buffer.
   */
  get buffer(): ArrayBuffer {
    return this.#buffer;
  }

  /**
   * Whether the memory is still mapped.
   *
   * @returns False after {@link Mapping.unmap}.
   */
  get mapped(): boolean {
    return this.#mapped;
  }

  /**
   * Detaches {@link Mapping.buffer} and unmaps the memory (munmap(2)). Calling it again does
   * nothing. Buffers made separately over the same address (`unsafeView`) are not detached.
   *
   * @throws {SysError} When munmap(2) fails.
   */
  unmap(): void {
    if (!this.#mapped) return;
    this.#mapped = false;
    mappedAddresses.delete(this.#buffer);
    const buffer = this.#buffer as ArrayBuffer & { transfer?: (length: number) => ArrayBuffer };
    if (typeof buffer.transfer === "function") {
      // Detach the external buffer; the zero-length result is what remains.
      this.#buffer = buffer.transfer(0);
    } else {
      this.#buffer = new ArrayBuffer(0);
    }
    munmap(this.address, this.length);
  }
}

function checkLength(length: number): void {
  if (!Number.isSafeInteger(length) || length <= 0) {
    throw new RangeError(`Invalid mapping length: ${length}`);
  }
}

function map(length: number, prot: number, flags: number, fd: number, offset: number): Mapping {
  checkLength(length);
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`Invalid mapping offset: ${offset}`);
  }
  const address = libc().mmap(0n, BigInt(length), prot, flags, fd, BigInt(offset));
  if (address === -1n) fail("mmap");
  return new Mapping(address, length);
}

/**
 * Maps `length` bytes of a file from `offset` (mmap(2)), shared by default.
 *
 * @example Two views of one memfd
 * ```ts
 * import { close, ftruncate, memfdCreate, mmapFd } from "./mod.ts";
 * const fd = memfdCreate("ram");
 * ftruncate(fd, 4096);
 * const a = mmapFd(fd, 4096), b = mmapFd(fd, 4096);
 * new DataView(a.buffer).setUint32(0, 42, true);
 * if (new DataView(b.buffer).getUint32(0, true) !== 42) throw new Error("not shared");
 * a.unmap();
 * b.unmap();
 * close(fd);
 * ```
 *
 * @param fd The file descriptor (the mapping stays valid after it is closed).
 * @param length The length in bytes.
 * @param offset The file offset, a multiple of the page size.
 * @param options Protection and flags.
 * @returns The mapping.
 * @throws {SysError} When mmap(2) fails.
 * @throws {RangeError} If `length` or `offset` is out of range.
 */
export function mmapFd(fd: number, length: number, offset = 0, options: MmapOptions = {}): Mapping {
  const { prot = PROT_READ | PROT_WRITE, flags = MAP_SHARED } = options;
  return map(length, prot, flags, fd, offset);
}

/**
 * Maps `length` bytes of zero-filled anonymous memory (mmap(2)), for guest RAM. By default the
 * mapping is private and reserves no swap, so untouched pages cost nothing.
 *
 * @param length The length in bytes.
 * @param options Protection and flags (`MAP_ANONYMOUS` is always added).
 * @returns The mapping.
 * @throws {SysError} When mmap(2) fails, such as ENOMEM.
 * @throws {RangeError} If `length` is not a positive safe integer.
 */
export function mmapAnonymous(length: number, options: MmapOptions = {}): Mapping {
  const {
    prot = PROT_READ | PROT_WRITE,
    flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
  } = options;
  return map(length, prot, flags | MAP_ANONYMOUS, -1, 0);
}

/**
 * Maps `length` bytes of `fd` from `offset` exactly at `address`, replacing whatever was
 * mapped there (mmap(2) with `MAP_FIXED`); with `fd` -1, zero-filled anonymous memory.
 * This is how a device places file ranges into a window it reserved (a virtio-fs DAX
 * window): the window keeps its address and buffer, only the pages behind it change.
 *
 * @example Replace the first page of an anonymous reservation with a file's first page
 * ```ts ignore
 * const window = mmapAnonymous(1 << 21);
 * mmapFixed(window.address, 4096, fd, 0, { flags: MAP_SHARED });
 * ```
 *
 * @param address Page-aligned start, inside a mapping the caller owns.
 * @param length Length in bytes (a multiple of the page size).
 * @param fd The file, or -1 for anonymous memory.
 * @param offset Page-aligned file offset.
 * @param options Protection (default read and write) and flags (default `MAP_SHARED` for a
 *   file, `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE` for -1); `MAP_FIXED` is always added.
 * @throws {SysError} When mmap(2) fails.
 * @throws {RangeError} If `length` or `offset` is out of range.
 */
export function mmapFixed(
  address: bigint,
  length: number,
  fd: number,
  offset = 0,
  options: MmapOptions = {},
): void {
  checkLength(length);
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`Invalid mapping offset: ${offset}`);
  }
  const anonymous = fd < 0;
  const {
    prot = PROT_READ | PROT_WRITE,
    flags = anonymous ? MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE : MAP_SHARED,
  } = options;
  const f = flags | MAP_FIXED | (anonymous ? MAP_ANONYMOUS : 0);
  const got = libc().mmap(address, BigInt(length), prot, f, anonymous ? -1 : fd, BigInt(offset));
  if (got === -1n) fail("mmap");
}

/**
 * Unmaps a range (munmap(2)). Prefer {@link Mapping.unmap}, which also detaches the buffer;
 * any `ArrayBuffer` still viewing the range crashes the process when touched.
 *
 * @param address The start of the range, page-aligned.
 * @param length The length in bytes.
 * @throws {SysError} When munmap(2) fails.
 */
export function munmap(address: bigint, length: number): void {
  checkLength(length);
  if (libc().munmap(address, BigInt(length)) < 0) fail("munmap");
}

/**
 * Gives the kernel advice about a range of memory (madvise(2)); `MADV_DONTNEED` or
 * `MADV_REMOVE` give pages back, as a balloon device does.
 *
 * @param address The start of the range, page-aligned.
 * @param length The length in bytes.
 * @param advice An `MADV_*` value.
 * @throws {SysError} When madvise(2) fails.
 */
export function madvise(address: bigint, length: number, advice: number): void {
  checkLength(length);
  if (libc().madvise(address, BigInt(length), advice) < 0) fail("madvise");
}
