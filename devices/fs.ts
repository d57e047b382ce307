/**
 * The file system device (virtio 1.2 §5.11): virtio-fs, a FUSE file server that shares one
 * host directory with the guest, confined to it.
 *
 * Queues (without VIRTIO_FS_F_NOTIFICATION, which is not offered):
 * - 0, hiprio: FUSE_FORGET, FUSE_BATCH_FORGET and FUSE_INTERRUPT. A chain is
 *   `fuse_in_header` + arguments, all device-readable; nothing is written back (used
 *   length 0). Any other opcode there is answered EINVAL when the chain has room.
 * - 1 … `numRequestQueues`, requests: device-readable `fuse_in_header` + arguments (+ the
 *   data of WRITE), then device-writable room for `fuse_out_header` + the reply (the data
 *   of READ goes straight into it). The used length is the reply's length, `out.len`.
 *   All request queues serve one session; FUSE_INIT on any of them starts it.
 *
 * Requests are parsed by the pure {@linkcode parseFuseRequest}; the server
 * ({@linkcode FsServer}) holds every inode as an `O_PATH` descriptor and touches the host
 * only through descriptor-relative calls. With a DAX window (our VMM: `daxWindowSize`, then
 * `setResource`) FUSE_SETUPMAPPING maps file ranges into shared memory region 0.
 *
 * @example Serve a directory to a vhost-user frontend (QEMU `vhost-user-fs-pci`)
 * ```ts ignore
 * import { FsDevice } from "./fs.ts";
 * import { VhostUserBackend } from "../vhost_user/backend.ts";
 * const fs = new FsDevice({ sharedDir: "/srv/share", tag: "share", cache: "auto" });
 * new VhostUserBackend(fs, { socketPath: "/tmp/fs.sock" }).listen();
 * // guest: mount -t virtiofs share /mnt
 * ```
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import { GuestRegion } from "../memory/guest_memory.ts";
import {
  ActivateError,
  type DeviceResources,
  featureBit,
  type ResourceConstraint,
  serveQueue,
  TYPE_VIRTIO_FS,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  VirtioSharedMemoryList,
} from "./device.ts";
import { Errno } from "../sys/libc.ts";
import { getrlimit, mmapAnonymous, RLIMIT_NOFILE, umask } from "../sys/mod.ts";
import {
  FUSE_BATCH_FORGET,
  FUSE_FORGET,
  FUSE_INTERRUPT,
  FUSE_OPCODE_NAMES,
} from "./_fs_protocol.ts";
import { fuseHasReply, parseFuseRequest } from "./_fs_request.ts";
import { type FsCacheMode, type FsCompleter, FsServer, type FsStats } from "./_fs_server.ts";
import { DaxWindow } from "./_fs_dax.ts";

export * from "./_fs_protocol.ts";
export {
  FUSE_MAX_ARGS,
  fuseHasReply,
  type FuseLimits,
  type FuseName,
  type FuseRefusal,
  type FuseRequest,
  type FuseRequestHeader,
  type ParsedFuseRequest,
  parseFuseRequest,
} from "./_fs_request.ts";
export {
  FS_MAX_COPY,
  FS_MAX_DIR_REPLY,
  FS_MAX_IO,
  FS_MAX_LOCK_WAITS,
  type FsCacheMode,
  type FsCompleter,
  FsServer,
  type FsServerOptions,
  type FsStats,
} from "./_fs_server.ts";
export { DAX_MAP_ALIGNMENT, DAX_MAX_MAPPINGS, DAX_PAGE, DaxWindow } from "./_fs_dax.ts";
export { type FsHandle, FsInode, HandleTable, InodeTable } from "./_fs_inodes.ts";

/** Feature bit: the notification queue (not offered). */
export const VIRTIO_FS_F_NOTIFICATION = 0;
/** Size of `struct virtio_fs_config` without the notification field. */
export const FS_CONFIG_SIZE = 40;
/** Bytes of the `tag` field. */
export const FS_TAG_BYTES = 36;
/** Default maximum size of each queue. */
export const FS_QUEUE_SIZE = 1024;
/** Alignment of the DAX window in guest-physical space (the driver maps 2 MiB at a time). */
export const FS_DAX_ALIGN: number = 2 << 20;

/** Options of {@linkcode FsDevice}. */
export interface FsDeviceOptions {
  /** The host directory shared with the guest (the root of everything it can reach). */
  sharedDir: string;
  /** The mount tag (`mount -t virtiofs TAG …`): UTF-8, 1 to 36 bytes. */
  tag: string;
  /** Request queues (default 1). */
  numRequestQueues?: number;
  /** Maximum size of each queue: a power of two (default 1024). */
  queueSize?: number;
  /** Refuse every change (EROFS) and open files read-only (default false). */
  readOnly?: boolean;
  /** Caching allowed to the driver (default `"auto"`; see {@linkcode FsServerOptions.cache}). */
  cache?: FsCacheMode;
  /** Serve extended attributes (default true). */
  xattr?: boolean;
  /** Every xattr namespace rather than `user.` only (default false). */
  allXattrNamespaces?: boolean;
  /** Host-side POSIX record locks (FUSE_POSIX_LOCKS; default false: the guest locks locally). */
  posixLocks?: boolean;
  /** Host-side flock(2) locks (FUSE_FLOCK_LOCKS; default false). */
  flock?: boolean;
  /** Let the guest create device nodes (default false: EPERM). */
  allowDeviceNodes?: boolean;
  /** Offer write-back caching (default false). */
  writeback?: boolean;
  /** Most inodes the guest may hold (default: from the open-file limit). */
  maxInodes?: number;
  /** Most open files (default: from the open-file limit). */
  maxHandles?: number;
  /**
   * Size of the DAX window in bytes, a multiple of 2 MiB (default 0: none). The window
   * exists once the VMM calls `setResource` with a memory window (our VMM; QEMU's
   * vhost-user-fs has none).
   */
  daxWindowSize?: number;
  /**
   * Resolve names with openat2(RESOLVE_BENEATH…) (default: when the kernel has it); false
   * forces the openat(O_NOFOLLOW) fallback of kernels before 5.6.
   */
  openat2?: boolean;
  /** Called for each malformed request or internal failure (default: ignore). */
  onError?: (err: VirtioError) => void;
}

/** Counters of an {@linkcode FsDevice}. */
export interface FsDeviceStats extends FsStats {
  /** Requests refused by the parser (malformed) or sent on the wrong queue. */
  refused: number;
  /** Inodes the guest holds, the root included. */
  readonly inodes: number;
  /** Open files and directories. */
  readonly handles: number;
}

// The process's umask, read once: the guest's modes arrive already masked by its own umask,
// so bits the host's mask would strip are put back after each creation.
let hostUmask: number | undefined;
function readUmask(): number {
  if (hostUmask === undefined) {
    const old = umask(0o022);
    umask(old);
    hostUmask = old;
  }
  return hostUmask;
}

function defaultLimits(): { inodes: number; handles: number } {
  let soft = 1 << 20;
  try {
    soft = Math.min(getrlimit(RLIMIT_NOFILE).soft, 1 << 20);
  } catch { /* keep the default */ }
  const budget = Math.max(64, soft - 256);
  const handles = Math.max(16, Math.min(4096, Math.floor(budget / 4)));
  return { inodes: Math.max(16, budget - handles), handles };
}

const HIPRIO = 0;

/**
 * The virtio-fs device.
 *
 * @example Mount-free check: FUSE_INIT then LOOKUP through the driver harness
 * ```ts ignore
 * const fs = new FsDevice({ sharedDir: dir, tag: "t" });
 * // activate with a hiprio queue and one request queue, then add chains of
 * // fuseRequest(FUSE_INIT, …) and fuseRequest(FUSE_LOOKUP, …) to queue 1
 * ```
 */
export class FsDevice extends VirtioDeviceBase {
  /** The file server. */
  readonly server: FsServer;
  /** The mount tag. */
  readonly tag: string;
  /** Request queues offered. */
  readonly numRequestQueues: number;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #daxSize: number;
  readonly #completers: FsCompleter[] = [];
  #window: DaxWindow | undefined;
  #refused = 0;

  /**
   * Create the device and open the shared directory.
   * @param options The directory, the tag and how to serve them.
   * @throws {RangeError} When the tag, a count or a size is out of range.
   * @throws {SysError} When the directory cannot be opened.
   */
  constructor(options: FsDeviceOptions) {
    const tagBytes = new TextEncoder().encode(options.tag);
    if (tagBytes.length === 0 || tagBytes.length > FS_TAG_BYTES || tagBytes.includes(0)) {
      throw new RangeError(`Tag must be 1 to 36 bytes of UTF-8 without NUL, got "${options.tag}"`);
    }
    const n = options.numRequestQueues ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > 1024) {
      throw new RangeError(`Request queue count must be 1 to 1024, got ${n}`);
    }
    const size = options.queueSize ?? FS_QUEUE_SIZE;
    if (!Number.isInteger(size) || size < 2 || size > 32768 || (size & (size - 1)) !== 0) {
      throw new RangeError(`Queue size must be a power of two from 2 to 32768, got ${size}`);
    }
    const dax = options.daxWindowSize ?? 0;
    if (!Number.isSafeInteger(dax) || dax < 0 || dax % FS_DAX_ALIGN !== 0) {
      throw new RangeError(`DAX window size must be a multiple of 2 MiB, got ${dax}`);
    }
    const cache = options.cache ?? "auto";
    if (!["never", "auto", "always"].includes(cache)) {
      throw new RangeError(`Cache mode must be never, auto or always, got ${cache}`);
    }
    const space = new Uint8Array(FS_CONFIG_SIZE);
    space.set(tagBytes);
    new DataView(space.buffer).setUint32(FS_TAG_BYTES, n, true);
    const features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_EVENT_IDX);
    super(
      TYPE_VIRTIO_FS,
      new VirtioDeviceInfo("virtio-fs", features, new Array<number>(1 + n).fill(size), space),
    );
    const limits = defaultLimits();
    this.server = new FsServer(options.sharedDir, {
      readOnly: options.readOnly ?? false,
      cache,
      xattr: options.xattr ?? true,
      allXattrNamespaces: options.allXattrNamespaces ?? false,
      posixLocks: options.posixLocks ?? false,
      flock: options.flock ?? false,
      allowDeviceNodes: options.allowDeviceNodes ?? false,
      writeback: options.writeback ?? false,
      maxInodes: options.maxInodes ?? limits.inodes,
      maxHandles: options.maxHandles ?? limits.handles,
      umask: readUmask(),
      openat2: options.openat2,
    });
    this.tag = options.tag;
    this.numRequestQueues = n;
    this.#daxSize = dax;
    this.#onError = options.onError;
    for (let i = 0; i <= n; i++) {
      this.#completers.push({ complete: (chain, len) => this.#complete(i, chain, len) });
    }
  }

  /** Counters since creation. */
  get stats(): FsDeviceStats {
    return {
      ...this.server.stats,
      refused: this.#refused,
      inodes: this.server.inodes.size,
      handles: this.server.handles.size,
    };
  }

  /** The DAX window, once `setResource` gave the device one. */
  get daxWindow(): DaxWindow | undefined {
    return this.#window;
  }

  /** hiprio and the first request queue must be there; the driver may use fewer than offered. */
  protected override requiredQueues(): number {
    return 2;
  }

  /**
   * Resources: those of every device, and with a DAX window a guest-physical window for it
   * and a memory slot.
   * @param requests Where the needs are pushed.
   * @param useGenericIrq Whether the transport uses MSI-X.
   */
  override getResourceRequirements(requests: ResourceConstraint[], useGenericIrq: boolean): void {
    super.getResourceRequirements(requests, useGenericIrq);
    if (this.#daxSize > 0) {
      requests.push({ type: "MemAddress", size: this.#daxSize, align: FS_DAX_ALIGN });
      requests.push({ type: "KvmMemSlot" });
    }
  }

  /**
   * Take the window the VMM assigned: reserve it (anonymous memory, so every byte stays
   * readable), and return it as shared memory region 0, the DAX window (virtio 1.2 §5.11.6.5).
   * @param resources What the VMM assigned.
   * @returns The window, or `undefined` without DAX.
   * @throws {ActivateError} When no fitting window or memory slot was assigned.
   */
  setResource(resources: DeviceResources): VirtioSharedMemoryList | undefined {
    if (this.#daxSize === 0) return undefined;
    const mem = resources.memAddresses().find((m) => m.size >= this.#daxSize);
    const slot = resources.kvmMemSlots()[0];
    if (mem === undefined || slot === undefined) {
      throw new ActivateError("InvalidParam", "virtio-fs DAX needs a memory window and a slot");
    }
    this.#window?.close();
    const window = new DaxWindow(mmapAnonymous(this.#daxSize));
    this.#window = window;
    this.server.dax = window;
    return new VirtioSharedMemoryList({
      hostAddr: window.mapping.address,
      guestAddr: mem.base,
      len: this.#daxSize,
      kvmUserspaceMemoryRegionSlot: slot,
      regionList: [{ offset: 0, len: this.#daxSize }],
      mmapRegion: new GuestRegion({ base: mem.base, buffer: window.mapping.buffer }),
    });
  }

  /**
   * Queues stopped or memory changed: requests waiting for a lock are dropped (the
   * frontend serves them again from its used index).
   * @param _config The new config.
   */
  protected override onReconfigure(_config: VirtioDeviceConfig): void {
    this.server.dropWaits();
  }

  /**
   * Reset: the FUSE session ends (handles closed, inodes forgotten, window unmapped).
   * @param _wasActive The config the device was active with.
   */
  protected override onReset(_wasActive: VirtioDeviceConfig | undefined): void {
    this.server.endSession();
  }

  /**
   * Serve queue `index`, one budget's worth at most.
   * @param index 0 (hiprio) or a request queue.
   * @returns `true` when requests are left for another pass.
   */
  processQueue(index: number): boolean {
    const config = this.active;
    if (config === undefined) return false;
    const qc = this.queue(index);
    if (qc === undefined) {
      this.#error(new VirtioError("InvalidInput", `virtio-fs has no active queue ${index}`));
      return false;
    }
    const handler = index === HIPRIO ? this.#hiprio : this.#request(index);
    return serveQueue(config.memory, qc, handler, this.#reportQueueError).more;
  }

  /** Close the shared directory, every descriptor and the DAX window. */
  remove(): void {
    this.server.close();
    this.#window?.close();
    this.#window = undefined;
  }

  #handlers = new Map<number, (chain: DescriptorChain) => number | undefined>();

  #request(index: number): (chain: DescriptorChain) => number | undefined {
    let h = this.#handlers.get(index);
    if (h === undefined) {
      h = (chain) => this.#serve(chain, index, false);
      this.#handlers.set(index, h);
    }
    return h;
  }

  #hiprio = (chain: DescriptorChain): number | undefined => this.#serve(chain, HIPRIO, true);

  #serve(chain: DescriptorChain, index: number, hiprio: boolean): number | undefined {
    const server = this.server;
    const req = parseFuseRequest(chain, server.limits);
    if (!req.ok) {
      // ENOSYS is an ordinary answer (an opcode this server does not implement).
      if (req.error !== Errno.ENOSYS) {
        this.#refused++;
        this.#error(
          new VirtioError("InvalidInput", `virtio-fs chain ${chain.head}: ${req.reason}`),
        );
      }
      return req.reply ? server.error(chain, req.unique, req.error) : 0;
    }
    const op = req.opcode;
    if (hiprio && op !== FUSE_FORGET && op !== FUSE_BATCH_FORGET && op !== FUSE_INTERRUPT) {
      // virtio 1.2 §5.11.6.2: only these belong on hiprio.
      this.#refused++;
      this.#error(
        new VirtioError("InvalidInput", `virtio-fs: ${FUSE_OPCODE_NAMES[op]} on the hiprio queue`),
      );
      return server.error(chain, req.unique, Errno.EINVAL);
    }
    try {
      return server.serve(req, chain, this.#completers[index]);
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      this.#error(
        new VirtioError("InternalError", `virtio-fs ${FUSE_OPCODE_NAMES[op]}: ${msg}`, {
          cause: err,
        }),
      );
      if (!fuseHasReply(op)) return 0;
      try {
        return server.error(chain, req.unique, Errno.EIO);
      } catch {
        return 0;
      }
    }
  }

  /** Finish a chain whose reply was deferred (a lock that became free, or an interrupt). */
  #complete(index: number, chain: DescriptorChain, len: number): void {
    const config = this.active;
    const qc = this.queue(index);
    if (config === undefined || qc === undefined) return;
    try {
      qc.queue.addUsed(config.memory, chain.head, len);
      if (qc.queue.needsNotification(config.memory)) qc.notifier.notify();
    } catch (err) {
      this.#error(VirtioError.from(err));
    }
  }

  #reportQueueError = (err: VirtioError): void => {
    this.#error(err);
  };

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}
