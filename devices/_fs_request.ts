/**
 * A pure parser for virtio-fs requests (virtio 1.2 §5.11.6): a descriptor chain in, a typed
 * FUSE request or a typed refusal out, before any host file is touched.
 *
 * The device-readable part of a chain is `fuse_in_header` then the opcode's arguments; the
 * device-writable part takes `fuse_out_header` then the reply. The parser checks the header
 * against the chain (a `len` that claims more than the driver gave is refused), each
 * argument structure's size, every name (NUL-terminated, one path component, at most
 * NAME_MAX bytes) and every size and offset (safe integers, the negotiated maximums). The
 * result aliases a scratch buffer reused by the next parse; WRITE's data is not copied: the
 * chain's reader is left at its first byte.
 *
 * @module
 */

import type { DescriptorChain } from "../queue/chain.ts";
import { Errno } from "../sys/libc.ts";
import {
  FUSE_ACCESS,
  FUSE_BATCH_FORGET,
  FUSE_COPY_FILE_RANGE,
  FUSE_CREATE,
  FUSE_DESTROY,
  FUSE_FALLOCATE,
  FUSE_FLUSH,
  FUSE_FORGET,
  FUSE_FSYNC,
  FUSE_FSYNCDIR,
  FUSE_GETATTR,
  FUSE_GETLK,
  FUSE_GETXATTR,
  FUSE_IN_HEADER_SIZE,
  FUSE_INIT,
  FUSE_INIT_EXT,
  FUSE_INTERRUPT,
  FUSE_LINK,
  FUSE_LISTXATTR,
  FUSE_LOOKUP,
  FUSE_LSEEK,
  FUSE_MKDIR,
  FUSE_MKNOD,
  FUSE_NAME_MAX,
  FUSE_OPCODE_NAMES,
  FUSE_OPEN,
  FUSE_OPENDIR,
  FUSE_OUT_HEADER_SIZE,
  FUSE_READ,
  FUSE_READDIR,
  FUSE_READDIRPLUS,
  FUSE_READLINK,
  FUSE_RELEASE,
  FUSE_RELEASEDIR,
  FUSE_REMOVEMAPPING,
  FUSE_REMOVEMAPPING_MAX_ENTRY,
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
  FUSE_SYMLINK,
  FUSE_SYMLINK_MAX,
  FUSE_SYNCFS,
  FUSE_UNLINK,
  FUSE_WRITE,
  FUSE_XATTR_NAME_MAX,
  FUSE_XATTR_SIZE_MAX,
} from "./_fs_protocol.ts";

/** What the parser needs to know about the session. */
export interface FuseLimits {
  /** Largest READ / READDIR / READDIRPLUS `size` accepted. */
  maxRead: number;
  /** Largest WRITE `size` accepted. */
  maxWrite: number;
  /** Whether FUSE_SETXATTR_EXT was negotiated (16-byte `fuse_setxattr_in`). */
  setxattrExt: boolean;
}

/**
 * Largest argument part copied for any request but WRITE (whose data stays in guest
 * memory): a SETXATTR of the largest value with the longest name, and some room.
 */
export const FUSE_MAX_ARGS: number = 16 + FUSE_XATTR_NAME_MAX + 1 + FUSE_XATTR_SIZE_MAX + 4096;

/** The header fields every request carries. */
export interface FuseRequestHeader {
  /** Discriminant: the request can be served. */
  readonly ok: true;
  /** Request id, echoed in the reply. */
  readonly unique: bigint;
  /** The node, or -1 when it is no safe integer (no such node can exist). */
  readonly nodeid: number;
  /** Caller's user id. */
  readonly uid: number;
  /** Caller's group id. */
  readonly gid: number;
  /** Caller's process id. */
  readonly pid: number;
}

/** A name argument: its bytes including the terminating NUL (aliases scratch memory). */
export type FuseName = Uint8Array;

/** One parsed request; `opcode` tells which fields are there. */
export type FuseRequest =
  & FuseRequestHeader
  & (
    | {
      opcode: typeof FUSE_INIT;
      major: number;
      minor: number;
      maxReadahead: number;
      flags: number;
      flags2: number;
    }
    | {
      opcode:
        | typeof FUSE_LOOKUP
        | typeof FUSE_UNLINK
        | typeof FUSE_RMDIR;
      name: FuseName;
    }
    | { opcode: typeof FUSE_FORGET; nlookup: number }
    | { opcode: typeof FUSE_BATCH_FORGET; forgets: { nodeid: number; nlookup: number }[] }
    | { opcode: typeof FUSE_GETATTR; getattrFlags: number; fh: number }
    | {
      opcode: typeof FUSE_SETATTR;
      valid: number;
      fh: number;
      size: number;
      atime: number;
      atimensec: number;
      mtime: number;
      mtimensec: number;
      mode: number;
      uid: number;
      gid: number;
    }
    | {
      opcode:
        | typeof FUSE_READLINK
        | typeof FUSE_STATFS
        | typeof FUSE_DESTROY
        | typeof FUSE_SYNCFS;
    }
    | { opcode: typeof FUSE_SYMLINK; name: FuseName; target: FuseName }
    | { opcode: typeof FUSE_MKNOD; mode: number; rdev: number; umask: number; name: FuseName }
    | { opcode: typeof FUSE_MKDIR; mode: number; umask: number; name: FuseName }
    | {
      opcode: typeof FUSE_RENAME | typeof FUSE_RENAME2;
      newdir: number;
      flags: number;
      oldname: FuseName;
      newname: FuseName;
    }
    | { opcode: typeof FUSE_LINK; oldnodeid: number; name: FuseName }
    | { opcode: typeof FUSE_OPEN | typeof FUSE_OPENDIR; flags: number; openFlags: number }
    | {
      opcode: typeof FUSE_READ;
      fh: number;
      offset: number;
      size: number;
      readFlags: number;
      flags: number;
    }
    | {
      opcode: typeof FUSE_READDIR | typeof FUSE_READDIRPLUS;
      fh: number;
      /** The position: an opaque 64-bit cookie from a previous entry (0: the start). */
      cookie: bigint;
      size: number;
    }
    | {
      opcode: typeof FUSE_WRITE;
      fh: number;
      offset: number;
      size: number;
      writeFlags: number;
      flags: number;
    }
    | {
      opcode: typeof FUSE_RELEASE | typeof FUSE_RELEASEDIR;
      fh: number;
      flags: number;
      releaseFlags: number;
      lockOwner: bigint;
    }
    | { opcode: typeof FUSE_FSYNC | typeof FUSE_FSYNCDIR; fh: number; fsyncFlags: number }
    | {
      opcode: typeof FUSE_SETXATTR;
      flags: number;
      setxattrFlags: number;
      name: FuseName;
      value: Uint8Array;
    }
    | { opcode: typeof FUSE_GETXATTR; size: number; name: FuseName }
    | { opcode: typeof FUSE_LISTXATTR; size: number }
    | { opcode: typeof FUSE_REMOVEXATTR; name: FuseName }
    | { opcode: typeof FUSE_FLUSH; fh: number; lockOwner: bigint }
    | {
      opcode: typeof FUSE_GETLK | typeof FUSE_SETLK | typeof FUSE_SETLKW;
      fh: number;
      owner: bigint;
      start: bigint;
      end: bigint;
      type: number;
      lockPid: number;
      lkFlags: number;
    }
    | { opcode: typeof FUSE_ACCESS; mask: number }
    | {
      opcode: typeof FUSE_CREATE;
      flags: number;
      mode: number;
      umask: number;
      openFlags: number;
      name: FuseName;
    }
    | { opcode: typeof FUSE_INTERRUPT; target: bigint }
    | { opcode: typeof FUSE_FALLOCATE; fh: number; offset: number; length: number; mode: number }
    | { opcode: typeof FUSE_LSEEK; fh: number; offset: number; whence: number }
    | {
      opcode: typeof FUSE_COPY_FILE_RANGE;
      fhIn: number;
      offIn: number;
      nodeidOut: number;
      fhOut: number;
      offOut: number;
      /** Bytes asked for, capped at 2^53 - 1 (a partial copy is a valid answer). */
      len: number;
      flags: number;
    }
    | {
      opcode: typeof FUSE_SETUPMAPPING;
      /** The open file, or -1 (the driver sends `~0`: open the node itself). */
      fh: number;
      foffset: number;
      len: number;
      flags: number;
      moffset: number;
    }
    | { opcode: typeof FUSE_REMOVEMAPPING; ranges: { moffset: number; len: number }[] }
  );

/** A request that cannot be served. */
export interface FuseRefusal {
  /** Discriminant: refused. */
  readonly ok: false;
  /** The opcode (0 when even the header could not be read). */
  readonly opcode: number;
  /** Request id for the reply (0 when unknown). */
  readonly unique: bigint;
  /** The errno to answer with (positive). */
  readonly error: number;
  /**
   * Whether an error reply can and should be sent: false for requests FUSE never answers
   * (FORGET, BATCH_FORGET, INTERRUPT) and for chains without room for a reply header.
   */
  readonly reply: boolean;
  /** Why, for the host's logs. */
  readonly reason: string;
}

/** Result of {@linkcode parseFuseRequest}. */
export type ParsedFuseRequest = FuseRequest | FuseRefusal;

// One scratch area reused by every parse: the parser never runs re-entrantly.
const header = new Uint8Array(FUSE_IN_HEADER_SIZE);
const headerView = new DataView(header.buffer);
const args = new Uint8Array(FUSE_MAX_ARGS);
const argsView = new DataView(args.buffer);

const SLASH = 0x2f;
const DOT = 0x2e;
const MAX_SAFE_HI = 0x1fffff;

/** A u64 at `at` as a number, or -1 when it is above 2^53 - 1. */
function u64(v: DataView, at: number): number {
  const lo = v.getUint32(at, true);
  const hi = v.getUint32(at + 4, true);
  return hi > MAX_SAFE_HI ? -1 : hi * 0x1_0000_0000 + lo;
}

/** A u64 at `at` as a number, saturating at 2^53 - 1. */
function u64Saturating(v: DataView, at: number): number {
  const n = u64(v, at);
  return n < 0 ? Number.MAX_SAFE_INTEGER : n;
}

/** A u64 read as a signed 64-bit second count. */
function s64(v: DataView, at: number): number {
  return Number(v.getBigInt64(at, true));
}

class Refused {
  constructor(readonly error: number, readonly reason: string) {}
}

function refuse(error: number, reason: string): never {
  throw new Refused(error, reason);
}

/** Offsets and sizes must be safe integers; a u64 that is not one is refused. */
function safe(v: DataView, at: number, what: string): number {
  const n = u64(v, at);
  if (n < 0) refuse(Errno.EINVAL, `${what} is beyond 2^53`);
  return n;
}

/** Where the next NUL-terminated argument starts, and the argument itself. */
interface Cursor {
  at: number;
  end: number;
}

/**
 * Take one NUL-terminated string from `args[c.at, c.end)`: at most `max` bytes before the
 * NUL (`tooLong` otherwise), not empty (`empty` otherwise), and with `component` one path
 * component: no '/', not "." or "..".
 */
function takeString(
  c: Cursor,
  what: string,
  max: number,
  errors: { tooLong: number; empty: number },
  component: boolean,
): Uint8Array {
  const nul = args.subarray(c.at, c.end).indexOf(0);
  if (nul < 0) refuse(Errno.EINVAL, `${what} has no NUL within the request`);
  if (nul === 0) refuse(errors.empty, `${what} is empty`);
  if (nul > max) refuse(errors.tooLong, `${what} is ${nul} bytes long`);
  const s = args.subarray(c.at, c.at + nul + 1);
  if (component) {
    if (s.subarray(0, nul).indexOf(SLASH) >= 0) refuse(Errno.EINVAL, `${what} contains '/'`);
    if (s[0] === DOT && (nul === 1 || (nul === 2 && s[1] === DOT))) {
      refuse(Errno.EINVAL, `${what} is "." or ".."`);
    }
  }
  c.at += nul + 1;
  return s;
}

const NAME_ERRORS = { tooLong: Errno.ENAMETOOLONG, empty: Errno.EINVAL };
const TARGET_ERRORS = { tooLong: Errno.ENAMETOOLONG, empty: Errno.ENOENT };
const XATTR_ERRORS = { tooLong: Errno.ERANGE, empty: Errno.ERANGE };

function name(c: Cursor, what = "name"): Uint8Array {
  return takeString(c, what, FUSE_NAME_MAX, NAME_ERRORS, true);
}

function xattrName(c: Cursor): Uint8Array {
  return takeString(c, "attribute name", FUSE_XATTR_NAME_MAX, XATTR_ERRORS, false);
}

/** Fixed argument sizes, by opcode (-1: variable, checked by the case). */
const FIXED: Readonly<Record<number, number>> = {
  [FUSE_LOOKUP]: 0,
  [FUSE_FORGET]: 8,
  [FUSE_GETATTR]: 16,
  [FUSE_SETATTR]: 88,
  [FUSE_READLINK]: 0,
  [FUSE_SYMLINK]: 0,
  [FUSE_MKNOD]: 16,
  [FUSE_MKDIR]: 8,
  [FUSE_UNLINK]: 0,
  [FUSE_RMDIR]: 0,
  [FUSE_RENAME]: 8,
  [FUSE_LINK]: 8,
  [FUSE_OPEN]: 8,
  [FUSE_READ]: 40,
  [FUSE_WRITE]: 40,
  [FUSE_STATFS]: 0,
  [FUSE_RELEASE]: 24,
  [FUSE_FSYNC]: 16,
  [FUSE_SETXATTR]: 8,
  [FUSE_GETXATTR]: 8,
  [FUSE_LISTXATTR]: 8,
  [FUSE_REMOVEXATTR]: 0,
  [FUSE_FLUSH]: 24,
  [FUSE_INIT]: 16,
  [FUSE_OPENDIR]: 8,
  [FUSE_READDIR]: 40,
  [FUSE_RELEASEDIR]: 24,
  [FUSE_FSYNCDIR]: 16,
  [FUSE_GETLK]: 48,
  [FUSE_SETLK]: 48,
  [FUSE_SETLKW]: 48,
  [FUSE_ACCESS]: 8,
  [FUSE_CREATE]: 16,
  [FUSE_INTERRUPT]: 8,
  [FUSE_DESTROY]: 0,
  [FUSE_BATCH_FORGET]: 8,
  [FUSE_FALLOCATE]: 32,
  [FUSE_READDIRPLUS]: 40,
  [FUSE_RENAME2]: 16,
  [FUSE_LSEEK]: 24,
  [FUSE_COPY_FILE_RANGE]: 56,
  [FUSE_SETUPMAPPING]: 40,
  [FUSE_REMOVEMAPPING]: 4,
  [FUSE_SYNCFS]: 0,
};

/** Whether FUSE answers the opcode at all. */
export function fuseHasReply(opcode: number): boolean {
  return opcode !== FUSE_FORGET && opcode !== FUSE_BATCH_FORGET && opcode !== FUSE_INTERRUPT;
}

/**
 * Parse the request on `chain`. Nothing is thrown for anything the driver sent: a request
 * that cannot be served comes back as a {@linkcode FuseRefusal} with the errno to answer.
 * The result (names, values) aliases a scratch buffer that the next call reuses.
 *
 * @example
 * ```ts ignore
 * const req = parseFuseRequest(chain, { maxRead: 1 << 20, maxWrite: 1 << 20, setxattrExt: false });
 * if (!req.ok) answerError(req.unique, req.error);
 * else if (req.opcode === FUSE_LOOKUP) lookup(req.nodeid, req.name);
 * ```
 *
 * @param chain The chain (its reader is used; for WRITE it is left at the data).
 * @param limits What the session negotiated.
 * @returns The request or the refusal.
 */
export function parseFuseRequest(chain: DescriptorChain, limits: FuseLimits): ParsedFuseRequest {
  const canReply = chain.writableBytes >= FUSE_OUT_HEADER_SIZE;
  if (chain.readableBytes < FUSE_IN_HEADER_SIZE) {
    return {
      ok: false,
      opcode: 0,
      unique: 0n,
      error: Errno.EIO,
      reply: canReply,
      reason: `${chain.readableBytes} readable bytes hold no fuse_in_header`,
    };
  }
  const r = chain.reader;
  r.readExact(header);
  const v = headerView;
  const len = v.getUint32(0, true);
  const opcode = v.getUint32(4, true);
  const unique = v.getBigUint64(8, true);
  const refusal = (error: number, reason: string): FuseRefusal => ({
    ok: false,
    opcode,
    unique,
    error,
    reply: canReply && fuseHasReply(opcode),
    reason: `${FUSE_OPCODE_NAMES[opcode] ?? `opcode ${opcode}`}: ${reason}`,
  });
  try {
    if (len < FUSE_IN_HEADER_SIZE || len > chain.readableBytes) {
      refuse(Errno.EINVAL, `in.len ${len} but ${chain.readableBytes} readable bytes`);
    }
    const extBytes = v.getUint16(36, true) * 8;
    const argBytes = len - FUSE_IN_HEADER_SIZE - extBytes;
    if (argBytes < 0) refuse(Errno.EINVAL, `extensions of ${extBytes} bytes exceed in.len ${len}`);
    const fixed = FIXED[opcode];
    if (fixed === undefined) refuse(Errno.ENOSYS, "not implemented");
    if (argBytes < fixed) refuse(Errno.EINVAL, `${argBytes} argument bytes, needs ${fixed}`);
    if (fuseHasReply(opcode) && !canReply) {
      refuse(Errno.EINVAL, `${chain.writableBytes} writable bytes hold no fuse_out_header`);
    }
    // WRITE keeps its data in guest memory; everything else is copied (bounded).
    const copy = opcode === FUSE_WRITE ? fixed : argBytes;
    if (copy > FUSE_MAX_ARGS) refuse(Errno.EINVAL, `${argBytes} argument bytes`);
    r.readExact(args.subarray(0, copy));
    const base: FuseRequestHeader = {
      ok: true,
      unique,
      nodeid: u64(v, 16),
      uid: v.getUint32(24, true),
      gid: v.getUint32(28, true),
      pid: v.getUint32(32, true),
    };
    return parseArgs(opcode, base, argBytes, chain, limits);
  } catch (err) {
    if (err instanceof Refused) return refusal(err.error, err.reason);
    throw err;
  }
}

function parseArgs(
  opcode: number,
  base: FuseRequestHeader,
  argBytes: number,
  chain: DescriptorChain,
  limits: FuseLimits,
): FuseRequest {
  const a = argsView;
  const fixed = FIXED[opcode];
  const c: Cursor = { at: fixed, end: argBytes };
  switch (opcode) {
    case FUSE_INIT: {
      const flags = a.getUint32(12, true);
      const ext = (flags & FUSE_INIT_EXT) !== 0 && argBytes >= 24;
      return {
        ...base,
        opcode,
        major: a.getUint32(0, true),
        minor: a.getUint32(4, true),
        maxReadahead: a.getUint32(8, true),
        flags,
        flags2: ext ? a.getUint32(16, true) : 0,
      };
    }
    case FUSE_LOOKUP:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
      return { ...base, opcode, name: name(c) };
    case FUSE_FORGET:
      return { ...base, opcode, nlookup: u64Saturating(a, 0) };
    case FUSE_BATCH_FORGET: {
      const count = a.getUint32(0, true);
      if (count > (argBytes - 8) / 16) {
        refuse(Errno.EINVAL, `count ${count} but ${argBytes - 8} bytes of entries`);
      }
      const forgets: { nodeid: number; nlookup: number }[] = [];
      for (let i = 0; i < count; i++) {
        forgets.push({ nodeid: u64(a, 8 + 16 * i), nlookup: u64Saturating(a, 16 + 16 * i) });
      }
      return { ...base, opcode, forgets };
    }
    case FUSE_GETATTR:
      return { ...base, opcode, getattrFlags: a.getUint32(0, true), fh: u64(a, 8) };
    case FUSE_SETATTR:
      return {
        ...base,
        opcode,
        valid: a.getUint32(0, true),
        fh: u64(a, 8),
        size: u64(a, 16),
        atime: s64(a, 32),
        mtime: s64(a, 40),
        atimensec: a.getUint32(56, true),
        mtimensec: a.getUint32(60, true),
        mode: a.getUint32(68, true),
        uid: a.getUint32(76, true),
        gid: a.getUint32(80, true),
      };
    case FUSE_READLINK:
    case FUSE_STATFS:
    case FUSE_DESTROY:
    case FUSE_SYNCFS:
      return { ...base, opcode };
    case FUSE_SYMLINK: {
      const n = name(c);
      const target = takeString(c, "target", FUSE_SYMLINK_MAX, TARGET_ERRORS, false);
      return { ...base, opcode, name: n, target };
    }
    case FUSE_MKNOD:
      return {
        ...base,
        opcode,
        mode: a.getUint32(0, true),
        rdev: a.getUint32(4, true),
        umask: a.getUint32(8, true),
        name: name(c),
      };
    case FUSE_MKDIR:
      return {
        ...base,
        opcode,
        mode: a.getUint32(0, true),
        umask: a.getUint32(4, true),
        name: name(c),
      };
    case FUSE_RENAME:
    case FUSE_RENAME2: {
      const flags = opcode === FUSE_RENAME2 ? a.getUint32(8, true) : 0;
      const oldname = name(c, "old name");
      const newname = name(c, "new name");
      return { ...base, opcode, newdir: u64(a, 0), flags, oldname, newname };
    }
    case FUSE_LINK:
      return { ...base, opcode, oldnodeid: u64(a, 0), name: name(c) };
    case FUSE_OPEN:
    case FUSE_OPENDIR:
      return { ...base, opcode, flags: a.getUint32(0, true), openFlags: a.getUint32(4, true) };
    case FUSE_READ:
    case FUSE_READDIR:
    case FUSE_READDIRPLUS: {
      const size = a.getUint32(16, true);
      if (size > limits.maxRead) refuse(Errno.EINVAL, `size ${size} above ${limits.maxRead}`);
      if (chain.writableBytes < FUSE_OUT_HEADER_SIZE + size) {
        refuse(Errno.EINVAL, `size ${size} but ${chain.writableBytes} writable bytes`);
      }
      if (opcode !== FUSE_READ) {
        return { ...base, opcode, fh: u64(a, 0), cookie: a.getBigUint64(8, true), size };
      }
      return {
        ...base,
        opcode,
        fh: u64(a, 0),
        offset: safe(a, 8, "offset"),
        size,
        readFlags: a.getUint32(20, true),
        flags: a.getUint32(32, true),
      };
    }
    case FUSE_WRITE: {
      const size = a.getUint32(16, true);
      if (size !== argBytes - fixed) {
        refuse(Errno.EINVAL, `size ${size} but ${argBytes - fixed} bytes of data`);
      }
      if (size > limits.maxWrite) refuse(Errno.EINVAL, `size ${size} above ${limits.maxWrite}`);
      return {
        ...base,
        opcode,
        fh: u64(a, 0),
        offset: safe(a, 8, "offset"),
        size,
        writeFlags: a.getUint32(20, true),
        flags: a.getUint32(32, true),
      };
    }
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
      return {
        ...base,
        opcode,
        fh: u64(a, 0),
        flags: a.getUint32(8, true),
        releaseFlags: a.getUint32(12, true),
        lockOwner: a.getBigUint64(16, true),
      };
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR:
      return { ...base, opcode, fh: u64(a, 0), fsyncFlags: a.getUint32(8, true) };
    case FUSE_SETXATTR: {
      const head = limits.setxattrExt ? 16 : 8;
      if (argBytes < head) refuse(Errno.EINVAL, `${argBytes} argument bytes, needs ${head}`);
      c.at = head;
      const size = a.getUint32(0, true);
      if (size > FUSE_XATTR_SIZE_MAX) refuse(Errno.E2BIG, `value of ${size} bytes`);
      const n = xattrName(c);
      if (size !== c.end - c.at) {
        refuse(Errno.EINVAL, `size ${size} but ${c.end - c.at} bytes of value`);
      }
      return {
        ...base,
        opcode,
        flags: a.getUint32(4, true),
        setxattrFlags: limits.setxattrExt ? a.getUint32(8, true) : 0,
        name: n,
        value: args.subarray(c.at, c.at + size),
      };
    }
    case FUSE_GETXATTR:
      return { ...base, opcode, size: a.getUint32(0, true), name: xattrName(c) };
    case FUSE_LISTXATTR:
      return { ...base, opcode, size: a.getUint32(0, true) };
    case FUSE_REMOVEXATTR:
      return { ...base, opcode, name: xattrName(c) };
    case FUSE_FLUSH:
      return { ...base, opcode, fh: u64(a, 0), lockOwner: a.getBigUint64(16, true) };
    case FUSE_GETLK:
    case FUSE_SETLK:
    case FUSE_SETLKW:
      return {
        ...base,
        opcode,
        fh: u64(a, 0),
        owner: a.getBigUint64(8, true),
        start: a.getBigUint64(16, true),
        end: a.getBigUint64(24, true),
        type: a.getUint32(32, true),
        lockPid: a.getUint32(36, true),
        lkFlags: a.getUint32(40, true),
      };
    case FUSE_ACCESS:
      return { ...base, opcode, mask: a.getUint32(0, true) };
    case FUSE_CREATE:
      return {
        ...base,
        opcode,
        flags: a.getUint32(0, true),
        mode: a.getUint32(4, true),
        umask: a.getUint32(8, true),
        openFlags: a.getUint32(12, true),
        name: name(c),
      };
    case FUSE_INTERRUPT:
      return { ...base, opcode, target: a.getBigUint64(0, true) };
    case FUSE_FALLOCATE:
      return {
        ...base,
        opcode,
        fh: u64(a, 0),
        offset: safe(a, 8, "offset"),
        length: safe(a, 16, "length"),
        mode: a.getUint32(24, true),
      };
    case FUSE_LSEEK:
      return {
        ...base,
        opcode,
        fh: u64(a, 0),
        offset: safe(a, 8, "offset"),
        whence: a.getUint32(16, true),
      };
    case FUSE_COPY_FILE_RANGE: {
      if (a.getUint32(52, true) !== 0) refuse(Errno.EINVAL, "flags above bit 31");
      return {
        ...base,
        opcode,
        fhIn: u64(a, 0),
        offIn: safe(a, 8, "offset in"),
        nodeidOut: u64(a, 16),
        fhOut: u64(a, 24),
        offOut: safe(a, 32, "offset out"),
        len: u64Saturating(a, 40),
        flags: a.getUint32(48, true),
      };
    }
    case FUSE_SETUPMAPPING: {
      if (a.getUint32(28, true) !== 0) refuse(Errno.EINVAL, "flags above bit 31");
      return {
        ...base,
        opcode,
        fh: u64(a, 0),
        foffset: safe(a, 8, "file offset"),
        len: safe(a, 16, "length"),
        flags: a.getUint32(24, true),
        moffset: safe(a, 32, "window offset"),
      };
    }
    case FUSE_REMOVEMAPPING: {
      const count = a.getUint32(0, true);
      if (count > FUSE_REMOVEMAPPING_MAX_ENTRY) refuse(Errno.EINVAL, `${count} ranges`);
      if (count > (argBytes - 4) / 16) {
        refuse(Errno.EINVAL, `count ${count} but ${argBytes - 4} bytes of ranges`);
      }
      const ranges: { moffset: number; len: number }[] = [];
      for (let i = 0; i < count; i++) {
        ranges.push({
          moffset: safe(a, 4 + 16 * i, "window offset"),
          len: safe(a, 12 + 16 * i, "length"),
        });
      }
      return { ...base, opcode, ranges };
    }
  }
  return refuse(Errno.ENOSYS, "not implemented");
}
