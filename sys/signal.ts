/**
 * Threads and signals: the thread id of the calling thread, blocking a signal in it, and sending a
 * signal to one thread. A VMM uses these to pull a vCPU thread out of a blocking `KVM_RUN`: the
 * signal stays blocked in the thread except while `KVM_RUN` runs (`KVM_SET_SIGNAL_MASK`), so it
 * interrupts the guest with EINTR and is never delivered to a handler.
 *
 * @module
 */

import { check, libc, SysError } from "./libc.ts";

/** SIGWINCH: its default action is to ignore it, so a stray one harms no process. */
export const SIGWINCH = 28;
/** pthread_sigmask(3): add the set to the blocked signals. */
export const SIG_BLOCK = 0;
/** pthread_sigmask(3): remove the set from the blocked signals. */
export const SIG_UNBLOCK = 1;

/** glibc's `sigset_t` is 1024 bits; the kernel's is the first 64 of them. */
const SIGSET_BYTES = 128;

/**
 * The kernel thread id (`gettid(2)`) of the calling thread (the JS thread of a Worker has its own).
 *
 * @returns The thread id.
 */
export function threadId(): number {
  return libc().gettid();
}

/**
 * Blocks `signal` in the calling thread only (`pthread_sigmask(SIG_BLOCK)`).
 *
 * @param signal The signal number (1–64).
 * @returns The thread's blocked set afterwards, as the kernel's 64-bit mask (bit `n - 1` for
 *   signal `n`), e.g. for `KVM_SET_SIGNAL_MASK`.
 * @throws {RangeError} For a signal number outside 1–64.
 * @throws {SysError} If the call fails.
 */
export function blockSignalInThread(signal: number): bigint {
  if (!Number.isInteger(signal) || signal < 1 || signal > 64) {
    throw new RangeError(`Signal ${signal} is outside 1..64`);
  }
  const set = new Uint8Array(SIGSET_BYTES);
  const view = new DataView(set.buffer);
  view.setBigUint64(0, 1n << BigInt(signal - 1), true);
  const old = new Uint8Array(SIGSET_BYTES);
  const r = libc().pthread_sigmask(SIG_BLOCK, set, old);
  if (r !== 0) throw new SysError("pthread_sigmask", r);
  return new DataView(old.buffer).getBigUint64(0, true) | (1n << BigInt(signal - 1));
}

/**
 * Sends `signal` to one thread of this process (`tgkill(2)`).
 *
 * @param tid The thread id (from {@link threadId} in that thread).
 * @param signal The signal number.
 * @throws {SysError} If the thread does not exist (ESRCH) or the call fails otherwise.
 */
export function signalThread(tid: number, signal: number): void {
  const c = libc();
  check("tgkill", c.tgkill(c.getpid(), tid, signal));
}
