/**
 * Waiting on file descriptors: poll(2) itself, and {@link FdWatcher}, which waits on many
 * descriptors off the JS thread and runs callbacks on it.
 *
 * How the wait happens depends on the runtime. On Deno, poll(2) is an FFI symbol declared
 * `nonblocking`, which Deno runs on a thread of its blocking pool. On Bun, which has no such
 * symbols, a Worker per watcher blocks in poll(2) and posts the result back. Either way nothing
 * busy-polls and the event loop stays free, and each watcher includes an internal eventfd that
 * wakes the blocked poll(2) whenever the set of descriptors changes or the watcher stops.
 *
 * @module
 */

import type { AsyncPoller } from "./_backend.ts";
import { backend, Errno, fail, lastErrno, libc, retry, SysError } from "./libc.ts";

/** poll(2): there is data to read. */
export const POLLIN = 0x001;
/** poll(2): there is urgent data to read. */
export const POLLPRI = 0x002;
/** poll(2): writing is possible. */
export const POLLOUT = 0x004;
/** poll(2): error condition (always reported). */
export const POLLERR = 0x008;
/** poll(2): hang up (always reported). */
export const POLLHUP = 0x010;
/** poll(2): the descriptor is not open (always reported). */
export const POLLNVAL = 0x020;
/** poll(2): the stream socket peer closed or shut down writing. */
export const POLLRDHUP = 0x2000;

const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const POLLFD_SIZE = 8; // struct pollfd { int fd; short events; short revents; }

/** One entry for {@link poll}. */
export interface PollFd {
  /** The file descriptor; negative entries are ignored by the kernel. */
  fd: number;
  /** `POLL*` events to wait for. */
  events: number;
}

function encodePollFds(entries: readonly PollFd[]): Uint8Array {
  const buf = new Uint8Array(new ArrayBuffer(Math.max(entries.length, 1) * POLLFD_SIZE));
  const view = new DataView(buf.buffer);
  entries.forEach((entry, i) => {
    view.setInt32(i * POLLFD_SIZE, entry.fd, true);
    view.setInt16(i * POLLFD_SIZE + 4, entry.events, true);
  });
  return buf;
}

/**
 * Waits on the calling thread until one of `fds` is ready (poll(2)). This blocks the event
 * loop unless `timeout` is 0; use {@link FdWatcher} or {@link waitReady} to wait without
 * blocking.
 *
 * @example Is an fd readable right now?
 * ```ts ignore
 * const [revents] = poll([{ fd, events: POLLIN }], 0);
 * const readable = (revents & POLLIN) !== 0;
 * ```
 *
 * @param fds The descriptors and the events to wait for.
 * @param timeout Milliseconds to wait: 0 returns at once, -1 waits forever.
 * @returns The `revents` of each entry, in order (0 for an entry that is not ready).
 * @throws {SysError} When poll(2) fails (EINTR is retried with the same timeout).
 */
export function poll(fds: readonly PollFd[], timeout: number): number[] {
  const buf = encodePollFds(fds);
  retry("poll", () => libc().poll(buf, BigInt(fds.length), timeout));
  const view = new DataView(buf.buffer);
  return fds.map((_, i) => view.getUint16(i * POLLFD_SIZE + 6, true));
}

/**
 * A fixed list of descriptors polled again and again on the calling thread, without allocating
 * per call: for a thread whose job is to block in poll(2) itself, such as a Worker serving one
 * virtqueue (it blocks that Worker's thread, never an event loop it needs).
 *
 * @example Wait until one of two eventfds is signalled
 * ```ts
 * import { EventFd, POLLIN, PollSet } from "./mod.ts";
 * const a = new EventFd(), b = new EventFd();
 * const set = new PollSet([{ fd: a.fd, events: POLLIN }, { fd: b.fd, events: POLLIN }]);
 * b.write();
 * if (set.wait(-1) !== 1 || set.revents(1) !== POLLIN) throw new Error("unexpected");
 * a.close();
 * b.close();
 * ```
 */
export class PollSet {
  readonly #buf: Uint8Array;
  readonly #view: DataView;
  readonly #count: number;

  /**
   * Lays out the `struct pollfd` list once.
   *
   * @param fds The descriptors and the events to wait for.
   */
  constructor(fds: readonly PollFd[]) {
    this.#buf = encodePollFds(fds);
    this.#view = new DataView(this.#buf.buffer);
    this.#count = fds.length;
  }

  /**
   * Replaces entry `i`'s descriptor; a negative one is ignored by poll(2) from then on.
   *
   * @param i Entry index.
   * @param fd The descriptor.
   */
  setFd(i: number, fd: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.#count) {
      throw new RangeError(`No poll entry ${i}`);
    }
    this.#view.setInt32(i * POLLFD_SIZE, fd, true);
  }

  /**
   * Blocks the calling thread in poll(2) until an entry is ready or `timeout` passes.
   *
   * @param timeout Milliseconds: 0 returns at once, -1 waits forever.
   * @returns The number of ready entries (0 on timeout or when interrupted by a signal).
   * @throws {SysError} When poll(2) fails with anything but EINTR.
   */
  wait(timeout: number): number {
    const n = libc().poll(this.#buf, BigInt(this.#count), timeout);
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === Errno.EINTR) return 0;
    throw new SysError("poll", errno);
  }

  /**
   * The `revents` entry `i` reported in the last {@link PollSet.wait}.
   *
   * @param i Entry index.
   * @returns The events.
   */
  revents(i: number): number {
    return this.#view.getUint16(i * POLLFD_SIZE + 6, true);
  }
}

/** Called with the `revents` of a watched descriptor, on the JS thread. */
export type WatchCallback = (revents: number) => void;

/** A registration of a descriptor with an {@link FdWatcher}. */
export interface Watch {
  /** The watched file descriptor. */
  readonly fd: number;
  /** The `POLL*` events it waits for. */
  readonly events: number;
  /** False once closed (by {@link Watch.close}, the watcher stopping, or `POLLNVAL`). */
  readonly active: boolean;
  /**
   * Stops watching. The callback is not called afterwards, even for a poll(2) already
   * underway. The descriptor may be closed right after this returns.
   */
  close(): void;
}

/** Options of {@link FdWatcher}. */
export interface FdWatcherOptions {
  /**
   * Receives exceptions thrown by callbacks and poll(2) failures. By default they are rethrown
   * from a microtask, which reports them as uncaught errors.
   */
  onError?: (error: unknown) => void;
}

class Registration implements Watch {
  readonly fd: number;
  readonly events: number;
  readonly callback: WatchCallback;
  readonly #forget: (registration: Registration) => void;
  active = true;

  constructor(
    fd: number,
    events: number,
    callback: WatchCallback,
    forget: (registration: Registration) => void,
  ) {
    this.fd = fd;
    this.events = events;
    this.callback = callback;
    this.#forget = forget;
  }

  close(): void {
    if (!this.active) return;
    this.active = false;
    this.#forget(this);
  }
}

/**
 * Watches a set of file descriptors and calls back on the JS thread when they are ready.
 *
 * Watching is level-triggered: after the callbacks of one round have run, poll(2) starts again,
 * so a callback must consume what made its descriptor ready (read the eventfd, accept, recv)
 * or close its {@link Watch}; otherwise it is called again at once. The same holds for
 * `POLLHUP` and `POLLERR`, which are always reported: close the watch when the peer is gone. A
 * descriptor closed while still watched reports `POLLNVAL` once and its watch is closed.
 *
 * While at least one watch is active the watcher keeps the process alive; with none, nothing is
 * pending. One poll(2) covers every descriptor of a watcher, whatever their number.
 *
 * @example Run a callback when an eventfd is signalled
 * ```ts ignore
 * const watcher = new FdWatcher();
 * const kick = new EventFd();
 * watcher.watch(kick.fd, () => {
 *   kick.read();
 *   processQueue();
 * });
 * kick.write();
 * // ...
 * await watcher.stop();
 * ```
 */
export class FdWatcher {
  readonly #onError: (error: unknown) => void;
  readonly #watches = new Set<Registration>();
  #poller: AsyncPoller | undefined;
  #control = -1;
  #woken = false;
  #loop: Promise<void> | undefined;
  #stopped = false;
  #scratch = new Uint8Array(new ArrayBuffer(8));
  // The pollfd array of the last round and its registrations, kept until the set changes: a
  // watcher shared by many devices polls hundreds of descriptors, and a round per kick must
  // not build them again.
  #round: Registration[] = [];
  #pollFds: Uint8Array = new Uint8Array(0);
  #pollView: DataView = new DataView(new ArrayBuffer(0));
  #changed = true;

  /**
   * Makes a watcher. Nothing is allocated in the kernel until the first {@link FdWatcher.watch}.
   *
   * @param options Error handling.
   */
  constructor(options: FdWatcherOptions = {}) {
    this.#onError = options.onError ?? ((error) =>
      queueMicrotask(() => {
        throw error;
      }));
  }

  /**
   * The number of active watches.
   *
   * @returns The count.
   */
  get size(): number {
    return this.#watches.size;
  }

  /**
   * Starts watching `fd`. A descriptor may be watched more than once; each watch is separate.
   *
   * @param fd The file descriptor.
   * @param callback Called with the `revents` each time `fd` is ready.
   * @param events `POLL*` events to wait for; `POLLERR`, `POLLHUP` and `POLLNVAL` are always
   *   reported.
   * @returns The watch, to close it.
   * @throws {Error} If the watcher was stopped.
   * @throws {SysError} If the internal eventfd cannot be created.
   */
  watch(fd: number, callback: WatchCallback, events: number = POLLIN): Watch {
    if (this.#stopped) throw new Error("FdWatcher is stopped");
    if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`Invalid file descriptor: ${fd}`);
    if (this.#control < 0) {
      const control = libc().eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (control < 0) fail("eventfd");
      this.#control = control;
    }
    const registration = new Registration(fd, events, callback, this.#forget);
    this.#watches.add(registration);
    this.#changed = true;
    if (this.#loop === undefined) {
      this.#loop = this.#run();
    } else {
      this.#wake();
    }
    return registration;
  }

  /**
   * Closes every watch, waits for the poll(2) underway to return and releases the internal
   * eventfd and the Worker (Bun). The watcher cannot be used afterwards.
   *
   * @returns A promise that settles when nothing is pending any more.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const registration of this.#watches) registration.active = false;
    this.#watches.clear();
    this.#round = [];
    this.#wake();
    await this.#loop;
    this.#poller?.close();
    this.#poller = undefined;
    if (this.#control >= 0) libc().close(this.#control);
    this.#control = -1;
  }

  readonly #forget = (registration: Registration): void => {
    if (this.#watches.delete(registration)) {
      this.#changed = true;
      this.#wake();
    }
  };

  #wake(): void {
    if (this.#woken || this.#loop === undefined || this.#control < 0) return;
    this.#woken = true;
    const one = this.#scratch;
    new DataView(one.buffer).setBigUint64(0, 1n, true);
    // An eventfd write fails only when the counter would overflow, which cannot happen here.
    libc().write(this.#control, one, 8n);
  }

  /** Resets the control eventfd; `#woken` is true whenever its counter may be non-zero. */
  #drain(): void {
    this.#woken = false;
    libc().read(this.#control, this.#scratch, 8n);
  }

  async #run(): Promise<void> {
    try {
      // Let the watches made in the same turn of the event loop join the first poll.
      await Promise.resolve();
      while (!this.#stopped && this.#watches.size > 0) {
        if (this.#woken) this.#drain();
        if (this.#changed) {
          this.#changed = false;
          this.#round = [...this.#watches];
          this.#pollFds = encodePollFds([{ fd: this.#control, events: POLLIN }, ...this.#round]);
          this.#pollView = new DataView(this.#pollFds.buffer);
        }
        // poll(2) writes every revents and reads only fd and events: the array is reusable.
        const round = this.#round;
        const buf = this.#pollFds;
        this.#poller ??= backend().createPoller();
        const { result, errno } = await this.#poller.poll(buf, round.length + 1, -1);
        if (result < 0) {
          if (errno === Errno.EINTR) continue;
          throw new SysError("poll", errno);
        }
        if (result === 0) continue;
        const view = this.#pollView;
        if (view.getUint16(6, true) !== 0) this.#drain();
        for (let i = 0; i < round.length; i++) {
          const revents = view.getUint16((i + 1) * POLLFD_SIZE + 6, true);
          const registration = round[i];
          if (revents === 0 || !registration.active) continue;
          if (revents & POLLNVAL) registration.close();
          try {
            registration.callback(revents);
          } catch (error) {
            this.#onError(error);
          }
        }
      }
    } catch (error) {
      // poll(2) itself failed (EFAULT, EINVAL, ENOMEM): waiting again would fail the same way.
      for (const registration of this.#watches) registration.active = false;
      this.#watches.clear();
      this.#onError(error);
    } finally {
      // `#woken` is left as it is: if set, the control counter is non-zero and the next loop
      // drains it before polling.
      this.#loop = undefined;
    }
  }
}

let shared: FdWatcher | undefined;

function sharedWatcher(): FdWatcher {
  return shared ??= new FdWatcher();
}

/**
 * Watches `fd` with the module's shared {@link FdWatcher}: `callback` runs on the JS thread
 * each time `fd` is ready (level-triggered; see {@link FdWatcher}).
 *
 * @param fd The file descriptor.
 * @param callback Called with the `revents`.
 * @param events `POLL*` events to wait for.
 * @returns The watch; close it to stop.
 * @throws {SysError} If the internal eventfd cannot be created.
 */
export function watchReadable(fd: number, callback: WatchCallback, events: number = POLLIN): Watch {
  return sharedWatcher().watch(fd, callback, events);
}

/** Options of {@link waitReady}. */
export interface WaitOptions {
  /** Abandons the wait; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * Waits once, without blocking the event loop, until `fd` is ready, using the module's shared
 * {@link FdWatcher}.
 *
 * @example Wait for a socket to become readable
 * ```ts ignore
 * const revents = await waitReady(fd, POLLIN);
 * ```
 *
 * @param fd The file descriptor.
 * @param events `POLL*` events to wait for.
 * @param options An abort signal.
 * @returns The `revents` reported.
 * @throws {SysError} EBADF if `fd` is not open (`POLLNVAL`).
 * @throws {unknown} The signal's reason when aborted.
 */
export function waitReady(
  fd: number,
  events: number = POLLIN,
  options: WaitOptions = {},
): Promise<number> {
  const { signal } = options;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      watch.close();
      reject(signal!.reason);
    };
    const watch = sharedWatcher().watch(fd, (revents) => {
      watch.close();
      signal?.removeEventListener("abort", onAbort);
      if (revents & POLLNVAL) reject(new SysError("poll", Errno.EBADF));
      else resolve(revents);
    }, events);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
