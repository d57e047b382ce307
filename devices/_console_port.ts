/**
 * One console port as the host program sees it (a Web Streams duplex with open/close events)
 * and as the device drives it (`PortChannel`): guest output waiting for the host reader,
 * the host write waiting for guest receive buffers, and the port's state in the driver.
 *
 * Bounded by construction: guest output held for the reader is at most `bufferBytes` plus
 * one chain (the device stops taking the port's transmit chains once the limit is reached,
 * or drops the oldest bytes for an `overflow: "drop"` port); host data is the one chunk the
 * writer is writing, copied straight into guest buffers.
 *
 * @module
 */

import type { ChainWriter } from "../queue/chain.ts";
import { encodePortName } from "./_console_control.ts";

/** Default guest output held per port for the host reader (64 KiB). */
export const CONSOLE_BUFFER_BYTES = 64 * 1024;

/** What a port does with guest output once `bufferBytes` wait for the host reader. */
export type ConsoleOverflow =
  /**
   * Stop taking the port's transmit buffers: the guest's writer blocks (Linux: `write()` on
   * `/dev/vport*` sleeps, `poll()` reports it not writable) until the host reads. Nothing is
   * lost. Not for consoles: Linux spins on every console write until the device takes it.
   */
  | "block"
  /** Keep taking them and drop the oldest bytes held (a console's scrollback). Counted. */
  | "drop";

/** Options of one port. */
export interface ConsolePortOptions {
  /**
   * The port's name: the guest sees it in `/sys/class/virtio-ports/vportNpM/name` (and udev
   * makes `/dev/virtio-ports/NAME`). UTF-8, 1 to 255 bytes, no NUL. Needs MULTIPORT.
   */
  name?: string;
  /**
   * A console port: Linux makes it an `hvc` terminal (`/dev/hvc0` for the first), usable as
   * the kernel console with `console=hvc0`, instead of a `/dev/vport*` device. Port 0 is
   * always a console when the driver does not negotiate MULTIPORT. Default false.
   */
  console?: boolean;
  /**
   * Whether a host program is on the port from the start (the guest's reads block for data
   * instead of returning end of file, and its writes are accepted). Default true.
   */
  hostConnected?: boolean;
  /** Guest output held for the host reader before `overflow` applies (default 64 KiB). */
  bufferBytes?: number;
  /** Policy past `bufferBytes` (default `"drop"` for consoles, `"block"` for other ports). */
  overflow?: ConsoleOverflow;
  /** Initial columns of a console (0: unknown; the guest keeps its own idea). */
  cols?: number;
  /** Initial rows of a console (0: unknown). */
  rows?: number;
}

/** Counters of one port. */
export interface ConsolePortStats {
  /** Bytes the guest wrote (emergency writes included) that reached the port's buffer. */
  bytesFromGuest: number;
  /** Bytes of host writes put in guest receive buffers. */
  bytesToGuest: number;
  /**
   * Guest bytes dropped: the oldest ones of a full `"drop"` port, everything after the reader
   * cancelled, and the part of a transmit chain beyond the per-chain limit.
   */
  droppedBytes: number;
}

/** Why a port's streams ended. */
export type ConsoleErrorCode =
  /** The host removed the port (`ConsoleDevice.removePort`). */
  | "PortRemoved"
  /** The device was removed (`ConsoleDevice.remove`). */
  | "DeviceRemoved"
  /** The host closed or aborted the port's writable side. */
  | "HostClosed";

/** A host operation on a console port that can no longer succeed. */
export class ConsoleError extends Error {
  /** Why. */
  readonly code: ConsoleErrorCode;

  /**
   * Create it.
   * @param code Why.
   * @param message Details.
   */
  constructor(code: ConsoleErrorCode, message: string) {
    super(`${code}: ${message}`);
    this.name = "ConsoleError";
    this.code = code;
  }
}

/**
 * One port of a {@linkcode ConsoleDevice}, as the host program uses it.
 *
 * - `readable` yields what the guest writes (chunk boundaries mean nothing). It lives as long
 *   as the port, across guest opens and closes and device resets; it closes when the port is
 *   removed. A reader that stops reading stops the guest's writes (or, for an
 *   `overflow: "drop"` port such as a console, loses the oldest output); cancelling it drops
 *   everything the guest writes from then on.
 * - `writable` sends to the guest. A write resolves once its bytes are in the guest's receive
 *   buffers; bytes are only sent while the guest has the port open (a console is open as soon
 *   as the driver set it up), so a write waits for the guest to open it. A guest that closes
 *   a port drops what it has not read (Linux does), so protocols over a port should
 *   acknowledge. Closing or aborting it disconnects the host for good (`hostConnected`
 *   false: the guest reads end of file).
 * - Events `"open"` and `"close"` (plain `Event`s) tell when the guest opens or closes the
 *   port; they are dispatched on a microtask after the state changed, in order.
 */
export interface ConsolePort extends EventTarget {
  /** The port number (0 to `maxPorts - 1`). */
  readonly id: number;
  /** The name the guest sees, if any. */
  readonly name: string | undefined;
  /** Whether the port is announced to the driver as a console. */
  readonly console: boolean;
  /** What the guest writes. */
  readonly readable: ReadableStream<Uint8Array>;
  /** What goes to the guest. */
  readonly writable: WritableStream<Uint8Array>;
  /** Resolves when the port is gone (removed, or the device removed). */
  readonly closed: Promise<void>;
  /** Counters. */
  readonly stats: Readonly<ConsolePortStats>;
  /** Whether the guest has the port open now. */
  readonly guestOpen: boolean;
  /** Whether the driver set the port up (PORT_READY, or activation without MULTIPORT). */
  readonly ready: boolean;
  /** Whether the host side is connected, as the guest is told. */
  readonly hostConnected: boolean;
  /** The console size (0 × 0 when unknown). */
  readonly size: { readonly cols: number; readonly rows: number };
  /**
   * Tell the guest whether a host program is on the port (PORT_OPEN, with MULTIPORT). While
   * disconnected the guest reads end of file once it has read what was sent, and its writes
   * block.
   * @param connected The new state.
   */
  setHostConnected(connected: boolean): void;
  /**
   * Resize the console: port 0's size is in the configuration space (with a configuration
   * change interrupt when the driver did not negotiate MULTIPORT); with MULTIPORT a console
   * port gets a RESIZE control message. Linux applies it to the `hvc` terminal (`stty size`).
   * @param cols Columns (0 to 65535).
   * @param rows Rows (0 to 65535).
   * @throws {RangeError} For a size outside 0–65535.
   */
  resize(cols: number, rows: number): void;
}

/** What a port asks of its device. Calls only schedule work; none re-enters the device. */
export interface PortLink {
  /** A host write is waiting for guest buffers. */
  hostData(ch: PortChannel): void;
  /** The reader made room for guest output. */
  guestSpace(ch: PortChannel): void;
  /** `hostConnected` changed. */
  hostConnection(ch: PortChannel): void;
  /** The console size changed. */
  resized(ch: PortChannel): void;
}

interface PendingWrite {
  chunk: Uint8Array;
  offset: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function sizeField(what: string, v: number | undefined): number {
  const n = v ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > 0xffff) {
    throw new RangeError(`${what} must be an integer from 0 to 65535, got ${n}`);
  }
  return n;
}

/**
 * The device's side of a port: the state the device keeps for it in the driver (added,
 * ready, open) and the two directions of data. The host program sees it as a
 * {@linkcode ConsolePort}.
 */
export class PortChannel extends EventTarget implements ConsolePort {
  readonly id: number;
  readonly name: string | undefined;
  /** The name's UTF-8 bytes. */
  readonly nameBytes: Uint8Array | undefined;
  readonly console: boolean;
  /** Overflow policy. */
  readonly overflow: ConsoleOverflow;
  /** Guest output held before the policy applies. */
  readonly bufferBytes: number;
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  readonly closed: Promise<void>;
  readonly stats: ConsolePortStats = { bytesFromGuest: 0, bytesToGuest: 0, droppedBytes: 0 };
  /** The device. */
  link: PortLink;
  /** PORT_ADD was queued for the driver in this session. */
  added = false;
  /** The driver said PORT_READY (or activation without MULTIPORT). */
  ready = false;
  /** The device stopped taking this port's transmit chains: the reader must make room. */
  txBlocked = false;
  #guestOpen = false;
  #hostConnected: boolean;
  #cols: number;
  #rows: number;
  // Guest → host.
  readonly #chunks: Uint8Array[] = [];
  #buffered = 0;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #pulling = false;
  #readCancelled = false;
  #readableDone = false;
  // Host → guest.
  #write: PendingWrite | undefined;
  #writableController: WritableStreamDefaultController | undefined;
  #ended: ConsoleError | undefined;
  #closeResolve!: () => void;

  /**
   * Create it (the device does).
   * @param id Port number.
   * @param options The port's options.
   * @param link The device.
   * @throws {TypeError} For a bad name or overflow policy.
   * @throws {RangeError} For a bad name length, buffer size or console size.
   */
  constructor(id: number, options: ConsolePortOptions, link: PortLink) {
    super();
    this.id = id;
    if (options.name !== undefined) {
      this.nameBytes = encodePortName(options.name);
      this.name = options.name;
    }
    this.console = options.console === true;
    const overflow = options.overflow ?? (this.console ? "drop" : "block");
    if (overflow !== "block" && overflow !== "drop") {
      throw new TypeError(`overflow must be "block" or "drop", got ${String(overflow)}`);
    }
    this.overflow = overflow;
    const bufferBytes = options.bufferBytes ?? CONSOLE_BUFFER_BYTES;
    if (!Number.isSafeInteger(bufferBytes) || bufferBytes < 1) {
      throw new RangeError(`bufferBytes must be a positive integer, got ${bufferBytes}`);
    }
    this.bufferBytes = bufferBytes;
    this.#cols = sizeField("cols", options.cols);
    this.#rows = sizeField("rows", options.rows);
    this.#hostConnected = options.hostConnected ?? true;
    this.link = link;
    this.readable = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#controller = c;
      },
      pull: () => {
        this.#pulling = true;
        this.#deliver();
      },
      cancel: () => {
        this.#readCancelled = true;
        this.#readableDone = true;
        this.#pulling = false;
        this.stats.droppedBytes += this.#buffered;
        this.#chunks.length = 0;
        this.#buffered = 0;
        this.#roomMade();
      },
    }, { highWaterMark: 0 });
    this.writable = new WritableStream<Uint8Array>({
      start: (c) => {
        this.#writableController = c;
      },
      write: (chunk) => this.#hostWrite(chunk),
      close: () => this.#hostDone(),
      abort: () => this.#hostDone(),
    }, { highWaterMark: 1 });
    this.closed = new Promise<void>((resolve) => (this.#closeResolve = resolve));
  }

  get guestOpen(): boolean {
    return this.#guestOpen;
  }

  get hostConnected(): boolean {
    return this.#hostConnected;
  }

  get size(): { cols: number; rows: number } {
    return { cols: this.#cols, rows: this.#rows };
  }

  /** Columns. */
  get cols(): number {
    return this.#cols;
  }

  /** Rows. */
  get rows(): number {
    return this.#rows;
  }

  /** Whether the port was removed. */
  get ended(): boolean {
    return this.#ended !== undefined;
  }

  setHostConnected(connected: boolean): void {
    const v = connected === true;
    if (v === this.#hostConnected || this.#ended !== undefined) return;
    this.#hostConnected = v;
    this.link.hostConnection(this);
  }

  resize(cols: number, rows: number): void {
    const c = sizeField("cols", cols);
    const r = sizeField("rows", rows);
    if (this.#ended !== undefined) return;
    this.#cols = c;
    this.#rows = r;
    this.link.resized(this);
  }

  /**
   * The guest opened or closed the port: record it and dispatch `"open"` / `"close"` on a
   * microtask.
   * @param open The new state.
   */
  setGuestOpen(open: boolean): void {
    if (open === this.#guestOpen) return;
    this.#guestOpen = open;
    const type = open ? "open" : "close";
    queueMicrotask(() => this.dispatchEvent(new Event(type)));
  }

  // -------------------------------------------------------------------------------------------
  // Guest → host

  /**
   * Whether the device may take another transmit chain of this port now: a `"block"` port
   * takes none while `bufferBytes` or more wait for the reader.
   */
  get acceptsGuestData(): boolean {
    return this.overflow === "drop" || this.#readCancelled || this.#ended !== undefined ||
      this.#buffered < this.bufferBytes;
  }

  /** Guest bytes waiting for the reader. */
  get buffered(): number {
    return this.#buffered;
  }

  /**
   * Guest output for the reader. `bytes` is kept (not copied): the device hands over a fresh
   * array. Past `bufferBytes`, a `"drop"` port (or `dropOldest`) loses its oldest bytes.
   * @param bytes What the guest wrote.
   * @param dropOldest Apply the drop policy whatever the port's own (emergency writes).
   */
  fromGuest(bytes: Uint8Array, dropOldest = false): void {
    if (bytes.length === 0) return;
    if (this.#readCancelled || this.#ended !== undefined) {
      this.stats.droppedBytes += bytes.length;
      return;
    }
    this.#chunks.push(bytes);
    this.#buffered += bytes.length;
    this.stats.bytesFromGuest += bytes.length;
    if (this.overflow === "drop" || dropOldest) {
      while (this.#buffered > this.bufferBytes) {
        const first = this.#chunks[0];
        const excess = this.#buffered - this.bufferBytes;
        if (first.length <= excess) {
          this.#chunks.shift();
          this.#buffered -= first.length;
          this.stats.droppedBytes += first.length;
        } else {
          this.#chunks[0] = first.subarray(excess);
          this.#buffered -= excess;
          this.stats.droppedBytes += excess;
        }
      }
    }
    this.#deliver();
  }

  /**
   * Count guest bytes lost before they reached the buffer (a transmit chain past the
   * per-chain limit).
   * @param n Bytes.
   */
  dropped(n: number): void {
    this.stats.droppedBytes += n;
  }

  // Hand everything held to a pending read, as one chunk.
  #deliver(): void {
    if (this.#readableDone) return;
    if (this.#pulling && this.#chunks.length > 0) {
      let chunk: Uint8Array;
      if (this.#chunks.length === 1) {
        chunk = this.#chunks[0];
      } else {
        chunk = new Uint8Array(this.#buffered);
        let off = 0;
        for (const c of this.#chunks) {
          chunk.set(c, off);
          off += c.length;
        }
      }
      this.#chunks.length = 0;
      this.#buffered = 0;
      this.#pulling = false;
      this.#controller.enqueue(chunk);
      this.#roomMade();
    }
    if (this.#chunks.length === 0 && this.#ended !== undefined && !this.#readableDone) {
      this.#readableDone = true;
      try {
        this.#controller.close();
      } catch { /* already closed */ }
    }
  }

  #roomMade(): void {
    if (this.txBlocked) this.link.guestSpace(this);
  }

  // -------------------------------------------------------------------------------------------
  // Host → guest

  #hostWrite(chunk: Uint8Array): Promise<void> {
    if (!(chunk instanceof Uint8Array)) {
      return Promise.reject(new TypeError("a console port's writable takes Uint8Array chunks"));
    }
    if (this.#ended !== undefined) return Promise.reject(this.#ended);
    if (chunk.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#write = { chunk, offset: 0, resolve, reject };
      this.link.hostData(this);
    });
  }

  #hostDone(): void {
    const w = this.#write;
    this.#write = undefined;
    w?.reject(new ConsoleError("HostClosed", `port ${this.id}: the writable side was aborted`));
    this.setHostConnected(false);
  }

  /** Whether host bytes wait for guest buffers. */
  get hasHostData(): boolean {
    return this.#write !== undefined;
  }

  /**
   * Copy waiting host bytes into a receive chain; the write resolves once all its bytes are
   * in.
   * @param writer The chain's writable part.
   * @returns Bytes written.
   */
  fillGuest(writer: ChainWriter): number {
    const w = this.#write;
    if (w === undefined) return 0;
    const n = writer.write(w.chunk.subarray(w.offset));
    w.offset += n;
    this.stats.bytesToGuest += n;
    if (w.offset >= w.chunk.length) {
      this.#write = undefined;
      w.resolve();
    }
    return n;
  }

  // -------------------------------------------------------------------------------------------
  // End

  /**
   * The port is gone: the pending write and later ones fail with `why`, the readable closes
   * once what is held was read, `closed` resolves. A guest that had it open sees `"close"`.
   * @param why The code of the error writers get.
   * @param message Details.
   */
  end(why: ConsoleErrorCode, message: string): void {
    if (this.#ended !== undefined) return;
    const err = new ConsoleError(why, message);
    this.#ended = err;
    this.txBlocked = false;
    this.added = false;
    this.ready = false;
    this.setGuestOpen(false);
    const w = this.#write;
    this.#write = undefined;
    w?.reject(err);
    try {
      this.#writableController?.error(err);
    } catch { /* already errored */ }
    this.#deliver();
    this.#closeResolve();
  }
}
