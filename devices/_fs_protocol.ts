/**
 * The FUSE protocol as virtio-fs carries it (virtio 1.2 §5.11.6; Linux's
 * `include/uapi/linux/fuse.h`, version 7.31 to 7.38): opcodes, flags, the sizes and field
 * offsets of the structures the device reads and writes, and the request encoder a driver
 * (or a test) uses. Every structure is little-endian: the device serves little-endian
 * sessions only (virtio 1.2 §5.11.6.1 lets the driver pick; a big-endian FUSE_INIT is refused).
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Versions and sizes

/** The FUSE major version this device speaks. */
export const FUSE_KERNEL_VERSION = 7;
/** The newest FUSE minor version this device knows. */
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** The oldest minor version it accepts (virtio-fs appeared with 7.31). */
export const FUSE_MIN_MINOR_VERSION = 27;
/** Node id of the root directory. */
export const FUSE_ROOT_ID = 1;

/** Size of `struct fuse_in_header`: the start of every request. */
export const FUSE_IN_HEADER_SIZE = 40;
/** Size of `struct fuse_out_header`: the start of every reply. */
export const FUSE_OUT_HEADER_SIZE = 16;
/** Size of `struct fuse_attr`. */
export const FUSE_ATTR_SIZE = 88;
/** Size of `struct fuse_entry_out` (node id, generation, timeouts, attributes). */
export const FUSE_ENTRY_OUT_SIZE = 128;
/** Size of `struct fuse_attr_out`. */
export const FUSE_ATTR_OUT_SIZE = 104;
/** Size of `struct fuse_open_out`. */
export const FUSE_OPEN_OUT_SIZE = 16;
/** Size of `struct fuse_write_out` (also the reply of COPY_FILE_RANGE). */
export const FUSE_WRITE_OUT_SIZE = 8;
/** Size of `struct fuse_statfs_out`. */
export const FUSE_STATFS_OUT_SIZE = 80;
/** Size of `struct fuse_getxattr_out`. */
export const FUSE_GETXATTR_OUT_SIZE = 8;
/** Size of `struct fuse_lk_out`. */
export const FUSE_LK_OUT_SIZE = 24;
/** Size of `struct fuse_init_out`. */
export const FUSE_INIT_OUT_SIZE = 64;
/** Size of `struct fuse_lseek_out`. */
export const FUSE_LSEEK_OUT_SIZE = 8;
/** Size of the fixed part of `struct fuse_dirent` (ino, off, namelen, type). */
export const FUSE_DIRENT_SIZE = 24;
/** Size of the fixed part of `struct fuse_direntplus` (an entry_out, then a dirent). */
export const FUSE_DIRENTPLUS_SIZE: number = FUSE_ENTRY_OUT_SIZE + FUSE_DIRENT_SIZE;

/** Longest file name (NAME_MAX), in bytes, without its NUL. */
export const FUSE_NAME_MAX = 255;
/** Longest symbolic link target (PATH_MAX less the NUL). */
export const FUSE_SYMLINK_MAX = 4095;
/** Longest extended attribute name (XATTR_NAME_MAX). */
export const FUSE_XATTR_NAME_MAX = 255;
/** Largest extended attribute value or name list (XATTR_SIZE_MAX). */
export const FUSE_XATTR_SIZE_MAX = 65536;
/** Most entries of one FUSE_REMOVEMAPPING (a page of `fuse_removemapping_one`). */
export const FUSE_REMOVEMAPPING_MAX_ENTRY = 256;

// ---------------------------------------------------------------------------
// Opcodes

/** Look a name up in a directory. */
export const FUSE_LOOKUP = 1;
/** Drop lookups of a node (no reply). */
export const FUSE_FORGET = 2;
/** Attributes of a node. */
export const FUSE_GETATTR = 3;
/** Change attributes. */
export const FUSE_SETATTR = 4;
/** Read a symbolic link. */
export const FUSE_READLINK = 5;
/** Create a symbolic link. */
export const FUSE_SYMLINK = 6;
/** Create a node (regular file, FIFO, socket, device). */
export const FUSE_MKNOD = 8;
/** Create a directory. */
export const FUSE_MKDIR = 9;
/** Remove a name. */
export const FUSE_UNLINK = 10;
/** Remove a directory. */
export const FUSE_RMDIR = 11;
/** Rename. */
export const FUSE_RENAME = 12;
/** Make a hard link. */
export const FUSE_LINK = 13;
/** Open a file. */
export const FUSE_OPEN = 14;
/** Read from an open file. */
export const FUSE_READ = 15;
/** Write to an open file. */
export const FUSE_WRITE = 16;
/** File system statistics. */
export const FUSE_STATFS = 17;
/** Close an open file. */
export const FUSE_RELEASE = 18;
/** Make an open file durable. */
export const FUSE_FSYNC = 20;
/** Set an extended attribute. */
export const FUSE_SETXATTR = 21;
/** Get an extended attribute. */
export const FUSE_GETXATTR = 22;
/** List extended attributes. */
export const FUSE_LISTXATTR = 23;
/** Remove an extended attribute. */
export const FUSE_REMOVEXATTR = 24;
/** A close(2) of an open file. */
export const FUSE_FLUSH = 25;
/** Start the session. */
export const FUSE_INIT = 26;
/** Open a directory. */
export const FUSE_OPENDIR = 27;
/** Read directory entries. */
export const FUSE_READDIR = 28;
/** Close a directory. */
export const FUSE_RELEASEDIR = 29;
/** Make a directory durable. */
export const FUSE_FSYNCDIR = 30;
/** Test a record lock. */
export const FUSE_GETLK = 31;
/** Set a record lock without waiting. */
export const FUSE_SETLK = 32;
/** Set a record lock, waiting. */
export const FUSE_SETLKW = 33;
/** Check access permissions. */
export const FUSE_ACCESS = 34;
/** Create and open a file. */
export const FUSE_CREATE = 35;
/** Interrupt a request (no reply). */
export const FUSE_INTERRUPT = 36;
/** Block mapping (not for virtio-fs: ENOSYS). */
export const FUSE_BMAP = 37;
/** End the session. */
export const FUSE_DESTROY = 38;
/** ioctl (ENOSYS). */
export const FUSE_IOCTL = 39;
/** poll (ENOSYS). */
export const FUSE_POLL = 40;
/** Reply to a notification (ENOSYS). */
export const FUSE_NOTIFY_REPLY = 41;
/** Drop lookups of many nodes (no reply). */
export const FUSE_BATCH_FORGET = 42;
/** Allocate, punch or zero a range. */
export const FUSE_FALLOCATE = 43;
/** Read directory entries with their attributes (each counts as a lookup). */
export const FUSE_READDIRPLUS = 44;
/** Rename with flags. */
export const FUSE_RENAME2 = 45;
/** Find data or a hole. */
export const FUSE_LSEEK = 46;
/** Copy a range between open files. */
export const FUSE_COPY_FILE_RANGE = 47;
/** Map a file range into the DAX window. */
export const FUSE_SETUPMAPPING = 48;
/** Unmap ranges of the DAX window. */
export const FUSE_REMOVEMAPPING = 49;
/** Make the whole file system durable. */
export const FUSE_SYNCFS = 50;
/** Create an unnamed temporary file (ENOSYS). */
export const FUSE_TMPFILE = 51;
/** FUSE_INIT as a big-endian driver writes it (its bytes reversed). */
export const FUSE_INIT_BSWAP_RESERVED = 436207616;

/** Opcode names, for logs. */
export const FUSE_OPCODE_NAMES: Readonly<Record<number, string>> = Object.freeze({
  1: "LOOKUP",
  2: "FORGET",
  3: "GETATTR",
  4: "SETATTR",
  5: "READLINK",
  6: "SYMLINK",
  8: "MKNOD",
  9: "MKDIR",
  10: "UNLINK",
  11: "RMDIR",
  12: "RENAME",
  13: "LINK",
  14: "OPEN",
  15: "READ",
  16: "WRITE",
  17: "STATFS",
  18: "RELEASE",
  20: "FSYNC",
  21: "SETXATTR",
  22: "GETXATTR",
  23: "LISTXATTR",
  24: "REMOVEXATTR",
  25: "FLUSH",
  26: "INIT",
  27: "OPENDIR",
  28: "READDIR",
  29: "RELEASEDIR",
  30: "FSYNCDIR",
  31: "GETLK",
  32: "SETLK",
  33: "SETLKW",
  34: "ACCESS",
  35: "CREATE",
  36: "INTERRUPT",
  37: "BMAP",
  38: "DESTROY",
  39: "IOCTL",
  40: "POLL",
  41: "NOTIFY_REPLY",
  42: "BATCH_FORGET",
  43: "FALLOCATE",
  44: "READDIRPLUS",
  45: "RENAME2",
  46: "LSEEK",
  47: "COPY_FILE_RANGE",
  48: "SETUPMAPPING",
  49: "REMOVEMAPPING",
  50: "SYNCFS",
  51: "TMPFILE",
});

// ---------------------------------------------------------------------------
// Flags

/** INIT: reads may be sent in parallel. */
export const FUSE_ASYNC_READ = 1 << 0;
/** INIT: the server does POSIX record locks. */
export const FUSE_POSIX_LOCKS = 1 << 1;
/** INIT: the server handles O_TRUNC in OPEN. */
export const FUSE_ATOMIC_O_TRUNC = 1 << 3;
/** INIT: the server handles lookups of "." and "..". */
export const FUSE_EXPORT_SUPPORT = 1 << 4;
/** INIT: writes larger than a page. */
export const FUSE_BIG_WRITES = 1 << 5;
/** INIT: the driver does not apply the umask; the server does. */
export const FUSE_DONT_MASK = 1 << 6;
/** INIT: the server does flock(2) locks. */
export const FUSE_FLOCK_LOCKS = 1 << 10;
/** INIT: the driver drops cached data when it sees the modification time change. */
export const FUSE_AUTO_INVAL_DATA = 1 << 12;
/** INIT: READDIRPLUS is used. */
export const FUSE_DO_READDIRPLUS = 1 << 13;
/** INIT: the driver picks between READDIR and READDIRPLUS. */
export const FUSE_READDIRPLUS_AUTO = 1 << 14;
/** INIT: asynchronous direct I/O. */
export const FUSE_ASYNC_DIO = 1 << 15;
/** INIT: the driver caches writes (write-back). */
export const FUSE_WRITEBACK_CACHE = 1 << 16;
/** INIT: lookups and readdir may run in parallel. */
export const FUSE_PARALLEL_DIROPS = 1 << 18;
/** INIT: the server clears set-user-id bits on write, chown and truncate. */
export const FUSE_HANDLE_KILLPRIV = 1 << 19;
/** INIT: POSIX ACLs. */
export const FUSE_POSIX_ACL = 1 << 20;
/** INIT: `max_pages` is valid. */
export const FUSE_MAX_PAGES = 1 << 22;
/** INIT: cache READLINK replies. */
export const FUSE_CACHE_SYMLINKS = 1 << 23;
/** INIT: `map_alignment` is valid (DAX). */
export const FUSE_MAP_ALIGNMENT = 1 << 26;
/** INIT: submounts. */
export const FUSE_SUBMOUNTS = 1 << 27;
/** INIT: KILLPRIV with the VFS's rules. */
export const FUSE_HANDLE_KILLPRIV_V2 = 1 << 28;
/** INIT: SETXATTR carries the extended 16-byte `fuse_setxattr_in`. */
export const FUSE_SETXATTR_EXT = 1 << 29;
/** INIT: `flags2` is valid. */
export const FUSE_INIT_EXT = 1 << 30;
/** INIT `flags2`: security contexts on create (bit 32). */
export const FUSE_SECURITY_CTX_2 = 1 << 0;
/** INIT `flags2`: per-inode DAX (bit 33). */
export const FUSE_HAS_INODE_DAX_2 = 1 << 1;

/** OPEN reply: bypass the driver's page cache. */
export const FOPEN_DIRECT_IO = 1 << 0;
/** OPEN reply: keep the driver's cached data. */
export const FOPEN_KEEP_CACHE = 1 << 1;
/** OPEN reply: the file is not seekable. */
export const FOPEN_NONSEEKABLE = 1 << 2;
/** OPENDIR reply: the driver may cache directory entries. */
export const FOPEN_CACHE_DIR = 1 << 3;

/** SETATTR `valid`: mode. */
export const FATTR_MODE = 1 << 0;
/** SETATTR `valid`: owner. */
export const FATTR_UID = 1 << 1;
/** SETATTR `valid`: group. */
export const FATTR_GID = 1 << 2;
/** SETATTR `valid`: size. */
export const FATTR_SIZE = 1 << 3;
/** SETATTR `valid`: access time. */
export const FATTR_ATIME = 1 << 4;
/** SETATTR `valid`: modification time. */
export const FATTR_MTIME = 1 << 5;
/** SETATTR `valid`: `fh` is valid. */
export const FATTR_FH = 1 << 6;
/** SETATTR `valid`: access time now. */
export const FATTR_ATIME_NOW = 1 << 7;
/** SETATTR `valid`: modification time now. */
export const FATTR_MTIME_NOW = 1 << 8;
/** SETATTR `valid`: `lock_owner` is valid. */
export const FATTR_LOCKOWNER = 1 << 9;
/** SETATTR `valid`: change time. */
export const FATTR_CTIME = 1 << 10;
/** SETATTR `valid`: clear set-user-id and set-group-id. */
export const FATTR_KILL_SUIDGID = 1 << 11;

/** WRITE `write_flags`: clear set-user-id and set-group-id (FUSE_HANDLE_KILLPRIV_V2). */
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
/** OPEN / CREATE `open_flags`: clear set-user-id and set-group-id (with O_TRUNC). */
export const FUSE_OPEN_KILL_SUIDGID = 1 << 0;

/** GETATTR: `fh` is valid. */
export const FUSE_GETATTR_FH = 1 << 0;
/** RELEASE: flush too. */
export const FUSE_RELEASE_FLUSH = 1 << 0;
/** RELEASE: drop flock(2) locks. */
export const FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1;
/** LK: a flock(2) lock rather than a record lock. */
export const FUSE_LK_FLOCK = 1 << 0;
/** FSYNC: data only. */
export const FUSE_FSYNC_FDATASYNC = 1 << 0;
/** SETUPMAPPING: writable. */
export const FUSE_SETUPMAPPING_FLAG_WRITE = 1;
/** SETUPMAPPING: readable. */
export const FUSE_SETUPMAPPING_FLAG_READ = 2;

// ---------------------------------------------------------------------------
// The request header and its encoder

/** The fields of a request header a driver chooses. */
export interface FuseHeaderFields {
  /** Request id echoed in the reply (default 1). */
  unique?: bigint;
  /** The node the request is about (default the root, 1). */
  nodeid?: bigint | number;
  /** Caller's user id (default 0). */
  uid?: number;
  /** Caller's group id (default 0). */
  gid?: number;
  /** Caller's process id (default 0). */
  pid?: number;
  /** Extension length in 8-byte units (default 0). */
  totalExtlen?: number;
  /** Override `len` (default: the real length); for hostile tests. */
  len?: number;
}

/**
 * Encode a whole request: the `fuse_in_header` then the argument parts, concatenated
 * (virtio 1.2 §5.11.6: the device-readable part of a chain).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { FUSE_GETATTR, fuseRequest } from "./_fs_protocol.ts";
 * const req = fuseRequest(FUSE_GETATTR, { unique: 7n }, new Uint8Array(16));
 * assert.equal(req.length, 56);
 * assert.equal(new DataView(req.buffer).getUint32(0, true), 56);
 * ```
 *
 * @param opcode `FUSE_*`.
 * @param header Header fields.
 * @param parts Argument bytes, in order.
 * @returns The bytes.
 */
export function fuseRequest(
  opcode: number,
  header: FuseHeaderFields = {},
  ...parts: Uint8Array[]
): Uint8Array {
  let total = FUSE_IN_HEADER_SIZE;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  v.setUint32(0, header.len ?? total, true);
  v.setUint32(4, opcode, true);
  v.setBigUint64(8, BigInt.asUintN(64, header.unique ?? 1n), true);
  v.setBigUint64(16, BigInt.asUintN(64, BigInt(header.nodeid ?? FUSE_ROOT_ID)), true);
  v.setUint32(24, header.uid ?? 0, true);
  v.setUint32(28, header.gid ?? 0, true);
  v.setUint32(32, header.pid ?? 0, true);
  v.setUint16(36, header.totalExtlen ?? 0, true);
  let at = FUSE_IN_HEADER_SIZE;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
