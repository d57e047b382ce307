/**
 * The driver side of virtio-fs: a FUSE client that builds requests as Linux's virtiofs
 * driver does, puts them on a device's queues and decodes the replies. It runs over any
 * {@linkcode FuseTransport}: the in-process {@linkcode DeviceQueueTransport} (a device and
 * {@linkcode DriverQueue}s in one guest memory) or {@linkcode FrontendTransport} (a
 * vhost-user backend through {@linkcode VhostUserFrontend}, the way QEMU would).
 *
 * @module
 */

import type { VirtioDevice } from "../devices/device.ts";
import {
  FUSE_ACCESS,
  FUSE_ATTR_OUT_SIZE,
  FUSE_BATCH_FORGET,
  FUSE_COPY_FILE_RANGE,
  FUSE_CREATE,
  FUSE_DESTROY,
  FUSE_DIRENT_SIZE,
  FUSE_ENTRY_OUT_SIZE,
  FUSE_FALLOCATE,
  FUSE_FLUSH,
  FUSE_FORGET,
  FUSE_FSYNC,
  FUSE_FSYNCDIR,
  FUSE_GETATTR,
  FUSE_GETLK,
  FUSE_GETXATTR,
  FUSE_INIT,
  FUSE_INIT_OUT_SIZE,
  FUSE_INTERRUPT,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_LINK,
  FUSE_LISTXATTR,
  FUSE_LOOKUP,
  FUSE_LSEEK,
  FUSE_MKDIR,
  FUSE_MKNOD,
  FUSE_OPEN,
  FUSE_OPEN_OUT_SIZE,
  FUSE_OPENDIR,
  FUSE_OUT_HEADER_SIZE,
  FUSE_READ,
  FUSE_READDIR,
  FUSE_READDIRPLUS,
  FUSE_READLINK,
  FUSE_RELEASE,
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
  FUSE_SETXATTR,
  FUSE_STATFS,
  FUSE_STATFS_OUT_SIZE,
  FUSE_SYMLINK,
  FUSE_SYNCFS,
  FUSE_UNLINK,
  FUSE_WRITE,
  type FuseHeaderFields,
  fuseRequest,
} from "../devices/_fs_protocol.ts";
import type { DriverBuffer, DriverQueue } from "./queue_driver.ts";
import type { VhostUserFrontend } from "./vhost_user_frontend.ts";

/** Moves one request chain to a device and brings back what it wrote. */
export interface FuseTransport {
  /**
   * Put a chain of `readable` buffers then writable buffers of `writable` sizes on queue
   * `queue`, notify, and resolve with the bytes the device reports written (the used length).
   * @param queue Queue index.
   * @param readable Device-readable buffers.
   * @param writable Sizes of device-writable buffers (may be empty).
   * @returns The written prefix of the writable part.
   */
  roundTrip(queue: number, readable: Uint8Array[], writable: number[]): Promise<Uint8Array>;
}

/** How long a transport waits for a chain to come back (milliseconds). */
export const FUSE_TRANSPORT_TIMEOUT_MS = 10_000;

interface Waiter {
  resolve(bytes: Uint8Array): void;
  reject(err: Error): void;
}

/**
 * A device served in this process, driven through {@linkcode DriverQueue}s laid out in the
 * same guest memory: `processQueue` runs on each request; replies deferred by the device
 * (a lock wait) are picked up as they arrive.
 */
export class DeviceQueueTransport implements FuseTransport {
  readonly #device: VirtioDevice;
  readonly #drivers: readonly DriverQueue[];
  readonly #waiting = new Map<string, Waiter>();

  /**
   * Create it.
   * @param device The activated device.
   * @param drivers The driver side of each queue, by index.
   */
  constructor(device: VirtioDevice, drivers: readonly DriverQueue[]) {
    this.#device = device;
    this.#drivers = drivers;
  }

  /**
   * One request.
   * @param queue Queue index.
   * @param readable Device-readable buffers.
   * @param writable Writable buffer sizes.
   * @returns What the device wrote.
   */
  roundTrip(queue: number, readable: Uint8Array[], writable: number[]): Promise<Uint8Array> {
    const driver = this.#drivers[queue];
    const buffers: DriverBuffer[] = [
      ...readable.map((b) => ({ readable: b })),
      ...writable.map((n) => ({ writable: n })),
    ];
    const head = driver.addChain(buffers, { indirect: buffers.length > 16 });
    const done = new Promise<Uint8Array>((resolve, reject) => {
      this.#waiting.set(`${queue}:${head}`, { resolve, reject });
    });
    while (this.#device.processQueue(queue) === true) { /* serve the whole ring */ }
    this.#reap(queue);
    if (this.#waiting.has(`${queue}:${head}`)) void this.#poll(queue, head);
    return done;
  }

  #reap(queue: number): void {
    const driver = this.#drivers[queue];
    for (const used of driver.takeAllUsed()) {
      const w = this.#waiting.get(`${queue}:${used.id}`);
      this.#waiting.delete(`${queue}:${used.id}`);
      w?.resolve(used.written.subarray(0, used.len));
    }
  }

  async #poll(queue: number, head: number): Promise<void> {
    const key = `${queue}:${head}`;
    const end = Date.now() + FUSE_TRANSPORT_TIMEOUT_MS;
    while (this.#waiting.has(key)) {
      if (Date.now() > end) {
        const w = this.#waiting.get(key)!;
        this.#waiting.delete(key);
        w.reject(new Error(`chain ${head} on queue ${queue} never came back`));
        return;
      }
      await new Promise((r) => setTimeout(r, 2));
      this.#reap(queue);
    }
  }
}

/**
 * A vhost-user backend driven through {@linkcode VhostUserFrontend}'s rings (the way QEMU
 * and a guest would): chains are added, the kick eventfd written, and replies collected as
 * the call eventfd fires. Several requests may be in flight at once.
 */
export class FrontendTransport implements FuseTransport {
  readonly #frontend: VhostUserFrontend;
  readonly #waiting = new Map<string, Waiter>();
  readonly #pumping = new Set<number>();

  /**
   * Create it.
   * @param frontend A started frontend (rings set up).
   */
  constructor(frontend: VhostUserFrontend) {
    this.#frontend = frontend;
  }

  /**
   * One request.
   * @param queue Ring index.
   * @param readable Device-readable buffers.
   * @param writable Writable buffer sizes.
   * @returns What the backend wrote.
   */
  roundTrip(queue: number, readable: Uint8Array[], writable: number[]): Promise<Uint8Array> {
    const { driver } = this.#frontend.ring(queue);
    const buffers: DriverBuffer[] = [
      ...readable.map((b) => ({ readable: b })),
      ...writable.map((n) => ({ writable: n })),
    ];
    const head = driver.addChain(buffers, { indirect: buffers.length > 16 });
    const done = new Promise<Uint8Array>((resolve, reject) => {
      this.#waiting.set(`${queue}:${head}`, { resolve, reject });
    });
    this.#frontend.kick(queue);
    if (!this.#pumping.has(queue)) void this.#pump(queue);
    return done;
  }

  #pending(queue: number): boolean {
    for (const k of this.#waiting.keys()) if (k.startsWith(`${queue}:`)) return true;
    return false;
  }

  async #pump(queue: number): Promise<void> {
    this.#pumping.add(queue);
    const { driver } = this.#frontend.ring(queue);
    try {
      while (this.#pending(queue)) {
        for (const used of driver.takeAllUsed()) {
          const w = this.#waiting.get(`${queue}:${used.id}`);
          this.#waiting.delete(`${queue}:${used.id}`);
          w?.resolve(used.written.subarray(0, used.len));
        }
        if (!this.#pending(queue)) break;
        if (!(await this.#frontend.waitCall(queue, FUSE_TRANSPORT_TIMEOUT_MS))) {
          if (driver.pendingUsed() > 0) continue;
          throw new Error(`no reply on ring ${queue} within ${FUSE_TRANSPORT_TIMEOUT_MS} ms`);
        }
      }
    } catch (err) {
      for (const [k, w] of this.#waiting) {
        if (!k.startsWith(`${queue}:`)) continue;
        this.#waiting.delete(k);
        w.reject(err instanceof Error ? err : new Error(String(err)));
      }
    } finally {
      this.#pumping.delete(queue);
    }
  }
}

/** A FUSE reply that carried an error. */
export class FuseError extends Error {
  /** The errno (positive). */
  readonly errno: number;
  /** The request's opcode. */
  readonly opcode: number;

  /**
   * Create it.
   * @param opcode The request's opcode.
   * @param errno The errno (positive).
   */
  constructor(opcode: number, errno: number) {
    super(`FUSE opcode ${opcode} failed with errno ${errno}`);
    this.name = "FuseError";
    this.opcode = opcode;
    this.errno = errno;
  }
}

/** A decoded reply. */
export interface FuseReply {
  /** `out.len`. */
  len: number;
  /** `out.error` (0 or a negative errno). */
  error: number;
  /** `out.unique`. */
  unique: bigint;
  /** The payload after the header (as long as `out.len` says, within what was written). */
  payload: Uint8Array;
  /** The used length the device reported. */
  used: number;
}

/** `struct fuse_attr`, decoded. */
export interface FuseAttr {
  /** Inode number (the host's). */
  ino: bigint;
  /** Size. */
  size: number;
  /** 512-byte blocks. */
  blocks: number;
  /** Access time (seconds). */
  atime: number;
  /** Modification time (seconds). */
  mtime: number;
  /** Change time (seconds). */
  ctime: number;
  /** Access time nanoseconds. */
  atimensec: number;
  /** Modification time nanoseconds. */
  mtimensec: number;
  /** Type and permissions. */
  mode: number;
  /** Links. */
  nlink: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** Device number (Linux new encoding). */
  rdev: number;
  /** Block size. */
  blksize: number;
}

/** `struct fuse_entry_out`, decoded. */
export interface FuseEntry {
  /** Node id (0: no entry). */
  nodeid: number;
  /** Generation. */
  generation: bigint;
  /** Seconds the name may be cached. */
  entryValid: number;
  /** Seconds the attributes may be cached. */
  attrValid: number;
  /** Attributes. */
  attr: FuseAttr;
}

/** `struct fuse_init_out`, decoded. */
export interface FuseInitOut {
  /** Major version. */
  major: number;
  /** Minor version. */
  minor: number;
  /** Read-ahead. */
  maxReadahead: number;
  /** Flags (low 32 bits). */
  flags: number;
  /** Background requests. */
  maxBackground: number;
  /** Largest write. */
  maxWrite: number;
  /** Timestamp granularity in ns. */
  timeGran: number;
  /** Pages per request. */
  maxPages: number;
  /** log2 of the DAX mapping alignment. */
  mapAlignment: number;
  /** Flags (high 32 bits). */
  flags2: number;
}

/** One directory entry (`struct fuse_dirent`). */
export interface FuseDirent {
  /** Inode number. */
  ino: bigint;
  /** Cookie of the next entry. */
  off: bigint;
  /** `DT_*` type. */
  type: number;
  /** Name. */
  name: string;
}

/** One READDIRPLUS entry: the lookup (node id 0 for none) and the entry. */
export interface FuseDirentPlus extends FuseDirent {
  /** The entry (a lookup the driver must forget, unless `nodeid` is 0). */
  entry: FuseEntry;
}

/** Fields of SETATTR (`valid` says which count). */
export interface FuseSetattr {
  /** `FATTR_*` mask. */
  valid: number;
  /** Handle (with `FATTR_FH`). */
  fh?: number;
  /** New size. */
  size?: number;
  /** Access time. */
  atime?: number;
  /** Access time ns. */
  atimensec?: number;
  /** Modification time. */
  mtime?: number;
  /** Modification time ns. */
  mtimensec?: number;
  /** Mode. */
  mode?: number;
  /** Owner. */
  uid?: number;
  /** Group. */
  gid?: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * A name or string argument, NUL-terminated.
 * @param s The text, or raw bytes (then taken as they are: no NUL is added).
 * @returns The bytes.
 */
export function fuseName(s: string | Uint8Array): Uint8Array {
  return typeof s === "string" ? enc.encode(s + "\0") : s;
}

function le(size: number, fill: (v: DataView) => void): Uint8Array {
  const b = new Uint8Array(size);
  fill(new DataView(b.buffer));
  return b;
}

/**
 * Decode `struct fuse_attr` at `at`.
 * @param v A view.
 * @param at Offset.
 * @returns The attributes.
 */
export function decodeFuseAttr(v: DataView, at: number): FuseAttr {
  return {
    ino: v.getBigUint64(at, true),
    size: Number(v.getBigUint64(at + 8, true)),
    blocks: Number(v.getBigUint64(at + 16, true)),
    atime: Number(v.getBigInt64(at + 24, true)),
    mtime: Number(v.getBigInt64(at + 32, true)),
    ctime: Number(v.getBigInt64(at + 40, true)),
    atimensec: v.getUint32(at + 48, true),
    mtimensec: v.getUint32(at + 52, true),
    mode: v.getUint32(at + 60, true),
    nlink: v.getUint32(at + 64, true),
    uid: v.getUint32(at + 68, true),
    gid: v.getUint32(at + 72, true),
    rdev: v.getUint32(at + 76, true),
    blksize: v.getUint32(at + 80, true),
  };
}

/**
 * Decode `struct fuse_entry_out` at `at`.
 * @param v A view.
 * @param at Offset.
 * @returns The entry.
 */
export function decodeFuseEntry(v: DataView, at = 0): FuseEntry {
  return {
    nodeid: Number(v.getBigUint64(at, true)),
    generation: v.getBigUint64(at + 8, true),
    entryValid: Number(v.getBigUint64(at + 16, true)),
    attrValid: Number(v.getBigUint64(at + 24, true)),
    attr: decodeFuseAttr(v, at + 40),
  };
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * Decode a READDIR or READDIRPLUS payload.
 * @param payload The reply's payload.
 * @param plus Whether it is READDIRPLUS.
 * @returns The entries.
 */
export function decodeFuseDirents(payload: Uint8Array, plus: boolean): FuseDirentPlus[] {
  const v = view(payload);
  const out: FuseDirentPlus[] = [];
  let at = 0;
  while (at < payload.length) {
    const entry = plus ? decodeFuseEntry(v, at) : undefined;
    const d = plus ? at + FUSE_ENTRY_OUT_SIZE : at;
    const namelen = v.getUint32(d + 16, true);
    out.push({
      ino: v.getBigUint64(d, true),
      off: v.getBigUint64(d + 8, true),
      type: v.getUint32(d + 20, true),
      name: dec.decode(payload.subarray(d + FUSE_DIRENT_SIZE, d + FUSE_DIRENT_SIZE + namelen)),
      entry: entry!,
    });
    at = (d + FUSE_DIRENT_SIZE + namelen + 7) & ~7;
  }
  return out;
}

/**
 * A FUSE session over a transport: each method is one request, its reply decoded; an error
 * reply throws {@linkcode FuseError}.
 *
 * @example
 * ```ts ignore
 * const s = new FuseSession(transport);
 * await s.init();
 * const e = await s.lookup(1, "hello.txt");
 * const { fh } = await s.open(e.nodeid, 0);
 * const data = await s.read(e.nodeid, fh, 0, 4096);
 * ```
 */
export class FuseSession {
  /** The transport. */
  readonly transport: FuseTransport;
  /** The request queue used (default 1, the first request queue). */
  queue: number;
  #unique = 0n;

  /**
   * Create it.
   * @param transport The transport.
   * @param queue The request queue (default 1).
   */
  constructor(transport: FuseTransport, queue = 1) {
    this.transport = transport;
    this.queue = queue;
  }

  /** The next request id. */
  nextUnique(): bigint {
    this.#unique += 2n; // Linux's ids are even (odd ones mark interrupts)
    return this.#unique;
  }

  /**
   * Send any request and decode the reply header (no error is thrown for an error reply).
   * @param opcode Opcode.
   * @param header Header fields (a fresh `unique` when absent).
   * @param parts Argument bytes, each its own readable buffer after the header.
   * @param replySize Writable bytes (0: none, as on hiprio).
   * @param queue Queue (default the session's).
   * @returns The reply.
   */
  async raw(
    opcode: number,
    header: FuseHeaderFields,
    parts: Uint8Array[],
    replySize: number,
    queue: number = this.queue,
  ): Promise<FuseReply> {
    const unique = header.unique ?? this.nextUnique();
    let argBytes = 0;
    for (const p of parts) argBytes += p.length;
    const head = fuseRequest(opcode, {
      ...header,
      unique,
      len: header.len ?? 40 + argBytes + (header.totalExtlen ?? 0) * 8,
    });
    const readable = [head, ...parts.filter((p) => p.length > 0)];
    const written = await this.transport.roundTrip(
      queue,
      readable,
      replySize > 0 ? [replySize] : [],
    );
    const used = written.length;
    if (used < FUSE_OUT_HEADER_SIZE) {
      return { len: 0, error: 0, unique: 0n, payload: new Uint8Array(0), used };
    }
    const v = view(written);
    const len = v.getUint32(0, true);
    return {
      len,
      error: v.getInt32(4, true),
      unique: v.getBigUint64(8, true),
      payload: written.subarray(FUSE_OUT_HEADER_SIZE, Math.min(len, used)),
      used,
    };
  }

  /**
   * Send a request; resolve with the payload, reject with {@linkcode FuseError}.
   * @param opcode Opcode.
   * @param nodeid Node.
   * @param parts Arguments.
   * @param replySize Payload room (the header is added).
   * @returns The payload.
   */
  async call(
    opcode: number,
    nodeid: number,
    parts: Uint8Array[],
    replySize: number,
  ): Promise<Uint8Array> {
    const r = await this.raw(opcode, { nodeid }, parts, FUSE_OUT_HEADER_SIZE + replySize);
    if (r.error !== 0) throw new FuseError(opcode, -r.error);
    return r.payload;
  }

  /**
   * FUSE_INIT.
   * @param flags INIT flags offered (default: what Linux 6.1's virtiofs offers).
   * @param options Version and read-ahead.
   * @returns The negotiated values.
   */
  async init(
    flags = 0x7fffffff,
    options: { major?: number; minor?: number; maxReadahead?: number; flags2?: number } = {},
  ): Promise<FuseInitOut> {
    const arg = le(64, (v) => {
      v.setUint32(0, options.major ?? FUSE_KERNEL_VERSION, true);
      v.setUint32(4, options.minor ?? FUSE_KERNEL_MINOR_VERSION, true);
      v.setUint32(8, options.maxReadahead ?? 128 << 10, true);
      v.setUint32(12, flags, true);
      v.setUint32(16, options.flags2 ?? 0, true);
    });
    const p = await this.call(FUSE_INIT, 0, [arg], FUSE_INIT_OUT_SIZE);
    const v = view(p);
    return {
      major: v.getUint32(0, true),
      minor: v.getUint32(4, true),
      maxReadahead: p.length >= 12 ? v.getUint32(8, true) : 0,
      flags: p.length >= 16 ? v.getUint32(12, true) : 0,
      maxBackground: p.length >= 18 ? v.getUint16(16, true) : 0,
      maxWrite: p.length >= 24 ? v.getUint32(20, true) : 0,
      timeGran: p.length >= 28 ? v.getUint32(24, true) : 0,
      maxPages: p.length >= 30 ? v.getUint16(28, true) : 0,
      mapAlignment: p.length >= 32 ? v.getUint16(30, true) : 0,
      flags2: p.length >= 36 ? v.getUint32(32, true) : 0,
    };
  }

  /** FUSE_LOOKUP. */
  async lookup(parent: number, name: string | Uint8Array): Promise<FuseEntry> {
    return decodeFuseEntry(
      view(await this.call(FUSE_LOOKUP, parent, [fuseName(name)], FUSE_ENTRY_OUT_SIZE)),
    );
  }

  /** FUSE_FORGET on the hiprio queue (no reply). */
  async forget(nodeid: number, nlookup: number): Promise<void> {
    await this.raw(
      FUSE_FORGET,
      { nodeid },
      [le(8, (v) => v.setBigUint64(0, BigInt(nlookup), true))],
      0,
      0,
    );
  }

  /** FUSE_BATCH_FORGET on the hiprio queue (no reply). */
  async batchForget(list: { nodeid: number; nlookup: number }[]): Promise<void> {
    const arg = le(8 + 16 * list.length, (v) => {
      v.setUint32(0, list.length, true);
      list.forEach((f, i) => {
        v.setBigUint64(8 + 16 * i, BigInt(f.nodeid), true);
        v.setBigUint64(16 + 16 * i, BigInt(f.nlookup), true);
      });
    });
    await this.raw(FUSE_BATCH_FORGET, { nodeid: 0 }, [arg], 0, 0);
  }

  /** FUSE_GETATTR. */
  async getattr(nodeid: number, fh?: number): Promise<FuseAttr> {
    const arg = le(16, (v) => {
      v.setUint32(0, fh === undefined ? 0 : 1, true);
      v.setBigUint64(8, BigInt(fh ?? 0), true);
    });
    const p = await this.call(FUSE_GETATTR, nodeid, [arg], FUSE_ATTR_OUT_SIZE);
    return decodeFuseAttr(view(p), 16);
  }

  /** FUSE_SETATTR. */
  async setattr(nodeid: number, s: FuseSetattr): Promise<FuseAttr> {
    const arg = le(88, (v) => {
      v.setUint32(0, s.valid, true);
      v.setBigUint64(8, BigInt(s.fh ?? 0), true);
      v.setBigUint64(16, BigInt(s.size ?? 0), true);
      v.setBigInt64(32, BigInt(s.atime ?? 0), true);
      v.setBigInt64(40, BigInt(s.mtime ?? 0), true);
      v.setUint32(56, s.atimensec ?? 0, true);
      v.setUint32(60, s.mtimensec ?? 0, true);
      v.setUint32(68, s.mode ?? 0, true);
      v.setUint32(76, s.uid ?? 0, true);
      v.setUint32(80, s.gid ?? 0, true);
    });
    const p = await this.call(FUSE_SETATTR, nodeid, [arg], FUSE_ATTR_OUT_SIZE);
    return decodeFuseAttr(view(p), 16);
  }

  /** FUSE_READLINK. */
  async readlink(nodeid: number): Promise<string> {
    return dec.decode(await this.call(FUSE_READLINK, nodeid, [], 4096));
  }

  /** FUSE_SYMLINK. */
  async symlink(parent: number, name: string | Uint8Array, target: string): Promise<FuseEntry> {
    const p = await this.call(
      FUSE_SYMLINK,
      parent,
      [fuseName(name), fuseName(target)],
      FUSE_ENTRY_OUT_SIZE,
    );
    return decodeFuseEntry(view(p));
  }

  /** FUSE_MKNOD. */
  async mknod(
    parent: number,
    name: string | Uint8Array,
    mode: number,
    rdev = 0,
  ): Promise<FuseEntry> {
    const arg = le(16, (v) => {
      v.setUint32(0, mode, true);
      v.setUint32(4, rdev, true);
    });
    const p = await this.call(FUSE_MKNOD, parent, [arg, fuseName(name)], FUSE_ENTRY_OUT_SIZE);
    return decodeFuseEntry(view(p));
  }

  /** FUSE_MKDIR. */
  async mkdir(parent: number, name: string | Uint8Array, mode = 0o755): Promise<FuseEntry> {
    const arg = le(8, (v) => v.setUint32(0, mode, true));
    const p = await this.call(FUSE_MKDIR, parent, [arg, fuseName(name)], FUSE_ENTRY_OUT_SIZE);
    return decodeFuseEntry(view(p));
  }

  /** FUSE_UNLINK. */
  async unlink(parent: number, name: string | Uint8Array): Promise<void> {
    await this.call(FUSE_UNLINK, parent, [fuseName(name)], 0);
  }

  /** FUSE_RMDIR. */
  async rmdir(parent: number, name: string | Uint8Array): Promise<void> {
    await this.call(FUSE_RMDIR, parent, [fuseName(name)], 0);
  }

  /** FUSE_RENAME (flags 0) or FUSE_RENAME2. */
  async rename(
    parent: number,
    oldname: string,
    newdir: number,
    newname: string,
    flags?: number,
  ): Promise<void> {
    if (flags === undefined) {
      const arg = le(8, (v) => v.setBigUint64(0, BigInt(newdir), true));
      await this.call(FUSE_RENAME, parent, [arg, fuseName(oldname), fuseName(newname)], 0);
      return;
    }
    const arg = le(16, (v) => {
      v.setBigUint64(0, BigInt(newdir), true);
      v.setUint32(8, flags, true);
    });
    await this.call(FUSE_RENAME2, parent, [arg, fuseName(oldname), fuseName(newname)], 0);
  }

  /** FUSE_LINK: a new name `name` in `newparent` for `nodeid`. */
  async link(nodeid: number, newparent: number, name: string): Promise<FuseEntry> {
    const arg = le(8, (v) => v.setBigUint64(0, BigInt(nodeid), true));
    const p = await this.call(FUSE_LINK, newparent, [arg, fuseName(name)], FUSE_ENTRY_OUT_SIZE);
    return decodeFuseEntry(view(p));
  }

  /** FUSE_OPEN (`openFlags`: `FUSE_OPEN_*`). */
  async open(
    nodeid: number,
    flags: number,
    openFlags = 0,
  ): Promise<{ fh: number; openFlags: number }> {
    const arg = le(8, (v) => {
      v.setUint32(0, flags, true);
      v.setUint32(4, openFlags, true);
    });
    const v = view(await this.call(FUSE_OPEN, nodeid, [arg], FUSE_OPEN_OUT_SIZE));
    return { fh: Number(v.getBigUint64(0, true)), openFlags: v.getUint32(8, true) };
  }

  /** FUSE_OPENDIR. */
  async opendir(nodeid: number): Promise<{ fh: number; openFlags: number }> {
    const arg = le(8, () => {});
    const v = view(await this.call(FUSE_OPENDIR, nodeid, [arg], FUSE_OPEN_OUT_SIZE));
    return { fh: Number(v.getBigUint64(0, true)), openFlags: v.getUint32(8, true) };
  }

  /** The 40-byte `fuse_read_in` / `fuse_write_in`. */
  static ioArg(fh: number, offset: number | bigint, size: number, flags = 0): Uint8Array {
    return le(40, (v) => {
      v.setBigUint64(0, BigInt(fh), true);
      v.setBigUint64(8, BigInt(offset), true);
      v.setUint32(16, size, true);
      v.setUint32(20, flags, true);
    });
  }

  /** FUSE_READ: resolves with the bytes read (fewer at the end of the file). */
  async read(nodeid: number, fh: number, offset: number, size: number): Promise<Uint8Array> {
    return await this.call(FUSE_READ, nodeid, [FuseSession.ioArg(fh, offset, size)], size);
  }

  /** FUSE_WRITE: header, `fuse_write_in` and data each in their own buffer. */
  async write(
    nodeid: number,
    fh: number,
    offset: number,
    data: Uint8Array,
    writeFlags = 0,
  ): Promise<number> {
    const arg = FuseSession.ioArg(fh, offset, data.length, writeFlags);
    const p = await this.call(FUSE_WRITE, nodeid, [arg, data], 8);
    return view(p).getUint32(0, true);
  }

  /** FUSE_STATFS. */
  async statfs(
    nodeid = 1,
  ): Promise<{ blocks: bigint; bfree: bigint; files: bigint; bsize: number; namelen: number }> {
    const v = view(await this.call(FUSE_STATFS, nodeid, [], FUSE_STATFS_OUT_SIZE));
    return {
      blocks: v.getBigUint64(0, true),
      bfree: v.getBigUint64(8, true),
      files: v.getBigUint64(24, true),
      bsize: v.getUint32(40, true),
      namelen: v.getUint32(44, true),
    };
  }

  /** FUSE_RELEASE or FUSE_RELEASEDIR. */
  async release(nodeid: number, fh: number, dir = false, releaseFlags = 0): Promise<void> {
    const arg = le(24, (v) => {
      v.setBigUint64(0, BigInt(fh), true);
      v.setUint32(12, releaseFlags, true);
    });
    await this.call(dir ? FUSE_RELEASEDIR : FUSE_RELEASE, nodeid, [arg], 0);
  }

  /** FUSE_FSYNC or FUSE_FSYNCDIR. */
  async fsync(nodeid: number, fh: number, datasync = false, dir = false): Promise<void> {
    const arg = le(16, (v) => {
      v.setBigUint64(0, BigInt(fh), true);
      v.setUint32(8, datasync ? 1 : 0, true);
    });
    await this.call(dir ? FUSE_FSYNCDIR : FUSE_FSYNC, nodeid, [arg], 0);
  }

  /** FUSE_FLUSH. */
  async flush(nodeid: number, fh: number, lockOwner = 0n): Promise<void> {
    const arg = le(24, (v) => {
      v.setBigUint64(0, BigInt(fh), true);
      v.setBigUint64(16, lockOwner, true);
    });
    await this.call(FUSE_FLUSH, nodeid, [arg], 0);
  }

  /** FUSE_SETXATTR (`ext`: the 16-byte argument of FUSE_SETXATTR_EXT). */
  async setxattr(
    nodeid: number,
    name: string,
    value: Uint8Array,
    flags = 0,
    ext = true,
  ): Promise<void> {
    const arg = le(ext ? 16 : 8, (v) => {
      v.setUint32(0, value.length, true);
      v.setUint32(4, flags, true);
    });
    await this.call(FUSE_SETXATTR, nodeid, [arg, fuseName(name), value], 0);
  }

  /** FUSE_GETXATTR: `size` 0 asks for the size. */
  async getxattr(nodeid: number, name: string, size: number): Promise<Uint8Array | number> {
    const arg = le(8, (v) => v.setUint32(0, size, true));
    const p = await this.call(FUSE_GETXATTR, nodeid, [arg, fuseName(name)], size === 0 ? 8 : size);
    return size === 0 ? view(p).getUint32(0, true) : p;
  }

  /** FUSE_LISTXATTR: `size` 0 asks for the size. */
  async listxattr(nodeid: number, size: number): Promise<string[] | number> {
    const arg = le(8, (v) => v.setUint32(0, size, true));
    const p = await this.call(FUSE_LISTXATTR, nodeid, [arg], size === 0 ? 8 : size);
    if (size === 0) return view(p).getUint32(0, true);
    return dec.decode(p).split("\0").filter((s) => s.length > 0);
  }

  /** FUSE_REMOVEXATTR. */
  async removexattr(nodeid: number, name: string): Promise<void> {
    await this.call(FUSE_REMOVEXATTR, nodeid, [fuseName(name)], 0);
  }

  /** FUSE_READDIR or FUSE_READDIRPLUS. */
  async readdir(
    nodeid: number,
    fh: number,
    cookie: bigint = 0n,
    size = 4096,
    plus = false,
  ): Promise<FuseDirentPlus[]> {
    const op = plus ? FUSE_READDIRPLUS : FUSE_READDIR;
    const p = await this.call(op, nodeid, [FuseSession.ioArg(fh, cookie, size)], size);
    return decodeFuseDirents(p, plus);
  }

  /** The 48-byte `fuse_lk_in`. */
  static lkArg(
    fh: number,
    owner: bigint,
    lk: { start: bigint; end: bigint; type: number; pid?: number },
    lkFlags = 0,
  ): Uint8Array {
    return le(48, (v) => {
      v.setBigUint64(0, BigInt(fh), true);
      v.setBigUint64(8, owner, true);
      v.setBigUint64(16, lk.start, true);
      v.setBigUint64(24, lk.end, true);
      v.setUint32(32, lk.type, true);
      v.setUint32(36, lk.pid ?? 0, true);
      v.setUint32(40, lkFlags, true);
    });
  }

  /** FUSE_GETLK. */
  async getlk(
    nodeid: number,
    fh: number,
    owner: bigint,
    lk: { start: bigint; end: bigint; type: number },
  ): Promise<{ start: bigint; end: bigint; type: number; pid: number }> {
    const v = view(await this.call(FUSE_GETLK, nodeid, [FuseSession.lkArg(fh, owner, lk)], 24));
    return {
      start: v.getBigUint64(0, true),
      end: v.getBigUint64(8, true),
      type: v.getUint32(16, true),
      pid: v.getUint32(20, true),
    };
  }

  /** FUSE_SETLK or (with `wait`) FUSE_SETLKW. */
  async setlk(
    nodeid: number,
    fh: number,
    owner: bigint,
    lk: { start: bigint; end: bigint; type: number },
    options: { wait?: boolean; flock?: boolean; unique?: bigint } = {},
  ): Promise<void> {
    const op = options.wait ? FUSE_SETLKW : FUSE_SETLK;
    const r = await this.raw(
      op,
      { nodeid, unique: options.unique },
      [FuseSession.lkArg(fh, owner, lk, options.flock ? 1 : 0)],
      FUSE_OUT_HEADER_SIZE,
    );
    if (r.error !== 0) throw new FuseError(op, -r.error);
  }

  /** FUSE_ACCESS. */
  async access(nodeid: number, mask: number): Promise<void> {
    await this.call(FUSE_ACCESS, nodeid, [le(8, (v) => v.setUint32(0, mask, true))], 0);
  }

  /** FUSE_CREATE. */
  async create(
    parent: number,
    name: string | Uint8Array,
    flags: number,
    mode = 0o644,
  ): Promise<{ entry: FuseEntry; fh: number; openFlags: number }> {
    const arg = le(16, (v) => {
      v.setUint32(0, flags, true);
      v.setUint32(4, mode, true);
    });
    const p = await this.call(
      FUSE_CREATE,
      parent,
      [arg, fuseName(name)],
      FUSE_ENTRY_OUT_SIZE + FUSE_OPEN_OUT_SIZE,
    );
    const v = view(p);
    return {
      entry: decodeFuseEntry(v),
      fh: Number(v.getBigUint64(FUSE_ENTRY_OUT_SIZE, true)),
      openFlags: v.getUint32(FUSE_ENTRY_OUT_SIZE + 8, true),
    };
  }

  /** FUSE_INTERRUPT on the hiprio queue (no reply). */
  async interrupt(target: bigint): Promise<void> {
    await this.raw(
      FUSE_INTERRUPT,
      { nodeid: 0 },
      [le(8, (v) => v.setBigUint64(0, target, true))],
      0,
      0,
    );
  }

  /** FUSE_DESTROY. */
  async destroy(): Promise<void> {
    await this.call(FUSE_DESTROY, 0, [], 0);
  }

  /** FUSE_FALLOCATE. */
  async fallocate(
    nodeid: number,
    fh: number,
    offset: number,
    length: number,
    mode = 0,
  ): Promise<void> {
    const arg = le(32, (v) => {
      v.setBigUint64(0, BigInt(fh), true);
      v.setBigUint64(8, BigInt(offset), true);
      v.setBigUint64(16, BigInt(length), true);
      v.setUint32(24, mode, true);
    });
    await this.call(FUSE_FALLOCATE, nodeid, [arg], 0);
  }

  /** FUSE_LSEEK. */
  async lseek(nodeid: number, fh: number, offset: number, whence: number): Promise<bigint> {
    const arg = le(24, (v) => {
      v.setBigUint64(0, BigInt(fh), true);
      v.setBigUint64(8, BigInt(offset), true);
      v.setUint32(16, whence, true);
    });
    return view(await this.call(FUSE_LSEEK, nodeid, [arg], 8)).getBigUint64(0, true);
  }

  /** FUSE_COPY_FILE_RANGE. */
  async copyFileRange(
    nodeidIn: number,
    fhIn: number,
    offIn: number,
    nodeidOut: number,
    fhOut: number,
    offOut: number,
    len: number | bigint,
    flags = 0,
  ): Promise<number> {
    const arg = le(56, (v) => {
      v.setBigUint64(0, BigInt(fhIn), true);
      v.setBigUint64(8, BigInt(offIn), true);
      v.setBigUint64(16, BigInt(nodeidOut), true);
      v.setBigUint64(24, BigInt(fhOut), true);
      v.setBigUint64(32, BigInt(offOut), true);
      v.setBigUint64(40, BigInt(len), true);
      v.setBigUint64(48, BigInt(flags), true);
    });
    return view(await this.call(FUSE_COPY_FILE_RANGE, nodeidIn, [arg], 8)).getUint32(0, true);
  }

  /** FUSE_SETUPMAPPING (`fh` -1: none, as Linux sends). */
  async setupMapping(
    nodeid: number,
    m: { fh?: number; foffset: number; len: number; flags: number; moffset: number },
  ): Promise<void> {
    const arg = le(40, (v) => {
      v.setBigUint64(0, BigInt.asUintN(64, BigInt(m.fh ?? -1)), true);
      v.setBigUint64(8, BigInt(m.foffset), true);
      v.setBigUint64(16, BigInt(m.len), true);
      v.setBigUint64(24, BigInt(m.flags), true);
      v.setBigUint64(32, BigInt(m.moffset), true);
    });
    await this.call(FUSE_SETUPMAPPING, nodeid, [arg], 0);
  }

  /** FUSE_REMOVEMAPPING. */
  async removeMapping(nodeid: number, ranges: { moffset: number; len: number }[]): Promise<void> {
    const head = le(4, (v) => v.setUint32(0, ranges.length, true));
    const list = le(16 * ranges.length, (v) => {
      ranges.forEach((r, i) => {
        v.setBigUint64(16 * i, BigInt(r.moffset), true);
        v.setBigUint64(16 * i + 8, BigInt(r.len), true);
      });
    });
    await this.call(FUSE_REMOVEMAPPING, nodeid, [head, list], 0);
  }

  /** FUSE_SYNCFS. */
  async syncfs(nodeid = 1): Promise<void> {
    await this.call(FUSE_SYNCFS, nodeid, [new Uint8Array(8)], 0);
  }
}
