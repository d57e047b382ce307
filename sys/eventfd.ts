/**
 * eventfd(2): the kernel's 64-bit counter used for virtqueue kicks and interrupts (KVM ioeventfd
 * and irqfd, vhost-user kick and call descriptors).
 *
 * @module
 */

import { Errno, fail, lastErrno, libc, SysError } from "./libc.ts";
import { F_GETFL, F_SETFL, O_NONBLOCK } from "./fd.ts";
import { POLLIN, waitReady } from "./poll.ts";

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
   */
  read(): bigint {
    for (;;) {
      if (libc().read(this.#fd, this.#buf, 8n) === 8) return this.#view.getBigUint64(0, true);
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
