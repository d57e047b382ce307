/**
 * Serving one virtqueue on a thread of its own: a Worker that maps guest memory itself (the
 * memory's file descriptors are process-wide), blocks in poll(2) on the queue's kick eventfd,
 * serves the ring with the device's handler ({@linkcode QueueThreadSpec}), signals the call
 * eventfd and blocks again — the shape of qemu-storage-daemon's iothreads, where the event
 * loop needs a second thread switch for every wake-up (a blocking-pool thread, or Bun's poll
 * Worker, then the event loop).
 *
 * The transport keeps everything else: control messages, activation, reset. It hands a started
 * queue to the thread with {@linkcode QueueThread.start} and takes it back with
 * {@linkcode QueueThread.stop}, which returns once the thread has finished its pass and
 * published where the ring stands; in between, the thread alone touches the ring. Every
 * change of what the ring is served with (memory table, call fd, ring addresses, reset) goes
 * stop, change, start, so no chain is served twice or lost across the handover.
 *
 * The thread is bounded like the event loop: one pass serves at most a budget of chains and
 * bytes ({@linkcode DEFAULT_SERVE_BUDGET}) and a stop request is honoured between passes; a kick
 * fd that hangs up or never drains stops being watched and is reported; errors reach the main
 * thread at a bounded rate; a thread that dies is reported, never silent.
 *
 * Handover protocol (one Int32 in a SharedArrayBuffer, `generation << 3 | phase`):
 * the main thread sets PENDING and posts the start; the Worker moves PENDING to RUNNING with
 * a compare-and-swap (a start the main thread took back meanwhile fails it and is ignored),
 * serves, and on STOPPING (set by the main thread, which then writes the wake eventfd)
 * publishes the ring's indices, sets IDLE and wakes the waiting main thread. A stop that finds
 * PENDING takes the start back with a compare-and-swap: the ring was never touched.
 *
 * @module
 */

import { EventFd, mappedAddressOf } from "../sys/mod.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import { type QueueThreadSpec, VirtioError, type VirtioErrorKind } from "../devices/device.ts";

export type { QueueThreadSpec };

/** How long {@linkcode QueueThread.stop} waits for the thread to finish its pass (ms). */
export const QUEUE_THREAD_STOP_TIMEOUT_MS = 10000;
/** The most error reports a queue thread has in flight to the main thread; more are counted. */
export const QUEUE_THREAD_MAX_PENDING_ERRORS = 32;

/** Phases of the handover word (low 3 bits). */
export const Phase = {
  /** Not serving; the main thread owns the ring. */
  IDLE: 0,
  /** A start was posted and not yet taken by the thread. */
  PENDING: 1,
  /** The thread serves the ring. */
  RUNNING: 2,
  /** The main thread asked the thread to stop. */
  STOPPING: 3,
  /** The thread died; the last published indices are all there is. */
  DEAD: 4,
} as const;

/** Int32 slots of the control SharedArrayBuffer. */
export const Ctl = {
  /** The handover word: `generation << 3 | phase`. */
  STATE: 0,
  /** The ring's next available position, published after every pass and at stop. */
  NEXT_AVAIL: 1,
  /** The ring's next used position, likewise. */
  NEXT_USED: 2,
  /** Error reports posted and not yet received by the main thread. */
  ERRORS_PENDING: 3,
  /** Times the thread woke from poll(2) (statistics). */
  WAKEUPS: 4,
  /** Passes served (statistics). */
  PASSES: 5,
} as const;
/** Int32 slots in the control buffer. */
export const CTL_SLOTS = 8;

/**
 * One region of guest memory as the thread maps it: a file descriptor of this process and an
 * offset (vhost-user memory, a memfd), or the address of a mapping this process already has
 * (the thread views it in place; it must stay mapped while the thread serves).
 */
export type QueueThreadRegion =
  | { guestAddr: number; size: number; fd: number; offset: number }
  | { guestAddr: number; size: number; address: bigint };

/** Everything the thread needs to serve one ring (structured-cloneable). */
export interface QueueThreadRing {
  /** Ring format. */
  format: "split" | "packed";
  /** Largest size the device offers. */
  maxSize: number;
  /** Size the driver chose. */
  size: number;
  /** Guest address of the descriptor area. */
  descTable: number;
  /** Guest address of the driver area. */
  availRing: number;
  /** Guest address of the device area. */
  usedRing: number;
  /** The negotiated features (EVENT_IDX, INDIRECT_DESC, IN_ORDER matter to the ring). */
  features: bigint;
  /** Where the ring stands: next available position. */
  nextAvail: number;
  /** Next used position. */
  nextUsed: number;
  /** Guest memory. */
  memory: QueueThreadRegion[];
  /** The kick eventfd (the thread blocks on it; it stays the caller's). */
  kickFd: number;
  /** The call eventfd, or -1 for none yet (the caller signals once when it gives one). */
  callFd: number;
  /** Poll mode: keep checking the ring this many µs after a pass that served (0: never). */
  pollUs: number;
}

/** Where a ring stands after {@linkcode QueueThread.stop}. */
export interface QueueThreadIndices {
  /** Next available position (the queue's `nextAvail` encoding). */
  nextAvail: number;
  /** Next used position. */
  nextUsed: number;
}

/** Options of {@linkcode QueueThread}. */
export interface QueueThreadOptions {
  /**
   * An error the thread reported (a refused request, a broken ring with `needsReset`). The
   * spec's own `onError` has been called already.
   */
  onError: (err: VirtioError) => void;
  /** The kick eventfd can no longer be watched: the thread serves it no more until restarted. */
  onKickBroken: (reason: string) => void;
  /** The thread died or stopped answering: it serves nothing any more; reset the device. */
  onCrash: (err: Error) => void;
}

/** Messages from the main thread to the Worker. */
export interface QueueThreadStart {
  /** Always "start". */
  type: "start";
  /** Generation of this start (the handover word's high bits). */
  gen: number;
  /** Queue index. */
  index: number;
  /** The ring. */
  ring: QueueThreadRing;
  /** The handler module. */
  module: string;
  /** The handler's parameters. */
  params: unknown;
}

/** Messages from the Worker to the main thread. */
export type QueueThreadMessage =
  | {
    type: "error";
    kind: VirtioErrorKind;
    message: string;
    needsReset: boolean;
    /** Errors not reported before this one (the bound of pending reports was reached). */
    dropped: number;
  }
  | { type: "kick"; reason: string }
  | { type: "crash"; message: string };

/**
 * What a queue thread needs to know about a ring the transport has validated and positioned.
 * @param q The queue (ready, validated, resumed).
 * @param features The negotiated features.
 * @param memory Guest memory as the thread maps it.
 * @param fds The kick fd and the call fd (-1 for none), and the poll-mode window.
 * @returns The ring description.
 */
export function describeRing(
  q: Virtqueue,
  features: bigint,
  memory: QueueThreadRegion[],
  fds: { kickFd: number; callFd: number; pollUs?: number },
): QueueThreadRing {
  return {
    format: q.format,
    maxSize: q.maxSize,
    size: q.size,
    descTable: q.descTable,
    availRing: q.availRing,
    usedRing: q.usedRing,
    features,
    nextAvail: q.nextAvail,
    nextUsed: q.nextUsed,
    memory,
    kickFd: fds.kickFd,
    callFd: fds.callFd,
    pollUs: fds.pollUs ?? 0,
  };
}

/**
 * The regions of guest memory as a queue thread views them in place (by address): for memory
 * mapped in this process that stays mapped while the thread serves.
 * @param memory Guest memory whose regions are mappings of this process.
 * @returns The regions, or `undefined` when one is not a mapping (an ordinary ArrayBuffer
 *   cannot be reached from another thread).
 */
export function regionsByAddress(memory: GuestMemory): QueueThreadRegion[] | undefined {
  const out: QueueThreadRegion[] = [];
  for (const r of memory.regions) {
    const address = mappedAddressOf(r.bytes);
    if (address === undefined) return undefined;
    out.push({ guestAddr: r.base, size: r.size, address: BigInt(address) });
  }
  return out;
}

/**
 * The main-thread side of one queue's serving thread.
 *
 * @example Hand a ring to its thread and take it back (a transport does this)
 * ```ts ignore
 * const thread = new QueueThread(0, { onError, onKickBroken, onCrash });
 * thread.start(describeRing(q, features, regions, { kickFd, callFd }), device.queueThread!(0)!);
 * // ... the guest's requests are served on the thread ...
 * const { nextAvail, nextUsed } = thread.stop(); // GET_VRING_BASE answers nextAvail
 * thread.close();
 * ```
 */
export class QueueThread {
  /** The queue index. */
  readonly index: number;
  readonly #options: QueueThreadOptions;
  readonly #ctl: Int32Array;
  #worker: Worker | undefined;
  #wake: EventFd | undefined;
  #gen = 0;
  #specOnError: ((err: VirtioError) => void) | undefined;
  #started: QueueThreadIndices = { nextAvail: 0, nextUsed: 0 };
  #failure: Error | undefined;
  #closed = false;
  // A ring was handed over and not taken back by stop() yet.
  #handed = false;

  /**
   * Create it; the Worker starts with the first {@linkcode QueueThread.start}.
   * @param index The queue index.
   * @param options Where errors, broken kicks and crashes go.
   */
  constructor(index: number, options: QueueThreadOptions) {
    this.index = index;
    this.#options = options;
    this.#ctl = new Int32Array(new SharedArrayBuffer(CTL_SLOTS * 4));
  }

  /** Why the thread can no longer serve (it died or stopped answering), if it cannot. */
  get failure(): Error | undefined {
    return this.#failure;
  }

  /**
   * Whether a ring is handed to the thread and not taken back with
   * {@linkcode QueueThread.stop} (even if the thread has stopped serving it on its own, after
   * an error, or died: `stop` still returns where the ring stands).
   */
  get serving(): boolean {
    return this.#handed;
  }

  /** Wake-ups and passes of the thread so far (statistics). */
  get counters(): { wakeups: number; passes: number } {
    return {
      wakeups: Atomics.load(this.#ctl, Ctl.WAKEUPS),
      passes: Atomics.load(this.#ctl, Ctl.PASSES),
    };
  }

  /**
   * Hand the ring to the thread. Returns at once; the thread serves it (a first pass right
   * away: buffers may be waiting) until {@linkcode QueueThread.stop}.
   * @param ring The ring, validated and positioned by the transport.
   * @param spec The device's handler for this queue.
   * @throws {Error} When the thread failed before, or a ring is already handed over.
   */
  start(ring: QueueThreadRing, spec: QueueThreadSpec): void {
    if (this.#closed) throw new Error(`queue ${this.index} thread is closed`);
    if (this.#failure !== undefined) throw this.#failure;
    if (this.#handed) throw new Error(`queue ${this.index} is already served by its thread`);
    const worker = this.#worker ??= this.#spawn();
    this.#gen = (this.#gen + 1) & 0x0fffffff;
    this.#specOnError = spec.onError;
    this.#started = { nextAvail: ring.nextAvail, nextUsed: ring.nextUsed };
    Atomics.store(this.#ctl, Ctl.NEXT_AVAIL, ring.nextAvail);
    Atomics.store(this.#ctl, Ctl.NEXT_USED, ring.nextUsed);
    Atomics.store(this.#ctl, Ctl.STATE, (this.#gen << 3) | Phase.PENDING);
    this.#handed = true;
    const msg: QueueThreadStart = {
      type: "start",
      gen: this.#gen,
      index: this.index,
      ring,
      module: spec.module,
      params: spec.params,
    };
    worker.postMessage(msg);
  }

  /**
   * Take the ring back: ask the thread to stop after its current pass and wait (blocking this
   * thread, at most `timeoutMs`) until it has published where the ring stands. A thread that
   * does not answer in time is reported through `onCrash` and terminated; the indices it
   * published last are returned.
   * @param timeoutMs The longest wait.
   * @returns Where the ring stands (unchanged when the thread had not taken it yet).
   */
  stop(timeoutMs: number = QUEUE_THREAD_STOP_TIMEOUT_MS): QueueThreadIndices {
    this.#handed = false;
    const ctl = this.#ctl;
    const gen = this.#gen << 3;
    let word = Atomics.load(ctl, Ctl.STATE);
    if ((word & 7) === Phase.PENDING && word >>> 3 === this.#gen) {
      // Not taken yet: take the start back; the thread ignores it when it comes to it.
      if (Atomics.compareExchange(ctl, Ctl.STATE, word, gen | Phase.IDLE) === word) {
        return { ...this.#started };
      }
      word = Atomics.load(ctl, Ctl.STATE);
    }
    if ((word & 7) === Phase.RUNNING) {
      Atomics.compareExchange(ctl, Ctl.STATE, word, gen | Phase.STOPPING);
      this.#wake?.write(1n);
    }
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      word = Atomics.load(ctl, Ctl.STATE);
      const phase = word & 7;
      if (phase === Phase.IDLE || phase === Phase.DEAD) break;
      const left = deadline - performance.now();
      if (left <= 0) {
        this.#fail(new Error(`queue ${this.index} thread did not stop within ${timeoutMs} ms`));
        break;
      }
      Atomics.wait(ctl, Ctl.STATE, word, left);
    }
    if ((Atomics.load(ctl, Ctl.STATE) & 7) === Phase.DEAD) {
      this.#fail(new Error(`queue ${this.index} thread died`));
    }
    return {
      nextAvail: Atomics.load(ctl, Ctl.NEXT_AVAIL),
      nextUsed: Atomics.load(ctl, Ctl.NEXT_USED),
    };
  }

  /** Stop serving (if it does) and end the thread. */
  close(): void {
    if (this.serving) this.stop();
    // Reports still on their way belong to what was served before: they are dropped.
    this.#closed = true;
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#wake?.close();
    this.#wake = undefined;
  }

  #spawn(): Worker {
    const wake = this.#wake ??= new EventFd();
    const worker = new Worker(new URL("./_queue_thread_worker.ts", import.meta.url).href, {
      type: "module",
    });
    worker.onmessage = (e: MessageEvent<QueueThreadMessage>) => this.#message(e.data);
    worker.onerror = (e: ErrorEvent) => {
      // Handled here: an error left to propagate would end the whole process.
      e.preventDefault();
      this.#fail(new Error(`queue ${this.index} thread failed: ${e.message}`));
    };
    worker.onmessageerror = () => {
      this.#fail(new Error(`queue ${this.index} thread sent a message that cannot be read`));
    };
    worker.postMessage({ type: "init", ctl: this.#ctl.buffer, wakeFd: wake.fd });
    return worker;
  }

  #message(msg: QueueThreadMessage): void {
    if (this.#closed) return;
    switch (msg?.type) {
      case "error": {
        Atomics.sub(this.#ctl, Ctl.ERRORS_PENDING, 1);
        const dropped = msg.dropped > 0 ? ` (${msg.dropped} earlier errors not reported)` : "";
        const err = new VirtioError(msg.kind, `${stripKind(msg.message, msg.kind)}${dropped}`, {
          needsReset: msg.needsReset,
        });
        try {
          this.#specOnError?.(err);
        } finally {
          this.#options.onError(err);
        }
        return;
      }
      case "kick":
        this.#options.onKickBroken(msg.reason);
        return;
      case "crash":
        this.#fail(new Error(`queue ${this.index} thread crashed: ${msg.message}`));
        return;
    }
  }

  // The thread is gone for good: mark it, end it, report once.
  #fail(err: Error): void {
    if (this.#failure !== undefined || this.#closed) return;
    this.#failure = err;
    const word = Atomics.load(this.#ctl, Ctl.STATE);
    Atomics.store(this.#ctl, Ctl.STATE, (word & ~7) | Phase.DEAD);
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#options.onCrash(err);
  }
}

// A VirtioError's message starts with its kind; the copy made here adds it again.
function stripKind(message: string, kind: string): string {
  return message.startsWith(`${kind}: `) ? message.slice(kind.length + 2) : message;
}
