/**
 * A network backend on a Linux tap device, through FFI: `/dev/net/tun` opened with
 * `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (every frame carries a 12-byte `virtio_net_hdr`, set
 * with `TUNSETVNETHDRSZ`), one descriptor per queue pair with `IFF_MULTI_QUEUE`, and the
 * driver's receive offloads passed to the kernel with `TUNSETOFFLOAD`. Creating or attaching
 * a tap needs root or CAP_NET_ADMIN in the network namespace of the process.
 *
 * @module
 */

import { existsSync, readFileSync } from "node:fs";
import {
  close,
  Errno,
  FdWatcher,
  ioctl,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  open,
  POLLIN,
  POLLOUT,
  readv,
  SysError,
  type Watch,
  writev,
} from "../sys/mod.ts";
import {
  ALL_OFFLOADS,
  type NetBackend,
  type NetBackendEvents,
  type NetOffloads,
  type NetSendResult,
} from "./_net_backend.ts";
import { NET_HDR_SIZE } from "./_net_header.ts";

// <linux/if_tun.h>
const TUNSETIFF = 0x400454ca; // _IOW('T', 202, int)
const TUNSETOFFLOAD = 0x400454d0; // _IOW('T', 208, unsigned int)
const TUNSETVNETHDRSZ = 0x400454d8; // _IOW('T', 216, int)
/** tun flag: a tap (Ethernet) device. */
export const IFF_TAP = 0x0002;
/** tun flag: no packet information prefix. */
export const IFF_NO_PI = 0x1000;
/** tun flag: frames carry a `virtio_net_hdr`. */
export const IFF_VNET_HDR = 0x4000;
/** tun flag: one descriptor per queue. */
export const IFF_MULTI_QUEUE = 0x0100;
/** TUNSETOFFLOAD: partial checksums may be delivered. */
export const TUN_F_CSUM = 0x01;
/** TUNSETOFFLOAD: TCPv4 segmentation may be delivered. */
export const TUN_F_TSO4 = 0x02;
/** TUNSETOFFLOAD: TCPv6 segmentation may be delivered. */
export const TUN_F_TSO6 = 0x04;
/** TUNSETOFFLOAD: TCP segmentation with ECN may be delivered. */
export const TUN_F_TSO_ECN = 0x08;
/** TUNSETOFFLOAD: UDP fragmentation may be delivered. */
export const TUN_F_UFO = 0x10;
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;
const EMPTY = new Uint8Array(0);

/** Options of {@linkcode TapNetBackend}. */
export interface TapNetBackendOptions {
  /** The tap's name (created when missing, attached when it exists). */
  name: string;
  /** Queues, one descriptor each (default 1); above 1 the tap must be multi-queue. */
  queues?: number;
  /** Where the clone device is (default `/dev/net/tun`). */
  tunPath?: string;
}

/**
 * The TUNSETOFFLOAD flags for what a driver accepts: segmentation only with checksums, as
 * the kernel requires.
 * @param o The driver's receive offloads.
 * @returns `TUN_F_*` flags.
 */
export function tunOffloadFlags(o: Readonly<NetOffloads>): number {
  if (!o.csum) return 0;
  let f = TUN_F_CSUM;
  if (o.tso4) f |= TUN_F_TSO4;
  if (o.tso6) f |= TUN_F_TSO6;
  if ((o.tso4 || o.tso6) && o.ecn) f |= TUN_F_TSO_ECN;
  if (o.ufo) f |= TUN_F_UFO;
  return f;
}

// The flags of an existing tun/tap device, from sysfs (in this network namespace).
function existingFlags(name: string): number | undefined {
  const path = `/sys/class/net/${name}/tun_flags`;
  if (!existsSync(path)) return undefined;
  const n = parseInt(readFileSync(path, "utf8").trim(), 16);
  return Number.isNaN(n) ? undefined : n;
}

function tapError(name: string, err: unknown, multiQueue: boolean): Error {
  if (!(err instanceof SysError)) return err instanceof Error ? err : new Error(String(err));
  let why: string;
  switch (err.errno) {
    case Errno.EPERM:
    case Errno.EACCES:
      why = "creating or attaching a tap needs root or CAP_NET_ADMIN";
      break;
    case Errno.EBUSY:
      why = "the tap is in use by another process (or was made for another user)";
      break;
    case Errno.EINVAL:
      why = multiQueue
        ? "the tap is not multi-queue: create it with `ip tuntap add mode tap multi_queue`"
        : "the tap is multi-queue and cannot be opened this way, or the name is not valid";
      break;
    default:
      why = err.message;
  }
  return new Error(`tap ${name}: ${why} (${err.code})`, { cause: err });
}

/**
 * Frames through a tap device. Queue pair i reads and writes descriptor i mod `queuePairs`;
 * with several queues the kernel steers received flows across them (and learns from the
 * queue a flow was sent on). Readiness comes from an {@linkcode FdWatcher}.
 *
 * @example Attach to a tap made with `ip tuntap add dev vt0 mode tap multi_queue`
 * ```ts ignore
 * const tap = new TapNetBackend({ name: "vt0", queues: 2 });
 * const net = new NetDevice({ backend: tap, queuePairs: 2 });
 * ```
 */
export class TapNetBackend implements NetBackend {
  /** The tap's name. */
  readonly name: string;
  /** Queues (descriptors). */
  readonly queuePairs: number;
  /** Whether the tap is multi-queue. */
  readonly multiQueue: boolean;
  /** Checksums and segmentation both ways (the kernel takes and gives them). */
  readonly offloads: Readonly<NetOffloads> = ALL_OFFLOADS;
  /** The TUNSETOFFLOAD flags last set. */
  offloadFlags = 0;
  readonly #fds: number[];
  readonly #watcher = new FdWatcher();
  readonly #readWatches: (Watch | undefined)[];
  readonly #writeWatches: (Watch | undefined)[];
  readonly #one: Uint8Array[] = [EMPTY];
  #events: NetBackendEvents | undefined;
  #closed = false;

  /**
   * Open (or create) the tap.
   * @param options Name, queues and clone device path.
   * @throws {RangeError} For a bad name or queue count.
   * @throws {Error} When the tap cannot be opened; the message says why (root or
   *   CAP_NET_ADMIN needed, no /dev/net/tun, not multi-queue, in use).
   */
  constructor(options: TapNetBackendOptions) {
    const name = options.name;
    const bytes = new TextEncoder().encode(name);
    if (bytes.length === 0 || bytes.length >= IFNAMSIZ || !/^[^\s/:%]+$/.test(name)) {
      throw new RangeError(`Bad interface name "${name}" (1-15 characters, no / : % or space)`);
    }
    const queues = options.queues ?? 1;
    if (!Number.isInteger(queues) || queues < 1 || queues > 256) {
      throw new RangeError(`Tap queues must be 1..256, got ${queues}`);
    }
    const tunPath = options.tunPath ?? "/dev/net/tun";
    // An existing tap is opened the way it was made (FACTS.md: the kernel refuses a mismatch).
    const existing = existingFlags(name);
    const multiQueue = queues > 1 || (existing !== undefined && (existing & IFF_MULTI_QUEUE) !== 0);
    if (existing !== undefined && queues > 1 && (existing & IFF_MULTI_QUEUE) === 0) {
      throw new Error(
        `tap ${name} exists without multi_queue and ${queues} queues were asked for: ` +
          `recreate it with \`ip tuntap add dev ${name} mode tap multi_queue\``,
      );
    }
    this.name = name;
    this.queuePairs = queues;
    this.multiQueue = multiQueue;
    const fds: number[] = [];
    const ifr = new Uint8Array(IFREQ_SIZE);
    ifr.set(bytes);
    new DataView(ifr.buffer).setUint16(
      IFNAMSIZ,
      IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multiQueue ? IFF_MULTI_QUEUE : 0),
      true,
    );
    const hdrSize = new Uint8Array(4);
    new DataView(hdrSize.buffer).setInt32(0, NET_HDR_SIZE, true);
    try {
      for (let i = 0; i < queues; i++) {
        let fd: number;
        try {
          fd = open(tunPath, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        } catch (err) {
          if (err instanceof SysError && err.errno === Errno.ENOENT) {
            throw new Error(`tap ${name}: no ${tunPath} (is the tun module loaded?)`, {
              cause: err,
            });
          }
          throw tapError(name, err, multiQueue);
        }
        fds.push(fd);
        try {
          ioctl(fd, TUNSETIFF, ifr.slice());
          ioctl(fd, TUNSETVNETHDRSZ, hdrSize);
          if (i === 0) ioctl(fd, TUNSETOFFLOAD, 0);
        } catch (err) {
          throw tapError(name, err, multiQueue);
        }
      }
    } catch (err) {
      for (const fd of fds) close(fd);
      throw err;
    }
    this.#fds = fds;
    this.#readWatches = new Array(queues).fill(undefined);
    this.#writeWatches = new Array(queues).fill(undefined);
  }

  /**
   * Start reporting readiness.
   * @param events Where readiness goes.
   */
  start(events: NetBackendEvents): void {
    if (this.#closed) throw new Error(`tap ${this.name} is closed`);
    this.#events = events;
    for (let q = 0; q < this.queuePairs; q++) {
      this.#readWatches[q] ??= this.#watcher.watch(
        this.#fds[q],
        () => this.#events?.readable(q),
        POLLIN,
      );
    }
  }

  /** Stop reporting readiness. */
  stop(): void {
    this.#events = undefined;
    for (let q = 0; q < this.queuePairs; q++) {
      this.#readWatches[q]?.close();
      this.#readWatches[q] = undefined;
      this.#writeWatches[q]?.close();
      this.#writeWatches[q] = undefined;
    }
  }

  /**
   * Read one frame (header and frame).
   * @param queue Queue.
   * @param buf Where it goes.
   * @returns Its length, or -1 when none is waiting.
   */
  receive(queue: number, buf: Uint8Array): number {
    const one = this.#one;
    one[0] = buf;
    try {
      return readv(this.#fds[queue], one);
    } finally {
      one[0] = EMPTY;
    }
  }

  /**
   * Write one frame (header and frame) in one writev.
   * @param queue Queue.
   * @param parts Header, then frame.
   * @returns `sent`, `full` (`writable` follows), or `dropped` (the tap is down, EIO, or the
   *   kernel refused the header, EINVAL).
   * @throws {SysError} For other failures.
   */
  send(queue: number, parts: readonly Uint8Array[]): NetSendResult {
    let n: number;
    try {
      n = writev(this.#fds[queue], parts);
    } catch (err) {
      if (err instanceof SysError && (err.errno === Errno.EIO || err.errno === Errno.EINVAL)) {
        return "dropped";
      }
      throw err;
    }
    if (n >= 0) return "sent";
    this.#writeWatches[queue] ??= this.#watcher.watch(this.#fds[queue], () => {
      this.#writeWatches[queue]?.close();
      this.#writeWatches[queue] = undefined;
      this.#events?.writable(queue);
    }, POLLOUT);
    return "full";
  }

  /**
   * Tell the kernel what the driver accepts (TUNSETOFFLOAD): it then segments and completes
   * checksums itself for anything else.
   * @param offloads The driver's receive offloads.
   * @throws {Error} When the kernel refuses.
   */
  setGuestOffloads(offloads: Readonly<NetOffloads>): void {
    if (this.#closed) return;
    const flags = tunOffloadFlags(offloads);
    try {
      ioctl(this.#fds[0], TUNSETOFFLOAD, flags);
    } catch (err) {
      throw tapError(this.name, err, this.multiQueue);
    }
    this.offloadFlags = flags;
  }

  /** Close every descriptor (a tap this process created goes away with the last one). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.stop();
    for (const fd of this.#fds) close(fd);
    void this.#watcher.stop();
  }
}
