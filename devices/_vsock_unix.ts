/**
 * The hybrid Unix-socket host side of virtio-vsock (the Firecracker / Cloud Hypervisor model):
 *
 * - Host → guest: a host program connects to the device's socket (`udsPath`) and writes
 *   `CONNECT <port>\n`; once the guest accepts, the device answers `OK <host-port>\n` and the
 *   socket carries the connection's bytes both ways. Refused, timed out or malformed: the
 *   socket is closed without an answer.
 * - Guest → host: a guest connection to CID 2 port P is a connection to the Unix socket
 *   listening at `<udsPath>_P`, of the same type (SOCK_STREAM for stream, SOCK_SEQPACKET for
 *   seqpacket, which keeps message boundaries); nothing there, or the wrong type, is an RST.
 *
 * The sockets are driven through `sys/` (libc through FFI), not `node:net`: the device reads
 * host bytes straight into guest receive buffers and writes guest bytes straight from guest
 * memory, reads only while the guest has credit (so the host's writes block instead of the
 * device buffering), and needs SOCK_SEQPACKET, none of which `node:net` offers. Readiness
 * comes from one {@linkcode FdWatcher} (poll(2) off the JS thread): no busy loop.
 *
 * @module
 */

import { existsSync, lstatSync, unlinkSync } from "node:fs";
import {
  accept,
  AF_UNIX,
  bind,
  close,
  connect,
  Errno,
  FdWatcher,
  listen,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSG_PEEK,
  MSG_TRUNC,
  poll,
  POLLHUP,
  POLLIN,
  POLLOUT,
  recvmsg,
  recvv,
  sendmsg,
  sendv,
  setSocketOption,
  SHUT_RD,
  SHUT_WR,
  shutdown,
  SO_SNDBUF,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  SOCK_STREAM,
  socket,
  SOL_SOCKET,
  SysError,
  type Watch,
} from "../sys/mod.ts";
import {
  READ_AGAIN,
  READ_FAILED,
  READ_TOO_BIG,
  type VsockEndpoint,
  type VsockEndpointEvents,
  type VsockSocketType,
} from "./_vsock_endpoint.ts";
import { VIRTIO_VSOCK_SEQ_EOM } from "./_vsock_packet.ts";

/** Longest `CONNECT <port>\n` line accepted, in bytes. */
export const CONNECT_LINE_MAX = 64;
/** How long a host program has to send its `CONNECT` line, in ms. */
export const CONNECT_LINE_TIMEOUT_MS = 10_000;
/** Most host sockets waiting for their `CONNECT` line at once; more are closed. */
export const CONNECT_PENDING_MAX = 128;
/** How long a finished connection may take to hand its last guest bytes to the host, in ms. */
export const LINGER_TIMEOUT_MS = 10_000;

const encoder = new TextEncoder();
const peekScratch = new Uint8Array(1);

function errnoOf(err: unknown): number {
  return err instanceof SysError ? err.errno : -1;
}

/**
 * Parse a `CONNECT <port>` command (case-insensitive, spaces or tabs between, an optional
 * trailing `\r`).
 * @param line The line without its `\n`.
 * @returns The port, or `undefined` when malformed.
 */
export function parseConnectLine(line: string): number | undefined {
  const m = /^connect[ \t]+([0-9]{1,10})[ \t]*\r?$/i.exec(line);
  if (m === null) return undefined;
  const port = Number(m[1]);
  return port <= 0xffffffff ? port : undefined;
}

/** What the muxer needs from the device. */
export interface UnixMuxerHooks {
  /**
   * The send buffer to ask for on each connection's socket (`SO_SNDBUF`, capped by the
   * system's wmem_max): the device's `buf_alloc`, so that what the guest may send un-consumed
   * fits in the socket rather than being copied and held by the device.
   */
  sendBuffer: number;
  /**
   * A host program asked for guest port `port`: open a host-initiated connection on
   * `endpoint`. Returns why not as a string, anything else when the request is on its way.
   */
  openFromHost(port: number, endpoint: VsockEndpoint): unknown;
  /** Errors of the sockets themselves (accept failing, a watcher failing). */
  onError(err: unknown): void;
}

/** One connected Unix socket as a connection's host side. */
export class FdEndpoint implements VsockEndpoint {
  events: VsockEndpointEvents = { readable() {}, forwarded() {}, failed() {}, finished() {} };
  readFlags = 0;
  hungUp = false;
  readonly #fd: number;
  readonly #seqpacket: boolean;
  readonly #watcher: FdWatcher;
  // Guest → host bytes of this tx pass, as views of guest memory, until `flush` (stream).
  readonly #batch: Uint8Array[] = [];
  #batchBytes = 0;
  // Guest → host bytes the socket did not take yet, copied (stream: pieces; seqpacket: messages).
  readonly #pending: Uint8Array[] = [];
  #pendingHead = 0; // bytes of #pending[0] already sent (stream)
  // Seqpacket: the message being assembled from RW packets.
  #parts: Uint8Array[] = [];
  #partsBytes = 0;
  // Seqpacket: the message being sent to the guest, and how much of it went.
  #inbox: Uint8Array | undefined;
  #inboxLen = 0;
  #inboxOff = 0;
  // Host → guest bytes read before the connection started (after the CONNECT line).
  #prefix: Uint8Array | undefined;
  // A short read emptied the socket: the next read asks poll(2) rather than recv(2), which
  // would only fail with EAGAIN (an exception per burst).
  #drained = false;
  #readWatch: Watch | undefined;
  #writeWatch: Watch | undefined;
  #shutWrite = false;
  #finishing = false;
  #closed = false;
  #lingerTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Take over a connected, non-blocking socket.
   * @param fd The socket (owned from now on).
   * @param type The socket type.
   * @param watcher The watcher for readiness.
   * @param prefix Bytes already read from it, to be delivered first.
   */
  constructor(fd: number, type: VsockSocketType, watcher: FdWatcher, prefix?: Uint8Array) {
    this.#fd = fd;
    this.#seqpacket = type === "seqpacket";
    this.#watcher = watcher;
    this.#prefix = prefix !== undefined && prefix.length > 0 ? prefix : undefined;
  }

  // ----- guest → host ------------------------------------------------------------------------

  write(views: readonly Uint8Array[], len: number, flags: number): boolean {
    if (this.#closed) return false;
    try {
      return this.#seqpacket ? this.#writeMessage(views, len, flags) : this.#writeStream(views);
    } catch (err) {
      this.#fail(err);
      return false;
    }
  }

  #writeStream(views: readonly Uint8Array[]): boolean {
    if (this.#pending.length > 0) {
      // The socket is full already: keep the order, behind what waits.
      for (const v of views) if (v.length > 0) this.#pending.push(v.slice());
      return true;
    }
    for (const v of views) {
      if (v.length === 0) continue;
      this.#batch.push(v);
      this.#batchBytes += v.length;
    }
    return true;
  }

  /** Send this pass's bytes in one call; copy what the socket did not take. */
  flush(): void {
    const batch = this.#batch;
    if (batch.length === 0 || this.#closed) return;
    let sent: number;
    try {
      sent = sendv(this.#fd, batch, MSG_NOSIGNAL | MSG_DONTWAIT);
    } catch (err) {
      this.#dropBatch();
      this.#fail(err);
      return;
    }
    if (sent < this.#batchBytes) {
      let skip = sent;
      for (const v of batch) {
        if (skip >= v.length) {
          skip -= v.length;
          continue;
        }
        this.#pending.push(v.slice(skip));
        skip = 0;
      }
      this.#armWrite();
    }
    this.#dropBatch();
    if (sent > 0) this.events.forwarded(sent);
    if (this.#pending.length === 0 && this.#shutWrite && !this.#closed) this.#shutdownWrite();
  }

  #dropBatch(): void {
    this.#batch.length = 0;
    this.#batchBytes = 0;
  }

  #writeMessage(views: readonly Uint8Array[], len: number, flags: number): boolean {
    const ends = (flags & VIRTIO_VSOCK_SEQ_EOM) !== 0;
    if (ends && this.#parts.length === 0 && this.#pending.length === 0 && views.length <= 1) {
      // A whole message in one packet: straight from guest memory.
      const v = views.length === 1 ? views[0] : new Uint8Array(0);
      if (this.#sendMessage(v)) {
        this.events.forwarded(len);
        return true;
      }
      this.#pending.push(v.slice());
      this.#armWrite();
      return true;
    }
    for (const v of views) this.#parts.push(v.slice());
    this.#partsBytes += len;
    if (!ends) return true;
    const msg = new Uint8Array(this.#partsBytes);
    let off = 0;
    for (const p of this.#parts) {
      msg.set(p, off);
      off += p.length;
    }
    this.#parts = [];
    this.#partsBytes = 0;
    this.#pending.push(msg);
    this.#flush();
    return true;
  }

  // Non-blocking send of stream bytes: the count taken, 0 when the socket is full.
  #send(v: Uint8Array): number {
    if (v.length === 0) return 0;
    try {
      return sendmsg(this.#fd, v, [], MSG_NOSIGNAL | MSG_DONTWAIT);
    } catch (err) {
      if (errnoOf(err) === Errno.EAGAIN) return 0;
      throw err;
    }
  }

  // One whole seqpacket message: true when sent, false when the socket is full.
  #sendMessage(v: Uint8Array): boolean {
    try {
      sendmsg(this.#fd, v, [], MSG_NOSIGNAL | MSG_DONTWAIT);
      return true;
    } catch (err) {
      if (errnoOf(err) === Errno.EAGAIN) return false;
      throw err;
    }
  }

  // Send what is held, oldest first; watch for room when the socket fills up.
  #flush(): void {
    let sent = 0;
    try {
      while (this.#pending.length > 0) {
        const head = this.#pending[0];
        if (this.#seqpacket) {
          if (!this.#sendMessage(head)) break;
          sent += head.length;
          this.#pending.shift();
          continue;
        }
        const rest = head.subarray(this.#pendingHead);
        const n = this.#send(rest);
        sent += n;
        if (n < rest.length) {
          this.#pendingHead += n;
          break;
        }
        this.#pending.shift();
        this.#pendingHead = 0;
      }
    } catch (err) {
      if (sent > 0) this.events.forwarded(sent);
      this.#fail(err);
      return;
    }
    if (sent > 0) this.events.forwarded(sent);
    if (this.#closed) return;
    if (this.#pending.length > 0) {
      this.#armWrite();
      return;
    }
    this.#disarmWrite();
    if (this.#shutWrite) this.#shutdownWrite();
    if (this.#finishing) this.#release(true);
  }

  // The watch stays while bytes are held: a socket that is still full after a flush does not
  // report POLLOUT again until it has room, so nothing spins, and no re-arm is paid per flush.
  #armWrite(): void {
    if (this.#writeWatch !== undefined || this.#closed) return;
    this.#writeWatch = this.#watcher.watch(this.#fd, () => this.#flush(), POLLOUT);
  }

  #disarmWrite(): void {
    this.#writeWatch?.close();
    this.#writeWatch = undefined;
  }

  endWrite(): void {
    this.#shutWrite = true;
    // Bytes of this pass go first: `flush` shuts the writing side once they are out.
    if (this.#pending.length === 0 && this.#batch.length === 0 && !this.#closed) {
      this.#shutdownWrite();
    }
  }

  #shutdownWrite(): void {
    try {
      shutdown(this.#fd, SHUT_WR);
    } catch { /* the peer is gone: its reads ended already */ }
  }

  endRead(): void {
    if (this.#closed) return;
    this.#readWatch?.close();
    this.#readWatch = undefined;
    try {
      shutdown(this.#fd, SHUT_RD);
    } catch { /* already gone */ }
  }

  // ----- host → guest ------------------------------------------------------------------------

  read(views: readonly Uint8Array[], max: number, limit: number): number {
    this.readFlags = 0;
    if (this.#closed) return READ_FAILED;
    try {
      return this.#seqpacket ? this.#readMessage(views, max, limit) : this.#readStream(views, max);
    } catch (err) {
      this.#fail(err);
      return READ_FAILED;
    }
  }

  #readStream(views: readonly Uint8Array[], max: number): number {
    if (this.#prefix !== undefined) return this.#readPrefix(views, max);
    if (this.#drained) return READ_AGAIN;
    // The device's views cover exactly `max` bytes: one recvmsg fills them all (for mapped
    // guest memory; buffer by buffer otherwise).
    const got = recvv(this.#fd, views, MSG_DONTWAIT);
    if (got < 0) return READ_AGAIN;
    if (got === 0) {
      this.#noteHangup();
      return 0;
    }
    if (got < max) this.#drained = true;
    return got;
  }

  // Bytes that came after the CONNECT line, before anything from the socket.
  #readPrefix(views: readonly Uint8Array[], max: number): number {
    const prefix = this.#prefix!;
    let n = 0;
    for (const v of views) {
      const take = Math.min(v.length, max - n, prefix.length - n);
      if (take <= 0) break;
      v.set(prefix.subarray(n, n + take));
      n += take;
    }
    this.#prefix = n === prefix.length ? undefined : prefix.subarray(n);
    return n;
  }

  #readMessage(views: readonly Uint8Array[], max: number, limit: number): number {
    if (this.#inbox === undefined) {
      let size: number;
      try {
        // The whole message's length, without taking it (MSG_TRUNC reports the real size).
        size = recvmsg(this.#fd, peekScratch, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT).bytes;
      } catch (err) {
        if (errnoOf(err) === Errno.EAGAIN) return READ_AGAIN;
        throw err;
      }
      if (size === 0) {
        // End of stream (an empty message reads the same and is taken as one).
        this.#noteHangup();
        return 0;
      }
      if (size > limit) return READ_TOO_BIG;
      const buf = new Uint8Array(size);
      const got = recvmsg(this.#fd, buf, 0, MSG_DONTWAIT).bytes;
      this.#inbox = buf;
      this.#inboxLen = got;
      this.#inboxOff = 0;
    }
    const inbox = this.#inbox;
    let n = 0;
    for (const v of views) {
      if (n >= max) break;
      const take = Math.min(v.length, max - n, this.#inboxLen - this.#inboxOff);
      if (take <= 0) break;
      v.set(inbox.subarray(this.#inboxOff, this.#inboxOff + take));
      this.#inboxOff += take;
      n += take;
    }
    if (this.#inboxOff >= this.#inboxLen) {
      this.#inbox = undefined;
      this.readFlags = VIRTIO_VSOCK_SEQ_EOM;
    }
    return n;
  }

  // At end of stream: did the peer go away entirely (POLLHUP), or only stop writing?
  #noteHangup(): void {
    try {
      const [revents] = poll([{ fd: this.#fd, events: POLLIN }], 0);
      this.hungUp = (revents & POLLHUP) !== 0;
    } catch {
      this.hungUp = true;
    }
  }

  armRead(): void {
    if (this.#readWatch !== undefined || this.#closed) return;
    if (this.#prefix !== undefined || this.#inbox !== undefined) {
      queueMicrotask(() => this.events.readable());
      return;
    }
    this.#readWatch = this.#watcher.watch(this.#fd, () => {
      this.#readWatch?.close();
      this.#readWatch = undefined;
      this.#drained = false;
      this.events.readable();
    }, POLLIN);
  }

  connected(hostPort: number): void {
    if (this.#closed) return;
    const line = encoder.encode(`OK ${hostPort}\n`);
    try {
      // A fresh socket has room for a dozen bytes; anything else means it is broken.
      if (sendmsg(this.#fd, line, [], MSG_NOSIGNAL | MSG_DONTWAIT) !== line.length) {
        throw new Error("short write of the OK line");
      }
    } catch (err) {
      queueMicrotask(() => this.#fail(err));
    }
  }

  // ----- end ---------------------------------------------------------------------------------

  finish(): void {
    if (this.#closed) return;
    // The views of this pass are handed back to the guest after this: send or copy them now.
    this.flush();
    if (this.#closed) return;
    this.#finishing = true;
    this.#shutWrite = true;
    this.#readWatch?.close();
    this.#readWatch = undefined;
    if (this.#pending.length === 0) {
      this.#release(true);
      return;
    }
    this.#lingerTimer = setTimeout(() => this.#release(true), LINGER_TIMEOUT_MS);
    this.#armWrite();
  }

  close(_why: string): void {
    this.#release(false);
  }

  #fail(err: unknown): void {
    if (this.#closed) return;
    const finishing = this.#finishing;
    this.#release(finishing);
    if (!finishing) this.events.failed(errnoOf(err) === Errno.ECONNRESET ? "reset" : String(err));
  }

  #release(finished: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#lingerTimer !== undefined) clearTimeout(this.#lingerTimer);
    this.#lingerTimer = undefined;
    this.#readWatch?.close();
    this.#writeWatch?.close();
    this.#readWatch = undefined;
    this.#writeWatch = undefined;
    this.#pending.length = 0;
    this.#dropBatch();
    this.#parts = [];
    this.#inbox = undefined;
    try {
      close(this.#fd);
    } catch { /* already closed */ }
    if (finished) this.events.finished();
  }
}

// A host socket accepted on the device's socket, waiting for its CONNECT line.
interface PendingHost {
  fd: number;
  watch: Watch | undefined;
  timer: ReturnType<typeof setTimeout>;
  line: Uint8Array;
  len: number;
}

/**
 * The device's Unix socket and the sockets of its guest → host connections.
 */
export class UnixMuxer {
  /** The socket host programs connect to. */
  readonly path: string;
  readonly #hooks: UnixMuxerHooks;
  readonly #watcher: FdWatcher;
  #listenFd: number;
  #listenWatch: Watch | undefined;
  readonly #pending = new Set<PendingHost>();
  #closed = false;

  /**
   * Bind and listen on `path` (an existing socket file there is replaced).
   * @param path The socket path.
   * @param hooks The device's side.
   * @throws {SysError} When the socket cannot be bound.
   */
  constructor(path: string, hooks: UnixMuxerHooks) {
    this.path = path;
    this.#hooks = hooks;
    this.#watcher = new FdWatcher({ onError: (e) => hooks.onError(e) });
    if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK);
    try {
      bind(fd, path);
      listen(fd, 128);
    } catch (err) {
      close(fd);
      throw err;
    }
    this.#listenFd = fd;
    this.#listenWatch = this.#watcher.watch(fd, () => this.#accept());
  }

  /**
   * A guest connection to host port `port`: connect to `<path>_<port>`.
   * @param port The host port.
   * @param type The socket type (the listener there must be of the same type).
   * @returns The endpoint, or `undefined` when nothing accepts (an RST for the guest).
   */
  connectPort(port: number, type: VsockSocketType): VsockEndpoint | undefined {
    if (this.#closed) return undefined;
    const kind = type === "seqpacket" ? SOCK_SEQPACKET : SOCK_STREAM;
    let fd: number;
    try {
      fd = socket(AF_UNIX, kind | SOCK_CLOEXEC | SOCK_NONBLOCK);
    } catch (err) {
      this.#hooks.onError(err);
      return undefined;
    }
    try {
      // A Unix connect does not wait: it succeeds, or fails (ENOENT, ECONNREFUSED, EAGAIN
      // for a full backlog, EPROTOTYPE for the other socket type).
      connect(fd, `${this.path}_${port}`);
    } catch {
      close(fd);
      return undefined;
    }
    this.#tune(fd);
    return new FdEndpoint(fd, type, this.#watcher);
  }

  #accept(): void {
    for (;;) {
      let fd: number;
      try {
        fd = accept(this.#listenFd, SOCK_CLOEXEC | SOCK_NONBLOCK);
      } catch (err) {
        const e = errnoOf(err);
        if (e !== Errno.EAGAIN && e !== Errno.ECONNABORTED) this.#hooks.onError(err);
        return;
      }
      if (this.#pending.size >= CONNECT_PENDING_MAX) {
        close(fd);
        continue;
      }
      const p: PendingHost = {
        fd,
        watch: undefined,
        timer: setTimeout(() => this.#drop(p), CONNECT_LINE_TIMEOUT_MS),
        line: new Uint8Array(CONNECT_LINE_MAX),
        len: 0,
      };
      this.#pending.add(p);
      p.watch = this.#watcher.watch(fd, () => this.#readLine(p));
    }
  }

  #tune(fd: number): void {
    try {
      setSocketOption(fd, SOL_SOCKET, SO_SNDBUF, Math.min(this.#hooks.sendBuffer, 1 << 30));
    } catch { /* keep the default */ }
  }

  #drop(p: PendingHost): void {
    if (!this.#pending.delete(p)) return;
    clearTimeout(p.timer);
    p.watch?.close();
    try {
      close(p.fd);
    } catch { /* already closed */ }
  }

  // Read what the host program wrote until the end of its CONNECT line; bytes after it are
  // the connection's first bytes.
  #readLine(p: PendingHost): void {
    let got: number;
    try {
      got = recvmsg(p.fd, p.line.subarray(p.len), 0, MSG_DONTWAIT).bytes;
    } catch (err) {
      if (errnoOf(err) !== Errno.EAGAIN) this.#drop(p);
      return;
    }
    if (got === 0) {
      this.#drop(p);
      return;
    }
    p.len += got;
    const nl = p.line.subarray(0, p.len).indexOf(10);
    if (nl < 0) {
      if (p.len === p.line.length) this.#drop(p);
      return;
    }
    const port = parseConnectLine(new TextDecoder().decode(p.line.subarray(0, nl)));
    if (port === undefined) {
      this.#drop(p);
      return;
    }
    this.#pending.delete(p);
    clearTimeout(p.timer);
    p.watch?.close();
    this.#tune(p.fd);
    const endpoint = new FdEndpoint(
      p.fd,
      "stream",
      this.#watcher,
      p.line.slice(nl + 1, p.len),
    );
    const result = this.#hooks.openFromHost(port, endpoint);
    if (typeof result === "string") endpoint.close(result);
  }

  /** Stop listening, close the waiting host sockets and remove the socket file. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of [...this.#pending]) this.#drop(p);
    this.#listenWatch?.close();
    try {
      close(this.#listenFd);
    } catch { /* already closed */ }
    this.#listenFd = -1;
    void this.#watcher.stop();
    try {
      if (existsSync(this.path) && lstatSync(this.path).isSocket()) unlinkSync(this.path);
    } catch { /* already gone */ }
  }
}
