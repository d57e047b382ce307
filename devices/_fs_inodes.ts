/**
 * The virtio-fs server's tables: the inodes the driver knows (each held as an `O_PATH`
 * descriptor and counted by lookups, virtio 1.2 §5.11.6 / FUSE's nlookup rule) and the open
 * files and directories (FUSE file handles). Both are bounded: a full table refuses new
 * entries with `ENFILE` / `EMFILE` instead of growing.
 *
 * @module
 */

import { close } from "../sys/mod.ts";

const encoder = new TextEncoder();

/** One inode the driver has looked up. */
export class FsInode {
  /** The FUSE node id (never reused while the device lives). */
  readonly nodeid: number;
  /** An `O_PATH|O_NOFOLLOW` descriptor naming the inode (never opened for I/O). */
  readonly fd: number;
  /** Identity on the host: device and inode number. */
  readonly key: string;
  /** File type bits (`S_IFMT` part of the mode); a type never changes. */
  readonly type: number;
  /** `"<fd>\0"`: the name of {@linkcode FsInode.fd} under `/proc/self/fd`. */
  readonly procName: Uint8Array;
  /** `"/proc/self/fd/<fd>\0"`: a path that leads to this very inode, for path-only calls. */
  readonly procPath: Uint8Array;
  /** Lookups not yet forgotten by the driver. */
  refs = 1;
  /** Open handles whose inode this is. */
  handles = 0;
  /** Forgotten while handles were open: the descriptor closes with the last one. */
  orphan = false;

  /**
   * Create it.
   * @param nodeid Node id.
   * @param fd The `O_PATH` descriptor (owned from now on).
   * @param key Host identity.
   * @param type `S_IFMT` bits.
   */
  constructor(nodeid: number, fd: number, key: string, type: number) {
    this.nodeid = nodeid;
    this.fd = fd;
    this.key = key;
    this.type = type;
    this.procName = encoder.encode(`${fd}\0`);
    this.procPath = encoder.encode(`/proc/self/fd/${fd}\0`);
  }
}

/**
 * The inodes the driver knows, by node id and by host identity (so a second name of the
 * same inode — a hard link, a rename — gets the same node id).
 */
export class InodeTable {
  /** The shared directory itself, node id 1; never forgotten. */
  readonly root: FsInode;
  /** Most inodes besides the root. */
  readonly max: number;
  readonly #byId = new Map<number, FsInode>();
  readonly #byKey = new Map<string, FsInode>();
  #next = 2;

  /**
   * Create it around the root.
   * @param root The root inode (node id 1).
   * @param max Most inodes besides the root.
   */
  constructor(root: FsInode, max: number) {
    this.root = root;
    this.max = max;
    this.#byId.set(root.nodeid, root);
    this.#byKey.set(root.key, root);
  }

  /** Inodes held, the root included. */
  get size(): number {
    return this.#byId.size;
  }

  /**
   * The inode with this node id.
   * @param nodeid Node id.
   * @returns The inode, if the driver holds it.
   */
  get(nodeid: number): FsInode | undefined {
    return this.#byId.get(nodeid);
  }

  /**
   * The inode with this host identity.
   * @param key Device and inode number.
   * @returns The inode, if held.
   */
  find(key: string): FsInode | undefined {
    return this.#byKey.get(key);
  }

  /** Whether another inode fits. */
  get full(): boolean {
    return this.#byId.size - 1 >= this.max;
  }

  /**
   * Add an inode with one lookup.
   * @param fd Its `O_PATH` descriptor (owned from now on).
   * @param key Host identity (not already held).
   * @param type `S_IFMT` bits.
   * @returns The inode.
   */
  add(fd: number, key: string, type: number): FsInode {
    const inode = new FsInode(this.#next++, fd, key, type);
    this.#byId.set(inode.nodeid, inode);
    this.#byKey.set(key, inode);
    return inode;
  }

  /**
   * Drop `n` lookups (FUSE_FORGET); at zero the inode leaves the table, and its descriptor
   * closes now or with its last open handle. The root is never dropped.
   * @param inode The inode.
   * @param n Lookups to drop.
   */
  forget(inode: FsInode, n: number): void {
    if (inode === this.root || this.#byId.get(inode.nodeid) !== inode) return;
    inode.refs = Math.max(0, inode.refs - n);
    if (inode.refs > 0) return;
    this.#byId.delete(inode.nodeid);
    if (this.#byKey.get(inode.key) === inode) this.#byKey.delete(inode.key);
    if (inode.handles > 0) inode.orphan = true;
    else closeQuietly(inode.fd);
  }

  /**
   * A handle on `inode` closed: an orphan's descriptor closes with the last one.
   * @param inode The inode.
   */
  handleClosed(inode: FsInode): void {
    inode.handles = Math.max(0, inode.handles - 1);
    if (inode.orphan && inode.handles === 0) {
      inode.orphan = false;
      closeQuietly(inode.fd);
    }
  }

  /** Drop every inode but the root (a new session, a reset). Handles must be closed first. */
  clear(): void {
    for (const inode of this.#byId.values()) {
      if (inode === this.root) continue;
      if (inode.handles === 0) closeQuietly(inode.fd);
      else inode.orphan = true;
    }
    this.#byId.clear();
    this.#byKey.clear();
    this.#byId.set(this.root.nodeid, this.root);
    this.#byKey.set(this.root.key, this.root);
    this.root.refs = 1;
  }
}

/** An open file or directory: a FUSE file handle. */
export interface FsHandle {
  /** The handle number the driver uses. */
  readonly fh: number;
  /** A descriptor opened for I/O (`O_RDONLY|O_DIRECTORY` for directories). */
  readonly fd: number;
  /** The inode. */
  readonly inode: FsInode;
  /** Whether it is a directory handle. */
  readonly dir: boolean;
  /** Whether it was opened for writing. */
  readonly writable: boolean;
  /** Directory: where the descriptor's position is (a getdents64 cookie), or -1n when unknown. */
  pos: bigint;
}

/** The open handles, by number. */
export class HandleTable {
  /** Most handles open at once. */
  readonly max: number;
  readonly #byFh = new Map<number, FsHandle>();
  #next = 1;

  /**
   * Create it.
   * @param max Most handles open at once.
   */
  constructor(max: number) {
    this.max = max;
  }

  /** Handles open. */
  get size(): number {
    return this.#byFh.size;
  }

  /** Whether another handle fits. */
  get full(): boolean {
    return this.#byFh.size >= this.max;
  }

  /**
   * The handle with this number.
   * @param fh Handle number.
   * @returns The handle, if open.
   */
  get(fh: number): FsHandle | undefined {
    return this.#byFh.get(fh);
  }

  /**
   * Register an open descriptor as a new handle.
   * @param fd The descriptor (owned from now on).
   * @param inode Its inode.
   * @param dir Whether it is a directory.
   * @param writable Whether it was opened for writing.
   * @returns The handle.
   */
  add(fd: number, inode: FsInode, dir: boolean, writable: boolean): FsHandle {
    const handle: FsHandle = { fh: this.#next++, fd, inode, dir, writable, pos: 0n };
    inode.handles++;
    this.#byFh.set(handle.fh, handle);
    return handle;
  }

  /**
   * Remove a handle and close its descriptor.
   * @param handle The handle.
   * @param inodes The inode table (an orphaned inode closes with its last handle).
   */
  remove(handle: FsHandle, inodes: InodeTable): void {
    if (this.#byFh.get(handle.fh) !== handle) return;
    this.#byFh.delete(handle.fh);
    closeQuietly(handle.fd);
    inodes.handleClosed(handle.inode);
  }

  /**
   * Close every handle.
   * @param inodes The inode table.
   */
  clear(inodes: InodeTable): void {
    for (const h of [...this.#byFh.values()]) this.remove(h, inodes);
  }
}

/**
 * Close a descriptor, ignoring errors (it is ours and open; close(2) fails only for a bad
 * number, and Linux frees the descriptor even when it reports EINTR or EIO).
 * @param fd The descriptor.
 */
export function closeQuietly(fd: number): void {
  try {
    close(fd);
  } catch { /* see above */ }
}
