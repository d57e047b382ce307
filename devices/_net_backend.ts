/**
 * Where a {@linkcode NetDevice}'s frames go: the {@linkcode NetBackend} interface, and the two
 * backends that need no operating system: {@linkcode MemoryNetBackend} (tests inject and
 * collect frames) and {@linkcode LoopbackNetBackend} (every frame sent comes back).
 *
 * At this boundary a frame is always a 12-byte `virtio_net_hdr` (the virtio 1.x layout;
 * `num_buffers` is ignored) followed by the Ethernet frame: what a tap device with
 * `IFF_VNET_HDR` reads and writes. A backend that carries no header (a raw socket) strips it
 * on send and adds a zero one on receive, and reports no offloads.
 *
 * @module
 */

import { NET_HDR_SIZE, NET_MAX_GSO_FRAME } from "./_net_header.ts";

/** Largest frame at the backend boundary: header plus the largest segmented frame. */
export const NET_MAX_BACKEND_FRAME: number = NET_HDR_SIZE + NET_MAX_GSO_FRAME;

/** Offloads a backend can carry, or a driver accepts. */
export interface NetOffloads {
  /** Partial checksums (NEEDS_CSUM). */
  csum: boolean;
  /** TCPv4 segmentation. */
  tso4: boolean;
  /** TCPv6 segmentation. */
  tso6: boolean;
  /** TCP segmentation with ECN. */
  ecn: boolean;
  /** UDP fragmentation. */
  ufo: boolean;
}

/** No offloads. */
export const NO_OFFLOADS: Readonly<NetOffloads> = Object.freeze({
  csum: false,
  tso4: false,
  tso6: false,
  ecn: false,
  ufo: false,
});

/** Every offload. */
export const ALL_OFFLOADS: Readonly<NetOffloads> = Object.freeze({
  csum: true,
  tso4: true,
  tso6: true,
  ecn: true,
  ufo: true,
});

/**
 * What {@linkcode NetBackend.send} did with a frame: `sent`; `full` (nothing was taken: offer
 * it again after {@linkcode NetBackendEvents.writable}); or `dropped` (taken and thrown away,
 * e.g. no peer: the device counts it).
 */
export type NetSendResult = "sent" | "full" | "dropped";

/** How a backend tells the device about its queues. */
export interface NetBackendEvents {
  /**
   * Frames are waiting on backend queue `queue`: the device calls `receive` until it returns
   * -1 or it has done a pass's worth. Level-triggered: called again while frames remain.
   */
  readable(queue: number): void;
  /** Backend queue `queue` can take frames again after a `send` answered `full`. */
  writable(queue: number): void;
}

/**
 * A network backend: the other end of the device's virtual cable. All methods are
 * synchronous and called on the event loop; readiness is reported through the events given
 * to `start` (never by busy polling).
 */
export interface NetBackend {
  /** Independent queues (1, or N for a multi-queue tap: queue pair i uses queue i mod N). */
  readonly queuePairs: number;
  /** Offloads it carries: the device offers CSUM, HOST_* and GUEST_* only within these. */
  readonly offloads: Readonly<NetOffloads>;
  /**
   * Start reporting readiness (the device was activated). Frames that arrived before may be
   * delivered or dropped.
   * @param events Where readiness goes.
   */
  start(events: NetBackendEvents): void;
  /** Stop reporting readiness (the device was reset); frames keep arriving and may drop. */
  stop(): void;
  /**
   * Take one frame (header and frame) into `buf`, without waiting.
   * @param queue Backend queue.
   * @param buf Where it goes; {@linkcode NET_MAX_BACKEND_FRAME} bytes hold any frame.
   * @returns Its length (more than `buf.length` when it did not fit and was cut: the device
   *   drops it), or -1 when none is waiting.
   * @throws {Error} When the backend failed (the device counts a drop and goes on).
   */
  receive(queue: number, buf: Uint8Array): number;
  /**
   * Send one frame: `parts` are the 12-byte header, then the frame in pieces. The views may
   * alias guest memory: they must be consumed during the call, never kept.
   * @param queue Backend queue.
   * @param parts Header, then frame.
   * @returns What happened to it.
   * @throws {Error} When the backend failed (the device counts a drop and goes on).
   */
  send(queue: number, parts: readonly Uint8Array[]): NetSendResult;
  /**
   * The driver's receive offloads changed (negotiation, CTRL_GUEST_OFFLOADS): from now on
   * deliver only frames it accepts, where the backend can (a tap's TUNSETOFFLOAD); the device
   * completes checksums and drops what is still left over.
   * @param offloads What the driver accepts.
   */
  setGuestOffloads(offloads: Readonly<NetOffloads>): void;
  /** Release everything; the backend cannot be used afterwards. */
  close(): void;
}

function checkQueue(queue: number, pairs: number): void {
  if (!Number.isInteger(queue) || queue < 0 || queue >= pairs) {
    throw new RangeError(`No backend queue ${queue}`);
  }
}

function gather(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Options of {@linkcode MemoryNetBackend}. */
export interface MemoryNetBackendOptions {
  /** Queues (default 1). */
  queuePairs?: number;
  /** Offloads it claims to carry (default all). */
  offloads?: Partial<NetOffloads>;
  /**
   * Frames `send` takes before it answers `full` (default unlimited); `takeSent` makes room
   * and reports the queue writable.
   */
  sendCapacity?: number;
}

/** A frame a {@linkcode MemoryNetBackend} was sent. */
export interface SentFrame {
  /** Backend queue. */
  queue: number;
  /** Header and frame, copied. */
  bytes: Uint8Array;
}

/**
 * A backend in memory, for tests: `inject` frames for the device to receive, read what it
 * sent from `sent`, and make `send` answer `full` with `sendCapacity`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MemoryNetBackend } from "./_net_backend.ts";
 * const b = new MemoryNetBackend({ sendCapacity: 1 });
 * assert.equal(b.send(0, [new Uint8Array(12), new Uint8Array(60)]), "sent");
 * assert.equal(b.send(0, [new Uint8Array(12), new Uint8Array(60)]), "full");
 * assert.equal(b.takeSent().length, 1);
 * ```
 */
export class MemoryNetBackend implements NetBackend {
  /** Queues. */
  readonly queuePairs: number;
  /** Offloads it claims to carry. */
  readonly offloads: Readonly<NetOffloads>;
  /** Frames sent and not yet taken. */
  readonly sent: SentFrame[] = [];
  /** The guest offloads last set. */
  guestOffloads: Readonly<NetOffloads> = NO_OFFLOADS;
  /** Whether `start` was called without `stop` since. */
  started = false;
  readonly #capacity: number;
  readonly #inbox: Uint8Array[][];
  readonly #full: boolean[];
  #events: NetBackendEvents | undefined;
  #pumping = false;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Create it.
   * @param options Queues, offloads and send capacity.
   * @throws {RangeError} For a queue count below 1.
   */
  constructor(options: MemoryNetBackendOptions = {}) {
    const pairs = options.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1) throw new RangeError(`Bad queue count ${pairs}`);
    this.queuePairs = pairs;
    this.offloads = Object.freeze({ ...ALL_OFFLOADS, ...options.offloads });
    this.#capacity = options.sendCapacity ?? Infinity;
    this.#inbox = Array.from({ length: pairs }, () => []);
    this.#full = new Array(pairs).fill(false);
  }

  /**
   * Queue a frame for the device to receive (header and frame); the device hears of it at
   * once when started.
   * @param bytes Header, then frame (copied).
   * @param queue Backend queue (default 0).
   */
  inject(bytes: Uint8Array, queue = 0): void {
    checkQueue(queue, this.queuePairs);
    this.#inbox[queue].push(bytes.slice());
    this.#pump();
  }

  /** Frames injected and not yet received, per queue. */
  pending(queue = 0): number {
    return this.#inbox[queue]?.length ?? 0;
  }

  /**
   * Take the frames sent so far; a queue that answered `full` is reported writable.
   * @returns The frames, oldest first.
   */
  takeSent(): SentFrame[] {
    const out = this.sent.splice(0);
    for (let q = 0; q < this.queuePairs; q++) {
      if (this.#full[q]) {
        this.#full[q] = false;
        this.#events?.writable(q);
      }
    }
    return out;
  }

  /**
   * Start reporting readiness.
   * @param events Where readiness goes.
   */
  start(events: NetBackendEvents): void {
    this.#events = events;
    this.started = true;
    this.#pump();
  }

  /** Stop reporting readiness. */
  stop(): void {
    this.#events = undefined;
    this.started = false;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Take one injected frame.
   * @param queue Backend queue.
   * @param buf Where it goes.
   * @returns Its length, or -1.
   */
  receive(queue: number, buf: Uint8Array): number {
    checkQueue(queue, this.queuePairs);
    const frame = this.#inbox[queue].shift();
    if (frame === undefined) return -1;
    buf.set(frame.subarray(0, Math.min(frame.length, buf.length)));
    return frame.length;
  }

  /**
   * Keep a copy of the frame, or answer `full` at capacity.
   * @param queue Backend queue.
   * @param parts Header, then frame.
   * @returns `sent` or `full`.
   */
  send(queue: number, parts: readonly Uint8Array[]): NetSendResult {
    checkQueue(queue, this.queuePairs);
    if (this.sent.length >= this.#capacity) {
      this.#full[queue] = true;
      return "full";
    }
    this.sent.push({ queue, bytes: gather(parts) });
    return "sent";
  }

  /**
   * Record the guest offloads.
   * @param offloads What the driver accepts.
   */
  setGuestOffloads(offloads: Readonly<NetOffloads>): void {
    this.guestOffloads = { ...offloads };
  }

  /** Stop; nothing else to release. */
  close(): void {
    this.stop();
  }

  // Level-triggered like a descriptor: report every queue with frames until the device takes
  // none in a round, and come back on a later turn for frames it left.
  #pump(): void {
    if (this.#pumping || this.#events === undefined) return;
    this.#pumping = true;
    try {
      for (let q = 0; q < this.queuePairs; q++) {
        if (this.#inbox[q].length === 0) continue;
        const before = this.#inbox[q].length;
        this.#events?.readable(q);
        if (this.#inbox[q].length > 0 && this.#inbox[q].length < before) this.#later();
      }
    } finally {
      this.#pumping = false;
    }
  }

  #later(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#pump();
    }, 0);
  }
}

/** Options of {@linkcode LoopbackNetBackend}. */
export interface LoopbackNetBackendOptions {
  /** Queues (default 1); a frame comes back on the queue it was sent on. */
  queuePairs?: number;
  /** Frames in flight per queue before `send` answers `full` (default 256). */
  capacity?: number;
}

/**
 * Every frame sent comes back, on the same queue, with its header: a cable plugged into
 * itself. For benchmarks (the device path both ways with no system calls) and the CLI's
 * `--loopback`. Frames are copied into a fixed ring per queue; a full ring answers `full`.
 */
export class LoopbackNetBackend implements NetBackend {
  /** Queues. */
  readonly queuePairs: number;
  /** Everything: the frames only go round. */
  readonly offloads: Readonly<NetOffloads> = ALL_OFFLOADS;
  readonly #capacity: number;
  readonly #slots: Uint8Array[][];
  readonly #lens: Int32Array[];
  readonly #head: Int32Array;
  readonly #count: Int32Array;
  readonly #full: Uint8Array;
  #events: NetBackendEvents | undefined;
  #signalling = false;

  /**
   * Create it.
   * @param options Queues and ring size.
   * @throws {RangeError} For a queue count or capacity below 1.
   */
  constructor(options: LoopbackNetBackendOptions = {}) {
    const pairs = options.queuePairs ?? 1;
    const capacity = options.capacity ?? 256;
    if (!Number.isInteger(pairs) || pairs < 1) throw new RangeError(`Bad queue count ${pairs}`);
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Bad capacity ${capacity}`);
    }
    this.queuePairs = pairs;
    this.#capacity = capacity;
    // Slots grow to the largest frame they held, then stay: no allocation in steady state.
    this.#slots = Array.from({ length: pairs }, () => new Array(capacity).fill(new Uint8Array(0)));
    this.#lens = Array.from({ length: pairs }, () => new Int32Array(capacity));
    this.#head = new Int32Array(pairs);
    this.#count = new Int32Array(pairs);
    this.#full = new Uint8Array(pairs);
  }

  /**
   * Start reporting readiness.
   * @param events Where readiness goes.
   */
  start(events: NetBackendEvents): void {
    this.#events = events;
    for (let q = 0; q < this.queuePairs; q++) if (this.#count[q] > 0) events.readable(q);
  }

  /** Stop reporting readiness. */
  stop(): void {
    this.#events = undefined;
  }

  /**
   * Take the oldest frame of `queue`.
   * @param queue Backend queue.
   * @param buf Where it goes.
   * @returns Its length, or -1.
   */
  receive(queue: number, buf: Uint8Array): number {
    checkQueue(queue, this.queuePairs);
    if (this.#count[queue] === 0) return -1;
    const i = this.#head[queue];
    const len = this.#lens[queue][i];
    buf.set(this.#slots[queue][i].subarray(0, Math.min(len, buf.length)));
    this.#head[queue] = (i + 1) % this.#capacity;
    this.#count[queue]--;
    if (this.#full[queue] !== 0) {
      this.#full[queue] = 0;
      this.#events?.writable(queue);
    }
    return len;
  }

  /**
   * Copy the frame into the ring and report it readable.
   * @param queue Backend queue.
   * @param parts Header, then frame.
   * @returns `sent`, or `full` when the ring is full.
   */
  send(queue: number, parts: readonly Uint8Array[]): NetSendResult {
    checkQueue(queue, this.queuePairs);
    if (this.#count[queue] >= this.#capacity) {
      this.#full[queue] = 1;
      return "full";
    }
    let n = 0;
    for (let i = 0; i < parts.length; i++) n += parts[i].length;
    const at = (this.#head[queue] + this.#count[queue]) % this.#capacity;
    let slot = this.#slots[queue][at];
    if (slot.length < n) slot = this.#slots[queue][at] = new Uint8Array(Math.max(n, 2048));
    let off = 0;
    for (let i = 0; i < parts.length; i++) {
      slot.set(parts[i], off);
      off += parts[i].length;
    }
    this.#lens[queue][at] = n;
    this.#count[queue]++;
    // Report at once (a poll-mode backend never yields to let a later callback run), but
    // not from inside the device's own receive pass.
    if (!this.#signalling && this.#events !== undefined) {
      this.#signalling = true;
      try {
        this.#events.readable(queue);
      } finally {
        this.#signalling = false;
      }
    }
    return "sent";
  }

  /** Nothing to tell: frames keep the header they were sent with. */
  setGuestOffloads(): void {}

  /** Stop. */
  close(): void {
    this.stop();
  }
}
