/**
 * Loading libc, errno and {@link SysError}.
 *
 * libc (glibc, `libc.so.6`) is opened on first use, not at import time, so importing `sys/` needs
 * no FFI permission until a call is made.
 *
 * @module
 */

import { type Backend, detectRuntime, type RawLibc, type Runtime } from "./_backend.ts";
import { createBunBackend } from "./_bun.ts";
import { createDenoBackend } from "./_deno.ts";

export type { Runtime } from "./_backend.ts";

/**
 * The runtime this module runs on: `"deno"` or `"bun"`; `"unknown"` anywhere else, where every
 * call into libc throws.
 */
export const runtime: Runtime = detectRuntime();

let loaded: Backend | undefined;

/**
 * The backend for this runtime, opening libc on first use.
 *
 * @returns The backend.
 * @throws {Error} On a runtime without FFI support.
 * @internal
 */
export function backend(): Backend {
  if (loaded !== undefined) return loaded;
  switch (runtime) {
    case "deno":
      loaded = createDenoBackend();
      break;
    case "bun":
      loaded = createBunBackend();
      break;
    default:
      throw new Error("virtio-ts sys/ needs Deno or Bun (FFI to libc)");
  }
  return loaded;
}

/**
 * The raw libc table of this runtime.
 *
 * @returns The raw libc table.
 * @internal
 */
export function libc(): RawLibc {
  return (loaded ?? backend()).libc;
}

/**
 * Linux errno numbers by name (the generic table, shared by x86-64 and arm64; see errno(3)).
 */
export const Errno: Readonly<Record<string, number>> = Object.freeze({
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  ENOTBLK: 15,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  EPIPE: 32,
  EDOM: 33,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENOMSG: 42,
  EIDRM: 43,
  ENODATA: 61,
  ETIME: 62,
  EPROTO: 71,
  EBADMSG: 74,
  EOVERFLOW: 75,
  EBADFD: 77,
  EILSEQ: 84,
  ENOTSOCK: 88,
  EDESTADDRREQ: 89,
  EMSGSIZE: 90,
  EPROTOTYPE: 91,
  ENOPROTOOPT: 92,
  EPROTONOSUPPORT: 93,
  ESOCKTNOSUPPORT: 94,
  EOPNOTSUPP: 95,
  EPFNOSUPPORT: 96,
  EAFNOSUPPORT: 97,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENETDOWN: 100,
  ENETUNREACH: 101,
  ENETRESET: 102,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOBUFS: 105,
  EISCONN: 106,
  ENOTCONN: 107,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EHOSTDOWN: 112,
  EHOSTUNREACH: 113,
  EALREADY: 114,
  EINPROGRESS: 115,
  ESTALE: 116,
  EDQUOT: 122,
  ECANCELED: 125,
});

const NAMES: string[] = [];
for (const [name, value] of Object.entries(Errno)) NAMES[value] = name;

/**
 * The symbolic name of an errno value.
 *
 * @example Name of errno 9
 * ```ts
 * import { errnoName } from "./mod.ts";
 * if (errnoName(9) !== "EBADF") throw new Error("unexpected");
 * ```
 *
 * @param errno The errno value.
 * @returns The name, such as `"EBADF"`, or `"EUNKNOWN"` for a value not in {@link Errno}.
 */
export function errnoName(errno: number): string {
  return NAMES[errno] ?? "EUNKNOWN";
}

/**
 * A failed libc call: which call, and the errno it left.
 *
 * @example Catching EBADF
 * ```ts
 * import { close, SysError } from "./mod.ts";
 * try {
 *   close(-1);
 * } catch (e) {
 *   if (!(e instanceof SysError) || e.code !== "EBADF") throw e;
 * }
 * ```
 */
export class SysError extends Error {
  /** The libc function that failed, such as `"eventfd_read"`. */
  readonly call: string;
  /** The errno value. */
  readonly errno: number;
  /** The symbolic errno name, such as `"EAGAIN"` (`"EUNKNOWN"` if not in {@link Errno}). */
  readonly code: string;

  /**
   * Makes the error for a failed call.
   *
   * @param call The libc function that failed.
   * @param errno The errno value it left.
   * @param options Standard error options (`cause`).
   */
  constructor(call: string, errno: number, options?: ErrorOptions) {
    const code = errnoName(errno);
    super(`${call} failed: ${code} (errno ${errno})`, options);
    this.name = "SysError";
    this.call = call;
    this.errno = errno;
    this.code = code;
  }
}

/**
 * Throws a {@link SysError} for `call` with the current errno. Call it right after the failing
 * libc call, before any other.
 *
 * @param call The libc function that failed.
 * @returns Never.
 * @throws {SysError} Always.
 * @internal
 */
export function fail(call: string): never {
  throw new SysError(call, (loaded ?? backend()).errno());
}

/**
 * The errno left by the last libc call of this thread.
 *
 * @returns The errno value.
 * @internal
 */
export function lastErrno(): number {
  return (loaded ?? backend()).errno();
}

/**
 * Checks an `int`/`ssize_t` result: returns it, or throws a {@link SysError} when negative.
 *
 * @param call The libc function name for the error.
 * @param result The value it returned.
 * @returns `result`.
 * @throws {SysError} When `result` is negative.
 * @internal
 */
export function check(call: string, result: number): number {
  if (result < 0) fail(call);
  return result;
}

/**
 * Runs `fn` until it does not fail with EINTR, then checks its result as {@link check} does.
 *
 * @param call The libc function name for the error.
 * @param fn The call.
 * @returns Its non-negative result.
 * @throws {SysError} When it fails with anything but EINTR.
 * @internal
 */
export function retry(call: string, fn: () => number): number {
  for (;;) {
    const result = fn();
    if (result >= 0) return result;
    const errno = lastErrno();
    if (errno !== Errno.EINTR) throw new SysError(call, errno);
  }
}

const encoder = new TextEncoder();

/**
 * A NUL-terminated UTF-8 copy of `s` for a `const char *` parameter.
 *
 * @param s The string.
 * @returns The bytes, NUL-terminated.
 * @throws {TypeError} If `s` contains a NUL character.
 * @internal
 */
export function cString(s: string): Uint8Array {
  if (s.includes("\0")) throw new TypeError("String contains a NUL character");
  const bytes = encoder.encode(s);
  const out = new Uint8Array(new ArrayBuffer(bytes.length + 1));
  out.set(bytes);
  return out;
}

/**
 * The address of a buffer's first byte. The buffer must stay alive and attached (not
 * transferred) while native code uses the address.
 *
 * @param buf The buffer.
 * @returns Its address, or `0n` for an empty buffer.
 */
export function addressOf(buf: Uint8Array): bigint {
  return (loaded ?? backend()).addressOf(buf);
}

/**
 * An `ArrayBuffer` over native memory at `address`, without copying. Nothing checks that the
 * memory exists or stays mapped: reading it after it is unmapped crashes the process. Use it to
 * look at memory mapped elsewhere (for example a mapping made by another Worker of the same
 * process, passed by address).
 *
 * @param address The address of the first byte.
 * @param length The length in bytes.
 * @returns The buffer; it never frees the memory.
 * @throws {RangeError} For address 0 or a negative or unsafe length.
 */
export function unsafeView(address: bigint, length: number): ArrayBuffer {
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`Invalid length: ${length}`);
  }
  if (length === 0) return new ArrayBuffer(0);
  return (loaded ?? backend()).view(address, length);
}
