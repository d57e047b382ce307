/**
 * The host side of one vsock connection, as the device sees it: an "endpoint". The device
 * moves guest bytes into it (`write`), pulls host bytes out of it straight into guest receive
 * buffers (`read`), and learns from it when data arrives or bytes were consumed. Two kinds
 * exist: a Unix socket (`_vsock_unix.ts`) and the in-process Web Streams pair of the
 * TypeScript API (here).
 *
 * Bounded by construction: an endpoint holds at most what the guest's credit lets it send
 * (the device's `buf_alloc`) in one direction and one chunk the host program wrote in the
 * other, until the device has room in the guest to put it.
 *
 * @module
 */

import { VIRTIO_VSOCK_SEQ_EOM } from "./_vsock_packet.ts";

/** `read` result: nothing to read now; `armRead` asks to be told when there is. */
export const READ_AGAIN = -1;
/** `read` result: the host side failed; the connection must be reset. */
export const READ_FAILED = -2;
/** `read` result (seqpacket): the next message is larger than the limit the device gave. */
export const READ_TOO_BIG = -3;

/** What an endpoint tells its connection. Calls may come from inside `write` and `read`. */
export interface VsockEndpointEvents {
  /** `read` has something now (data or end of stream), after an `armRead`. */
  readable(): void;
  /** `n` bytes of guest data were consumed by the host side (credit for the guest). */
  forwarded(n: number): void;
  /** The host side failed or was reset; `why` names the reason for the counters. */
  failed(why: string): void;
  /**
   * Once `finish` was called: every byte held has been delivered (or given up) and the
   * endpoint released its resources.
   */
  finished(): void;
}

/** The host side of a connection. */
export interface VsockEndpoint {
  /** Set by the device before any other call. */
  events: VsockEndpointEvents;
  /**
   * Guest → host: take `len` bytes from `views` (they alias guest memory and are valid only
   * during the call: copy what is kept). With seqpacket, `flags` carries
   * `VIRTIO_VSOCK_SEQ_EOM` / `EOR` of the packet.
   * @returns `false` when the host side is gone (the connection is reset).
   */
  write(views: readonly Uint8Array[], len: number, flags: number): boolean;
  /**
   * When present, `write` may keep the views it is given (without a copy) until `flush`, which
   * the device calls at the end of each tx pass, before it returns those chains to the driver:
   * the endpoint then moves a whole pass's bytes in one call, and copies only what the host
   * side did not take.
   */
  flush?(): void;
  /** The guest will send no more: deliver what is held, then end the host side's input. */
  endWrite(): void;
  /** The guest will receive no more: stop reading the host side. */
  endRead(): void;
  /**
   * Host → guest: fill at most `max` bytes into `views` (which cover at least `max` bytes).
   * @param limit Seqpacket: the largest message the guest can take whole (its `buf_alloc`).
   * @returns Bytes read (> 0); 0 at the end of the host's stream; `READ_AGAIN`,
   *   `READ_FAILED` or `READ_TOO_BIG`.
   */
  read(views: readonly Uint8Array[], max: number, limit: number): number;
  /** Seqpacket: the bytes of the last `read` end a message / a record. */
  readonly readFlags: number;
  /** Whether the host side went away for good (not a half-close) at its end of stream. */
  readonly hungUp: boolean;
  /** Call `events.readable` once when `read` has something. */
  armRead(): void;
  /** A host-initiated connection was accepted by the guest. */
  connected(hostPort: number): void;
  /**
   * The connection left the device's table cleanly: deliver what is held, then release
   * everything and call `events.finished`.
   */
  finish(): void;
  /** Abort: release everything now; `why` is reported to the host program where it can be. */
  close(why: string): void;
}

/** A vsock connection's socket type. */
export type VsockSocketType = "stream" | "seqpacket";

/**
 * The connection was reset (by the guest, the device, or a transport reset) or refused: what
 * a socket would report as ECONNRESET or ECONNREFUSED.
 */
export class VsockConnectionError extends Error {
  /** `"ECONNRESET"` or `"ECONNREFUSED"`. */
  readonly code: "ECONNRESET" | "ECONNREFUSED";

  /**
   * Create it.
   * @param code The socket error it stands for.
   * @param message Details.
   */
  constructor(code: "ECONNRESET" | "ECONNREFUSED", message: string) {
    super(`${code}: ${message}`);
    this.name = "VsockConnectionError";
    this.code = code;
  }
}

/**
 * One vsock connection in the TypeScript API: a Web Streams duplex.
 *
 * - `readable` yields what the guest sent. For stream sockets chunk boundaries mean nothing;
 *   for seqpacket sockets each chunk is one message. It closes when the guest shuts down its
 *   sending side (or closes), and errors with a {@linkcode VsockConnectionError} on a reset.
 *   Credit is given back to the guest as chunks are read: a reader that stops reading stops
 *   the guest's sender, nothing piles up.
 * - `writable` sends to the guest. For seqpacket sockets each chunk is one message (at most
 *   the guest's receive buffer). A write resolves once its bytes are in the guest's receive
 *   buffers. `close()` shuts down the sending side (the guest reads end of stream);
 *   `abort()` resets the connection.
 */
export interface VsockConnection {
  /** What the guest sends. */
  readonly readable: ReadableStream<Uint8Array>;
  /** What goes to the guest. */
  readonly writable: WritableStream<Uint8Array>;
  /** The socket type. */
  readonly type: VsockSocketType;
  /** The guest's CID. */
  readonly guestCid: number;
  /** The guest's port. */
  readonly guestPort: number;
  /** The host's port (the listened port, or the one allocated for `connect`). */
  readonly hostPort: number;
  /** Resolves when the connection is gone, however it ended. */
  readonly closed: Promise<void>;
  /** Reset the connection now (RST to the guest); pending reads and writes fail. */
  reset(): void;
}

interface PendingWrite {
  chunk: Uint8Array;
  offset: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * The endpoint behind a {@linkcode VsockConnection}: guest data waits in a queue bounded by
 * the credit the device grants, and is counted as forwarded only when the reader takes it;
 * host data is the one chunk the writer is writing, read straight into guest buffers.
 */
export class StreamsEndpoint implements VsockEndpoint {
  events: VsockEndpointEvents = {
    readable() {},
    forwarded() {},
    failed() {},
    finished() {},
  };
  readonly connection: VsockConnection;
  readFlags = 0;
  hungUp = false;
  readonly #type: VsockSocketType;
  // Guest → host.
  readonly #queue: Uint8Array[] = [];
  #message: Uint8Array[] = [];
  #messageBytes = 0;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #pulling = false;
  #guestEnded = false;
  #readableDone = false;
  // Host → guest.
  #write: PendingWrite | undefined;
  #hostEnded = false;
  #armed = false;
  #closeResolve!: () => void;
  #connectWaiter: { resolve: (c: VsockConnection) => void; reject: (e: Error) => void } | undefined;
  #done = false;
  #finishing = false;
  #writableController: WritableStreamDefaultController | undefined;

  /**
   * Create it.
   * @param type The socket type.
   * @param ids The CID and ports of the connection.
   */
  constructor(
    type: VsockSocketType,
    ids: { guestCid: number; guestPort: number; hostPort: number },
  ) {
    this.#type = type;
    const readable = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#controller = c;
      },
      pull: () => {
        this.#pulling = true;
        this.#deliver();
      },
      cancel: () => {
        // The host program will read no more: what is queued is dropped but still counted as
        // consumed (the guest's credit comes back), and the guest is told not to send more.
        this.#readableDone = true;
        this.#pulling = false;
        this.#dropQueue();
      },
    }, { highWaterMark: 0 });
    const writable = new WritableStream<Uint8Array>({
      start: (c) => {
        this.#writableController = c;
      },
      write: (chunk) => this.#hostWrite(chunk),
      close: () => {
        this.#hostEnded = true;
        this.#wake();
      },
      abort: () => {
        if (!this.#done) this.events.failed("reset");
      },
    }, { highWaterMark: 1 });
    const closed = new Promise<void>((resolve) => (this.#closeResolve = resolve));
    this.connection = {
      readable,
      writable,
      type,
      guestCid: ids.guestCid,
      guestPort: ids.guestPort,
      hostPort: ids.hostPort,
      closed,
      reset: () => {
        if (!this.#done) this.events.failed("reset");
      },
    };
  }

  // -----------------------------------------------------------------------------------------
  // Guest → host

  write(views: readonly Uint8Array[], len: number, flags: number): boolean {
    if (this.#done) return false;
    const data = new Uint8Array(len);
    let off = 0;
    for (const v of views) {
      data.set(v, off);
      off += v.length;
    }
    if (this.#readableDone) {
      // Nobody reads any more: give the credit straight back.
      this.events.forwarded(len);
      return true;
    }
    if (this.#type === "seqpacket") {
      this.#message.push(data);
      this.#messageBytes += len;
      if ((flags & VIRTIO_VSOCK_SEQ_EOM) === 0) return true;
      const whole = this.#message.length === 1
        ? this.#message[0]
        : concat(this.#message, this.#messageBytes);
      this.#message = [];
      this.#messageBytes = 0;
      this.#queue.push(whole);
    } else if (len > 0) {
      this.#queue.push(data);
    }
    this.#deliver();
    return true;
  }

  endWrite(): void {
    this.#guestEnded = true;
    this.#deliver();
  }

  endRead(): void {
    // The guest receives no more: a write in progress fails, later ones too.
    this.#hostEnded = true;
    const w = this.#write;
    this.#write = undefined;
    w?.reject(new VsockConnectionError("ECONNRESET", "the guest shut down its receiving side"));
    this.#writableController?.error(
      new VsockConnectionError("ECONNRESET", "the guest shut down its receiving side"),
    );
  }

  #deliver(): void {
    if (this.#readableDone) return;
    while (this.#pulling && this.#queue.length > 0) {
      const chunk = this.#queue.shift()!;
      this.#pulling = false;
      this.#controller.enqueue(chunk);
      this.events.forwarded(chunk.length);
    }
    if (this.#queue.length === 0 && this.#guestEnded && !this.#readableDone) {
      this.#readableDone = true;
      try {
        this.#controller.close();
      } catch { /* already closed */ }
      this.#maybeFinished();
    }
  }

  #dropQueue(): void {
    let n = 0;
    for (const c of this.#queue) n += c.length;
    this.#queue.length = 0;
    n += this.#messageBytes;
    this.#message = [];
    this.#messageBytes = 0;
    if (n > 0) this.events.forwarded(n);
    this.#maybeFinished();
  }

  // -----------------------------------------------------------------------------------------
  // Host → guest

  #hostWrite(chunk: Uint8Array): Promise<void> {
    if (!(chunk instanceof Uint8Array)) {
      return Promise.reject(new TypeError("vsock writable takes Uint8Array chunks"));
    }
    if (this.#done || this.#hostEnded) {
      return Promise.reject(new VsockConnectionError("ECONNRESET", "the connection is closed"));
    }
    if (chunk.length === 0 && this.#type === "stream") return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#write = { chunk, offset: 0, resolve, reject };
      this.#wake();
    });
  }

  #wake(): void {
    if (!this.#armed) return;
    this.#armed = false;
    this.events.readable();
  }

  read(views: readonly Uint8Array[], max: number, limit: number): number {
    if (this.#done) return READ_FAILED;
    const w = this.#write;
    this.readFlags = 0;
    if (w === undefined) return this.#hostEnded ? 0 : READ_AGAIN;
    const chunk = w.chunk;
    if (this.#type === "seqpacket" && w.offset === 0 && chunk.length > limit) {
      this.#write = undefined;
      w.reject(new RangeError(`message of ${chunk.length} bytes exceeds the guest's ${limit}`));
      return READ_TOO_BIG;
    }
    let n = 0;
    for (const v of views) {
      if (n >= max) break;
      const take = Math.min(v.length, max - n, chunk.length - w.offset);
      if (take <= 0) break;
      v.set(chunk.subarray(w.offset, w.offset + take));
      w.offset += take;
      n += take;
    }
    if (w.offset >= chunk.length) {
      this.#write = undefined;
      if (this.#type === "seqpacket") this.readFlags = VIRTIO_VSOCK_SEQ_EOM;
      w.resolve();
    }
    return n;
  }

  armRead(): void {
    if (this.#write !== undefined || this.#hostEnded || this.#done) {
      this.events.readable();
      return;
    }
    this.#armed = true;
  }

  connected(_hostPort: number): void {
    const waiter = this.#connectWaiter;
    this.#connectWaiter = undefined;
    waiter?.resolve(this.connection);
  }

  /**
   * For a host-initiated connection: resolves with the connection once the guest accepted it,
   * rejects with `ECONNREFUSED` when it was refused or reset first.
   * @returns The connection.
   */
  whenConnected(): Promise<VsockConnection> {
    if (this.#done) {
      return Promise.reject(new VsockConnectionError("ECONNREFUSED", "the connection is closed"));
    }
    return new Promise((resolve, reject) => (this.#connectWaiter = { resolve, reject }));
  }

  /** Whether the host program is done in both directions (it read to the end, or cancelled). */
  get hostDone(): boolean {
    return this.#readableDone && this.#hostEnded && this.#write === undefined;
  }

  /** Whether the reader cancelled: the guest may be told it cannot send any more. */
  get readCancelled(): boolean {
    return this.#readableDone && !this.#guestEnded;
  }

  finish(): void {
    this.#finishing = true;
    this.#guestEnded = true;
    const w = this.#write;
    this.#write = undefined;
    w?.reject(new VsockConnectionError("ECONNRESET", "the connection is closed"));
    this.#deliver();
    this.#maybeFinished();
  }

  #maybeFinished(): void {
    if (!this.#finishing || this.#done) return;
    if (this.#queue.length > 0 && !this.#readableDone) return;
    this.#release(undefined);
    this.events.finished();
  }

  close(why: string): void {
    if (this.#done) return;
    this.#release(new VsockConnectionError("ECONNRESET", why), why);
  }

  #release(err: Error | undefined, why = "the connection is closed"): void {
    this.#done = true;
    this.#armed = false;
    this.#queue.length = 0;
    this.#message = [];
    const w = this.#write;
    this.#write = undefined;
    const e = err ?? new VsockConnectionError("ECONNRESET", "the connection is closed");
    w?.reject(e);
    if (!this.#readableDone) {
      this.#readableDone = true;
      try {
        if (err) this.#controller.error(err);
        else this.#controller.close();
      } catch { /* already closed */ }
    }
    try {
      this.#writableController?.error(e);
    } catch { /* already closed */ }
    const waiter = this.#connectWaiter;
    this.#connectWaiter = undefined;
    waiter?.reject(new VsockConnectionError("ECONNREFUSED", why));
    this.#closeResolve();
  }
}

function concat(parts: readonly Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
