/**
 * The virtio-fs DAX window (virtio 1.2 §5.11.6.5): shared memory region 0, into which the
 * device maps file ranges on FUSE_SETUPMAPPING and from which it removes them on
 * FUSE_REMOVEMAPPING, so the driver reads and writes file contents in place.
 *
 * The window is an anonymous reservation the device owns; a mapping replaces pages inside
 * it (`mmap(MAP_FIXED)`) and a removal puts anonymous zero pages back, so every byte of the
 * window stays readable by this process whatever the driver does. A file page past the end
 * of its file would raise SIGBUS when touched, which would kill this process: a mapping is
 * therefore backed by the file only up to its end (rounded up to a page) and by zero pages
 * beyond, and it is adjusted whenever the device changes the file's size (WRITE, SETATTR,
 * FALLOCATE, COPY_FILE_RANGE) or sees it changed (GETATTR, LOOKUP). A file shrunk behind the
 * device's back by another host process is the one case left: the driver could then make
 * the device touch a page past the end.
 *
 * @module
 */

import { Errno } from "../sys/libc.ts";
import {
  close,
  type Mapping,
  mmapFixed,
  PROT_READ,
  PROT_WRITE,
  statx,
  STATX_BUFFER_SIZE,
  StatxOffset,
} from "../sys/mod.ts";
import { AT_EMPTY_PATH } from "../sys/fs.ts";

/** Page size the window is managed in (and `map_alignment`, log2 12). */
export const DAX_PAGE = 4096;
/** log2 of {@linkcode DAX_PAGE}: the `map_alignment` announced in FUSE_INIT. */
export const DAX_MAP_ALIGNMENT = 12;
/** Most mapping records (each is a kernel VMA; Linux allows about 65 530 per process). */
export const DAX_MAX_MAPPINGS = 8192;

/** The file of one or more mappings: one descriptor shared by its records. */
interface MappedFile {
  fd: number;
  writable: boolean;
  records: number;
}

/** One mapped range of the window. */
interface DaxRecord {
  /** Offset in the window. */
  moffset: number;
  /** Length. */
  len: number;
  /** File offset of the first byte. */
  foffset: number;
  /** Host identity of the file. */
  key: string;
  /** Bytes from `moffset` backed by the file (the rest is zero pages). */
  backed: number;
  /** Mapped writable. */
  writable: boolean;
}

const stat = new Uint8Array(STATX_BUFFER_SIZE);
const statView = new DataView(stat.buffer);

function fileSize(fd: number): number {
  statx(fd, "", AT_EMPTY_PATH, 0x200, /* STATX_BUFFER_SIZE */ stat);
  return Number(statView.getBigUint64(StatxOffset.size, true));
}

function roundUp(n: number): number {
  return Math.ceil(n / DAX_PAGE) * DAX_PAGE;
}

/** A DAX window and the file ranges mapped into it. */
export class DaxWindow {
  /** The reservation (its buffer is what the guest sees). */
  readonly mapping: Mapping;
  /** Window length in bytes. */
  readonly len: number;
  readonly #records: DaxRecord[] = [];
  readonly #files = new Map<string, MappedFile>();

  /**
   * Take a reservation as the window.
   * @param mapping Anonymous, readable and writable memory (owned from now on).
   */
  constructor(mapping: Mapping) {
    this.mapping = mapping;
    this.len = mapping.length;
  }

  /** Mapping records in use. */
  get count(): number {
    return this.#records.length;
  }

  /**
   * Whether a file has ranges in the window.
   * @param key Host identity.
   * @returns True when it has.
   */
  has(key: string): boolean {
    return this.#files.has(key);
  }

  /**
   * Map `[foffset, foffset + len)` of a file at `moffset` (FUSE_SETUPMAPPING). A mapping
   * that overlaps others replaces their overlapping part (virtio 1.2 §5.11.6.5).
   * @param open Opens the file for mapping (`O_RDWR` when writable, else `O_RDONLY`);
   *   only called when the window holds no descriptor of it yet.
   * @param key The file's host identity.
   * @param range Where and what.
   * @returns 0, or a positive errno.
   */
  setup(
    open: (writable: boolean) => number,
    key: string,
    range: { foffset: number; len: number; moffset: number; writable: boolean },
  ): number {
    const { foffset, len, moffset, writable } = range;
    if (len === 0 || len % DAX_PAGE !== 0 || moffset % DAX_PAGE !== 0 || foffset % DAX_PAGE) {
      return Errno.EINVAL;
    }
    if (moffset + len > this.len) return Errno.EINVAL;
    // Splitting one record in two adds one; the new record adds one.
    if (this.#records.length + 2 > DAX_MAX_MAPPINGS) return Errno.ENOMEM;
    // What the range held is replaced: forget it first (this may close the file's
    // descriptor when the range held its last record; it is opened again below).
    this.#cut(moffset, len);
    let file = this.#files.get(key);
    if (file !== undefined && writable && !file.writable) {
      // Upgrade: a writable mapping needs a descriptor opened for writing.
      const fd = open(true);
      close(file.fd);
      file.fd = fd;
      file.writable = true;
    }
    let created = false;
    if (file === undefined) {
      file = { fd: open(writable), writable, records: 0 };
      created = true;
    }
    try {
      const backed = Math.min(len, Math.max(0, roundUp(fileSize(file.fd)) - foffset));
      this.#place(file.fd, moffset, foffset, backed, len, writable);
      if (created) this.#files.set(key, file);
      file.records++;
      const rec: DaxRecord = { moffset, len, foffset, key, backed, writable };
      const at = this.#records.findIndex((r) => r.moffset > moffset);
      this.#records.splice(at < 0 ? this.#records.length : at, 0, rec);
    } catch (err) {
      if (created) close(file.fd);
      // Leave no file page the bookkeeping does not know about.
      mmapFixed(this.mapping.address + BigInt(moffset), len, -1);
      throw err;
    }
    return 0;
  }

  /**
   * Unmap `[moffset, moffset + len)` (one range of FUSE_REMOVEMAPPING); records it covers
   * in part are split.
   * @param moffset Window offset.
   * @param len Length.
   * @returns 0, or a positive errno.
   */
  remove(moffset: number, len: number): number {
    if (len === 0 || moffset % DAX_PAGE !== 0 || len % DAX_PAGE !== 0) return Errno.EINVAL;
    if (moffset + len > this.len) return Errno.EINVAL;
    if (this.#records.length + 1 > DAX_MAX_MAPPINGS) return Errno.ENOMEM;
    mmapFixed(this.mapping.address + BigInt(moffset), len, -1);
    this.#cut(moffset, len);
    return 0;
  }

  /**
   * The device changed (or saw) a file's size: back its ranges by the file up to its new
   * end and by zero pages beyond.
   * @param key The file's host identity.
   */
  refresh(key: string): void {
    const file = this.#files.get(key);
    if (file === undefined) return;
    const end = roundUp(fileSize(file.fd));
    for (const r of this.#records) {
      if (r.key !== key) continue;
      const backed = Math.min(r.len, Math.max(0, end - r.foffset));
      if (backed === r.backed) continue;
      this.#place(file.fd, r.moffset, r.foffset, backed, r.len, r.writable);
      r.backed = backed;
    }
  }

  /** Unmap everything (a new session or a reset). */
  clear(): void {
    if (this.#records.length > 0 && this.mapping.mapped) {
      mmapFixed(this.mapping.address, this.len, -1);
    }
    this.#records.length = 0;
    for (const f of this.#files.values()) close(f.fd);
    this.#files.clear();
  }

  /** Unmap everything and give the reservation back. */
  close(): void {
    this.clear();
    this.mapping.unmap();
  }

  /** File pages for the first `backed` bytes, zero pages for the rest. */
  #place(
    fd: number,
    moffset: number,
    foffset: number,
    backed: number,
    len: number,
    writable: boolean,
  ): void {
    const base = this.mapping.address + BigInt(moffset);
    if (backed > 0) {
      const prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
      mmapFixed(base, backed, fd, foffset, { prot });
    }
    if (backed < len) mmapFixed(base + BigInt(backed), len - backed, -1);
  }

  /** Drop the bookkeeping of `[moffset, moffset + len)`, splitting records it cuts. */
  #cut(moffset: number, len: number): void {
    const end = moffset + len;
    const out: DaxRecord[] = [];
    for (const r of this.#records) {
      const rEnd = r.moffset + r.len;
      if (rEnd <= moffset || r.moffset >= end) {
        out.push(r);
        continue;
      }
      const file = this.#files.get(r.key)!;
      file.records--;
      if (r.moffset < moffset) {
        const keep = moffset - r.moffset;
        out.push({ ...r, len: keep, backed: Math.min(r.backed, keep) });
        file.records++;
      }
      if (rEnd > end) {
        const skip = end - r.moffset;
        out.push({
          ...r,
          moffset: end,
          foffset: r.foffset + skip,
          len: rEnd - end,
          backed: Math.max(0, r.backed - skip),
        });
        file.records++;
      }
      if (file.records === 0) {
        close(file.fd);
        this.#files.delete(r.key);
      }
    }
    this.#records.length = 0;
    for (const r of out) this.#records.push(r);
  }
}
