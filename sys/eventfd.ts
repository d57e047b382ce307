/**
 * eventfd(2): the kernel's 64-bit counter used for virtqueue kicks and interrupts (KVM ioeventfd
 * and irqfd, vhost-user kick and call descriptors).
 *
 * @module
 */

import { Errno, fail, lastErrno, libc, SysError } from "./libc.ts";
import { F_GETFL, F_SETFL, O_NONBLOCK } from "./fd.ts";
import {
  type FdWatcher,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  waitReady,
  type Watch,
  watchReadable,
} from "./poll.ts";

/** eventfd(2): reads decrement the counter by one instead of resetting it. */
export const EFD_SEMAPHORE = 1;
/** eventfd(2): close on exec. */
export const EFD_CLOEXEC = 0o2000000;
/** eventfd(2): non-blocking reads and writes. */
export const EFD_NONBLOCK = 0o4000;

// Set by EventFd.fromFd around its `new EventFd()`, so that the constructor adopts this fd.
let adopting = -1;

/** Options of the {@link EventFd} constructor. */
export interface EventFdOptions {
  /** The initial counter value; default 0. */
  initial?: number;
  /** Semaphore mode (`EFD_SEMAPHORE`): each read takes 1 from the counter; default false. */
  semaphore?: boolean;
}

/** Options of {@link EventFd.wait}. */
export interface EventFdWaitOptions {
  /** Abandons the wait; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * An eventfd, always non-blocking and close-on-exec.
 *
 * @example Signal and consume
 * ```ts
 * import { EventFd } from "./mod.ts";
 * const efd = new EventFd();
 * efd.write();
 * efd.write(2n);
 * if (efd.read() !== 3n) throw new Error("unexpected");
 * if (efd.read() !== 0n) throw new Error("unexpected");
 * efd.close();
 * ```
 */
export class EventFd {
  #fd: number;
  readonly #buf = new Uint8Array(new ArrayBuffer(8));
  readonly #view = new DataView(this.#buf.buffer);
  #closing = new AbortController();

  /**
   * Creates an eventfd with `EFD_NONBLOCK | EFD_CLOEXEC` (eventfd(2)).
   *
   * @param options The initial value and semaphore mode.
   * @throws {SysError} When eventfd(2) fails.
   * @throws {RangeError} If `initial` is not a 32-bit unsigned integer.
   */
  constructor(options: EventFdOptions = {}) {
    if (adopting >= 0) {
      this.#fd = adopting;
      return;
    }
    const { initial = 0, semaphore = false } = options;
    if (!Number.isInteger(initial) || initial < 0 || initial > 0xffffffff) {
      throw new RangeError(`Invalid eventfd initial value: ${initial}`);
    }
    const flags = EFD_NONBLOCK | EFD_CLOEXEC | (semaphore ? EFD_SEMAPHORE : 0);
    const fd = libc().eventfd(initial, flags);
    if (fd < 0) fail("eventfd");
    this.#fd = fd;
  }

  /**
   * Adopts an eventfd made elsewhere, such as a kick or call descriptor received over a Unix
   * socket. `O_NONBLOCK` is set on it if missing; that flag is shared with every holder of the
   * same open file (QEMU makes its eventfds non-blocking already). The new object owns `fd` and
   * closes it in {@link EventFd.close}.
   *
   * @param fd The eventfd descriptor.
   * @returns The wrapper.
   * @throws {SysError} When fcntl(2) fails, such as EBADF.
   */
  static fromFd(fd: number): EventFd {
    const flags = libc().fcntl(fd, F_GETFL, 0n);
    if (flags < 0) fail("fcntl");
    if ((flags & O_NONBLOCK) === 0 && libc().fcntl(fd, F_SETFL, BigInt(flags | O_NONBLOCK)) < 0) {
      fail("fcntl");
    }
    adopting = fd;
    try {
      return new EventFd();
    } finally {
      adopting = -1;
    }
  }

  /**
   * The file descriptor, or -1 once closed.
   *
   * @returns The descriptor.
   */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Adds `value` to the counter (eventfd_write), waking whoever waits on it.
   *
   * @param value The amount to add, 1 to 2^64 - 2.
   * @throws {SysError} EAGAIN when the counter would overflow; EBADF once closed.
   * @throws {RangeError} If `value` is out of range.
   */
  write(value: bigint = 1n): void {
    if (value <= 0n || value >= 0xffffffffffffffffn) {
      throw new RangeError(`Invalid eventfd value: ${value}`);
    }
    this.#view.setBigUint64(0, value, true);
    for (;;) {
      if (libc().write(this.#fd, this.#buf, 8n) === 8) return;
      const errno = lastErrno();
      if (errno !== Errno.EINTR) throw new SysError("eventfd_write", errno);
    }
  }

  /**
   * Takes the counter value and resets it to 0 (or takes 1 in semaphore mode), without blocking
   * (eventfd_read).
   *
   * @returns The value taken, or 0n if the counter was 0.
   * @throws {SysError} When read(2) fails with anything but EAGAIN, such as EBADF once closed.
   * @throws {TypeError} When read(2) returns other than 8 bytes: the descriptor is not an
   *   eventfd (end of file on a socket, pipe or regular file, or a short read).
   */
  read(): bigint {
    for (;;) {
      const n = libc().read(this.#fd, this.#buf, 8n);
      if (n === 8) return this.#view.getBigUint64(0, true);
      if (n >= 0) {
        throw new TypeError(`Descriptor ${this.#fd} is not an eventfd: read returned ${n} bytes`);
      }
      const errno = lastErrno();
      if (errno === Errno.EAGAIN) return 0n;
      if (errno !== Errno.EINTR) throw new SysError("eventfd_read", errno);
    }
  }

  /**
   * Waits, without blocking the event loop or busy-polling, until the counter is non-zero, then
   * takes it as {@link EventFd.read} does. Several waits may be pending; the first to run takes
   * the value and the others keep waiting.
   *
   * @param options An abort signal.
   * @returns The value taken (never 0n).
   * @throws {SysError} ECANCELED when the eventfd is closed during the wait; EBADF if it is
   *   already closed.
   * @throws {unknown} The signal's reason when aborted.
   */
  async wait(options: EventFdWaitOptions = {}): Promise<bigint> {
    const closing = this.#closing.signal;
    const { signal } = options;
    if (this.#fd < 0) throw new SysError("eventfd_wait", Errno.EBADF);
    let combined = closing;
    let unlink = () => {};
    if (signal !== undefined) {
      const both = new AbortController();
      const forward = (source: AbortSignal) => () => both.abort(source.reason);
      if (signal.aborted) both.abort(signal.reason);
      const onSignal = forward(signal), onClosing = forward(closing);
      signal.addEventListener("abort", onSignal, { once: true });
      closing.addEventListener("abort", onClosing, { once: true });
      unlink = () => {
        signal.removeEventListener("abort", onSignal);
        closing.removeEventListener("abort", onClosing);
      };
      combined = both.signal;
    }
    try {
      if (combined.aborted) throw combined.reason;
      for (;;) {
        const value = this.read();
        if (value !== 0n) return value;
        await waitReady(this.#fd, POLLIN, { signal: combined });
      }
    } finally {
      unlink();
    }
  }

  /**
   * Closes the descriptor. Pending {@link EventFd.wait} calls reject with ECANCELED. Calling it
   * again does nothing.
   *
   * @throws {SysError} When close(2) fails.
   */
  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    // Abort first: each pending wait closes its watch before the descriptor goes away.
    this.#closing.abort(new SysError("eventfd_wait", Errno.ECANCELED));
    this.#closing = new AbortController();
    if (libc().close(fd) < 0) fail("close");
  }
}

/**
 * The most reads {@link watchEventFd} makes to empty the counter after one wake-up. A plain
 * eventfd is empty after one read; only a semaphore-mode eventfd holding a large count (or a
 * descriptor that is no eventfd) stays readable this long.
 */
export const EVENTFD_MAX_DRAIN = 64;

/** Options of {@link watchEventFd}. */
export interface WatchEventFdOptions {
  /** The watcher to register with (default: the module's shared one, as `watchReadable`). */
  watcher?: FdWatcher;
  /**
   * Called on the JS thread with the value taken each time the counter was found non-zero.
   * What it throws goes to the watcher's `onError`.
   */
  onSignal: (value: bigint) => void;
  /**
   * Called once, after the watch was closed, when the descriptor cannot be watched any more;
   * `reason` says why (`"poll reported POLLHUP"`, `"read failed: …"`, …).
   */
  onBroken: (reason: string) => void;
}

function pollEventNames(revents: number): string {
  const names: string[] = [];
  if (revents & POLLERR) names.push("POLLERR");
  if (revents & POLLHUP) names.push("POLLHUP");
  if (revents & POLLNVAL) names.push("POLLNVAL");
  return names.join("|");
}

/**
 * Watches an eventfd that another party controls (a vhost-user kick, say) so that no state of
 * the descriptor can make the callback run in a loop. Each wake-up empties the counter and
 * calls `onSignal` with what it held. The watch is closed, and `onBroken` called once instead,
 * when poll(2) reports `POLLERR`, `POLLHUP` or `POLLNVAL` (an eventfd never hangs up: the
 * descriptor is something else, or it overflowed), when a read fails (such as a read of
 * other than 8 bytes from something that is not an eventfd), or when
 * {@link EVENTFD_MAX_DRAIN} reads in a row still find it non-zero (a semaphore eventfd that
 * one large write keeps readable). A descriptor that stays ready thus costs one callback, not
 * a busy loop.
 *
 * @example Serve a ring on each kick
 * ```ts ignore
 * const watch = watchEventFd(kick, {
 *   watcher,
 *   onSignal: () => device.processQueue(0),
 *   onBroken: (reason) => console.error(`kick fd: ${reason}; no longer watched`),
 * });
 * ```
 *
 * @param efd The eventfd; it stays open (close the watch before closing it).
 * @param options The watcher and the two callbacks.
 * @returns The watch, to close it.
 * @throws {Error} If the watcher was stopped.
 * @throws {SysError} If the watcher's internal eventfd cannot be created.
 */
export function watchEventFd(efd: EventFd, options: WatchEventFdOptions): Watch {
  const { watcher, onSignal, onBroken } = options;
  let broken = false;
  const stop = (reason: string): void => {
    watch.close();
    if (broken) return;
    broken = true;
    onBroken(reason);
  };
  const callback = (revents: number): void => {
    if (broken) return;
    const bad = revents & (POLLERR | POLLHUP | POLLNVAL);
    if (bad !== 0) return stop(`poll reported ${pollEventNames(bad)}`);
    let total = 0n;
    for (let reads = 0;; reads++) {
      if (reads === EVENTFD_MAX_DRAIN) {
        return stop(
          `still readable after ${EVENTFD_MAX_DRAIN} reads (a semaphore eventfd holding a large count?)`,
        );
      }
      let value: bigint;
      try {
        value = efd.read();
      } catch (err) {
        return stop(`read failed: ${err instanceof Error ? err.message : String(err)}`);
      }
      if (value === 0n) break;
      total += value;
    }
    if (total > 0n) onSignal(total);
  };
  const watch: Watch = watcher !== undefined
    ? watcher.watch(efd.fd, callback)
    : watchReadable(efd.fd, callback);
  return watch;
}
