/**
 * A network backend on a Unix datagram socket: one Ethernet frame per datagram, so two
 * devices (two guests, or a guest and a test) can be wired together with no privileges, as
 * QEMU's `-netdev dgram` does.
 *
 * Format: by default each datagram is the 12-byte `virtio_net_hdr` (virtio 1.x layout,
 * `num_buffers` zero) followed by the frame, so checksum and segmentation offloads pass from
 * one driver to the other untouched. With `vnetHdr: false` a datagram is the bare frame (what
 * QEMU's `-netdev dgram` sends) and the backend reports no offloads.
 *
 * @module
 */

import {
  AF_UNIX,
  bind,
  close,
  connect,
  Errno,
  FdWatcher,
  POLLIN,
  POLLOUT,
  recvDatagram,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  socket,
  SysError,
  type Watch,
  writev,
} from "../sys/mod.ts";
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import {
  ALL_OFFLOADS,
  type NetBackend,
  type NetBackendEvents,
  type NetOffloads,
  type NetSendResult,
  NO_OFFLOADS,
} from "./_net_backend.ts";
import { NET_HDR_SIZE } from "./_net_header.ts";

/** Options of {@linkcode SocketNetBackend}. */
export interface SocketNetBackendOptions {
  /** The peer's socket path (a leading `"\0"` names an abstract socket). */
  peer: string;
  /**
   * This end's socket path, which the peer sends to (default: an abstract address of its
   * own; the peer can then answer only if it connects to nobody in particular).
   */
  bind?: string;
  /** Carry the `virtio_net_hdr` and with it the offloads (default true). */
  vnetHdr?: boolean;
}

let abstractCount = 0;

/**
 * Frames over a Unix datagram socket, bound to `bind` and connected to `peer`.
 *
 * The peer may come and go: while it is missing (or after it went away) frames sent are
 * dropped and counted in `noPeer`, and the backend connects again on the next frame. Once
 * connected, only the peer's datagrams are received. A full socket (the peer reads slower than
 * the driver sends) answers `full` and the backend watches for `POLLOUT`; readiness comes from
 * an {@linkcode FdWatcher}, never from polling.
 *
 * @example Two backends wired together
 * ```ts ignore
 * const a = new SocketNetBackend({ bind: "/tmp/a.sock", peer: "/tmp/b.sock" });
 * const b = new SocketNetBackend({ bind: "/tmp/b.sock", peer: "/tmp/a.sock" });
 * ```
 */
export class SocketNetBackend implements NetBackend {
  /** One queue. */
  readonly queuePairs = 1;
  /** All offloads with the header, none without. */
  readonly offloads: Readonly<NetOffloads>;
  /** Whether datagrams carry the `virtio_net_hdr`. */
  readonly vnetHdr: boolean;
  /** The bound address. */
  readonly path: string;
  /** The peer's address. */
  readonly peer: string;
  /** Frames dropped because no peer was there. */
  noPeer = 0;
  readonly #fd: number;
  readonly #ownsPath: boolean;
  readonly #watcher = new FdWatcher();
  readonly #rawParts: Uint8Array[] = [];
  #connected = false;
  #events: NetBackendEvents | undefined;
  #readWatch: Watch | undefined;
  #writeWatch: Watch | undefined;
  #rawBuf: Uint8Array | undefined;
  #rawView: Uint8Array | undefined;
  #closed = false;

  /**
   * Create the socket, bind it and try to connect to the peer (which may not exist yet).
   * @param options Peer, own address and format.
   * @throws {SysError} When the socket cannot be created or bound (EADDRINUSE: another
   *   process is bound there).
   */
  constructor(options: SocketNetBackendOptions) {
    this.vnetHdr = options.vnetHdr ?? true;
    this.offloads = this.vnetHdr ? ALL_OFFLOADS : NO_OFFLOADS;
    this.peer = options.peer;
    const unique = `${abstractCount++}-${crypto.getRandomValues(new Uint32Array(1))[0]}`;
    const path = options.bind ?? `\0virtio-ts-net-${unique}`;
    this.path = path;
    const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK);
    try {
      // A socket file left by an earlier run is replaced; any other file is not.
      if (!path.startsWith("\0") && existsSync(path) && lstatSync(path).isSocket()) {
        unlinkSync(path);
      }
      bind(fd, path);
    } catch (err) {
      close(fd);
      throw err;
    }
    this.#fd = fd;
    this.#ownsPath = !path.startsWith("\0");
    this.#tryConnect();
  }

  /** Whether the socket is connected to the peer. */
  get connected(): boolean {
    return this.#connected;
  }

  #tryConnect(): boolean {
    try {
      connect(this.#fd, this.peer);
      this.#connected = true;
    } catch (err) {
      if (!(err instanceof SysError)) throw err;
      this.#connected = false;
    }
    return this.#connected;
  }

  /**
   * Start reporting readiness.
   * @param events Where readiness goes.
   */
  start(events: NetBackendEvents): void {
    if (this.#closed) throw new Error("SocketNetBackend is closed");
    this.#events = events;
    this.#readWatch ??= this.#watcher.watch(this.#fd, () => this.#events?.readable(0), POLLIN);
  }

  /** Stop reporting readiness. */
  stop(): void {
    this.#events = undefined;
    this.#readWatch?.close();
    this.#readWatch = undefined;
    this.#writeWatch?.close();
    this.#writeWatch = undefined;
  }

  /**
   * Take one datagram.
   * @param _queue Always 0.
   * @param buf Where the header and frame go.
   * @returns The length (header included), more than `buf.length` when it was cut, or -1.
   */
  receive(_queue: number, buf: Uint8Array): number {
    if (this.vnetHdr) return recvDatagram(this.#fd, buf);
    if (this.#rawBuf !== buf) {
      this.#rawBuf = buf;
      this.#rawView = buf.subarray(NET_HDR_SIZE);
    }
    const n = recvDatagram(this.#fd, this.#rawView!);
    if (n < 0) return n;
    buf.fill(0, 0, NET_HDR_SIZE);
    return n + NET_HDR_SIZE;
  }

  /**
   * Send one frame as one datagram.
   * @param _queue Always 0.
   * @param parts Header, then frame.
   * @returns `sent`, `full` (the socket is full: `writable` follows), or `dropped` (no peer).
   * @throws {SysError} For other failures.
   */
  send(_queue: number, parts: readonly Uint8Array[]): NetSendResult {
    if (!this.#connected && !this.#tryConnect()) {
      this.noPeer++;
      return "dropped";
    }
    let out = parts;
    if (!this.vnetHdr) {
      const raw = this.#rawParts;
      raw.length = 0;
      for (let i = 1; i < parts.length; i++) raw.push(parts[i]);
      out = raw;
    }
    let n: number;
    try {
      n = writev(this.#fd, out);
    } catch (err) {
      if (
        err instanceof SysError &&
        (err.errno === Errno.ECONNREFUSED || err.errno === Errno.ENOTCONN ||
          err.errno === Errno.ENOENT)
      ) {
        // The peer went away: connect again on the next frame.
        this.#connected = false;
        this.noPeer++;
        return "dropped";
      }
      throw err;
    } finally {
      this.#rawParts.length = 0;
    }
    if (n < 0) {
      this.#writeWatch ??= this.#watcher.watch(this.#fd, () => {
        this.#writeWatch?.close();
        this.#writeWatch = undefined;
        this.#events?.writable(0);
      }, POLLOUT);
      return "full";
    }
    return "sent";
  }

  /** Nothing to set: the header carries whatever the peer sends (the device checks it). */
  setGuestOffloads(): void {}

  /** Close the socket and remove its file. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.stop();
    close(this.#fd);
    void this.#watcher.stop();
    if (this.#ownsPath) {
      try {
        if (existsSync(this.path) && lstatSync(this.path).isSocket()) unlinkSync(this.path);
      } catch { /* already gone */ }
    }
  }
}
