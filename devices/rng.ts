/**
 * The entropy device (virtio 1.2 §5.4): one request queue whose writable
 * buffers the device fills with random bytes.
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import {
  DEFAULT_SERVE_BUDGET,
  featureBit,
  serveQueue,
  TYPE_RNG,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
} from "./device.ts";

/** Largest chunk `crypto.getRandomValues` fills in one call (Web Crypto limit). */
export const RNG_CHUNK = 65536;

/** Default size of the request queue. */
export const RNG_QUEUE_SIZE = 256;

/** Default most bytes put in one request, however large its buffers (64 KiB). */
export const RNG_MAX_BYTES_PER_REQUEST = 65536;

/**
 * Default most bytes generated in one pass over the queue (1 MiB); the transport continues
 * a pass that stopped there on a later turn of the event loop.
 */
export const RNG_MAX_BYTES_PER_PASS = 1 << 20;

/** Longest rate-limit period accepted, in milliseconds (what a timer can wait: 2^31 - 1). */
export const RNG_MAX_PERIOD_MS = 0x7fffffff;

/** Time and timers for the rate limit and for continuing a pass; tests inject their own. */
export interface RngClock {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /**
   * Call `fn` once, after `ms` milliseconds.
   * @param fn The callback.
   * @param ms The delay (0: on a later turn of the event loop).
   * @returns A handle for `clearTimer`.
   */
  setTimer(fn: () => void, ms: number): unknown;
  /**
   * Cancel a timer that has not fired.
   * @param handle What `setTimer` returned.
   */
  clearTimer(handle: unknown): void;
}

/** A rate limit: at most `bytes` random bytes in each period of `periodMs` (QEMU's `max-bytes`/`period`). */
export interface RngRateLimit {
  /** Bytes per period: a positive safe integer. */
  bytes: number;
  /** The period in milliseconds: an integer from 1 to {@linkcode RNG_MAX_PERIOD_MS}. */
  periodMs: number;
}

/** Options of {@linkcode RngDevice}. */
export interface RngOptions {
  /** Maximum size of the request queue (default 256). */
  queueSize?: number;
  /**
   * Source of random bytes (default `crypto.getRandomValues`). It fills the
   * whole array it is given, at most {@linkcode RNG_CHUNK} bytes at a time.
   */
  source?: (buf: Uint8Array) => void;
  /** Called for each error while serving (default: ignore). */
  onError?: (err: VirtioError) => void;
  /** Most bytes put in one request (default {@linkcode RNG_MAX_BYTES_PER_REQUEST}). */
  maxBytesPerRequest?: number;
  /**
   * Most bytes generated in one pass (default {@linkcode RNG_MAX_BYTES_PER_PASS}); the
   * requests left over are served on a later turn of the event loop.
   */
  maxBytesPerPass?: number;
  /** Limit the rate of random bytes (default: none). */
  rateLimit?: RngRateLimit;
  /** Clock and timers (default: `performance.now`, `setTimeout`, `clearTimeout`). */
  clock?: RngClock;
}

const SYSTEM_CLOCK: RngClock = {
  now: () => performance.now(),
  setTimer: (fn, ms) => setTimeout(fn, ms),
  clearTimer: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

function positiveOption(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${v}`);
  }
  return v;
}

/**
 * The virtio entropy device.
 *
 * Work is bounded: a request gets at most `maxBytesPerRequest` bytes and a
 * pass at most `maxBytesPerPass` (virtio 1.2 §5.4.6.2 lets the device use
 * less than the whole buffer, as long as it puts at least one byte in it), so
 * a chain of 4 GiB buffers costs 64 KiB, not 4 GiB; a pass that stops at its
 * cap is continued on a later turn. With a `rateLimit`, once the bytes of the
 * current period are spent, requests stay in the ring (they are not completed
 * empty) until the period ends; then a timer serves them and signals the
 * driver. Reset and `remove` cancel the timer; a ring stop or new memory table
 * (`reconfigure`) does not, and a timer that finds the queue gone does
 * nothing. The rate limit's account is host policy and survives a reset, so a
 * driver cannot refill it by resetting the device.
 *
 * @example Drive it through the MMIO transport with the driver harness
 * ```ts ignore
 * const rng = new RngDevice({ rateLimit: { bytes: 1024, periodMs: 1000 } });
 * const transport = new MmioTransport(rng, mem);
 * ```
 */
export class RngDevice extends VirtioDeviceBase {
  readonly #source: (buf: Uint8Array) => void;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #scratch = new Uint8Array(RNG_CHUNK);
  readonly #perRequest: number;
  readonly #perPass: number;
  readonly #limit: RngRateLimit | undefined;
  readonly #clock: RngClock;
  // Bytes the current rate-limit period still allows, and when that period ends.
  #quota = 0;
  #periodEnd = -Infinity;
  // Bytes the running pass may still generate.
  #passLeft = 0;
  #timer: unknown = undefined;
  /** Random bytes handed to the guest since creation. */
  bytesServed = 0;
  /** Requests served since creation. */
  requestsServed = 0;

  /**
   * Create it.
   * @param options Queue size, randomness source, error hook, caps, rate limit and clock.
   * @throws {RangeError} When a cap or the rate limit is not a positive integer, or the
   *   period is longer than {@linkcode RNG_MAX_PERIOD_MS}.
   */
  constructor(options: RngOptions = {}) {
    const perRequest = positiveOption(
      "maxBytesPerRequest",
      options.maxBytesPerRequest,
      RNG_MAX_BYTES_PER_REQUEST,
    );
    const perPass = positiveOption(
      "maxBytesPerPass",
      options.maxBytesPerPass,
      RNG_MAX_BYTES_PER_PASS,
    );
    let limit: RngRateLimit | undefined;
    if (options.rateLimit !== undefined) {
      const bytes = positiveOption("rateLimit.bytes", options.rateLimit.bytes, 0);
      const periodMs = positiveOption("rateLimit.periodMs", options.rateLimit.periodMs, 0);
      if (periodMs > RNG_MAX_PERIOD_MS) {
        throw new RangeError(
          `rateLimit.periodMs must be at most ${RNG_MAX_PERIOD_MS}, got ${periodMs}`,
        );
      }
      limit = { bytes, periodMs };
    }
    // Requests complete as they are taken, so buffers are used in order (VIRTIO_F_IN_ORDER).
    const features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_EVENT_IDX) | featureBit(VIRTIO_F_IN_ORDER);
    super(
      TYPE_RNG,
      new VirtioDeviceInfo(
        "virtio-rng",
        features,
        [options.queueSize ?? RNG_QUEUE_SIZE],
        // virtio 1.2 §5.4.4: the entropy device has no configuration space.
        new Uint8Array(0),
      ),
    );
    this.#source = options.source ?? ((buf) => crypto.getRandomValues(buf));
    this.#onError = options.onError;
    this.#perRequest = perRequest;
    this.#perPass = perPass;
    this.#limit = limit;
    this.#clock = options.clock ?? SYSTEM_CLOCK;
  }

  /**
   * Whether a timer will serve the queue later: the rate limit's next period, or the rest of
   * a pass that timer ran.
   */
  get waiting(): boolean {
    return this.#timer !== undefined;
  }

  /**
   * Serve the request queue: one pass, within the caps and the rate limit.
   * @param index Queue index; only 0 exists.
   * @returns `true` when the pass stopped at `maxBytesPerPass` (or the chain budget) with
   *   buffers left for another; `false` when done, or when the rest waits for the rate
   *   limit's next period (a timer serves it then).
   */
  processQueue(index: number): boolean {
    const config = this.active;
    if (config === undefined) return false;
    const qc = this.queue(index);
    if (qc === undefined) {
      this.#error(new VirtioError("InvalidInput", `rng has no queue ${index}`));
      return false;
    }
    const now = this.#clock.now();
    const limit = this.#limit;
    let passBytes = this.#perPass;
    if (limit !== undefined) {
      if (now >= this.#periodEnd) {
        this.#quota = limit.bytes;
        this.#periodEnd = now + limit.periodMs;
      }
      if (this.#quota === 0) {
        let pending: boolean;
        try {
          pending = qc.queue.hasPending(config.memory);
        } catch {
          return false; // a broken or invalid queue was reported when it became so
        }
        if (pending) this.#waitForPeriod(index, now);
        return false;
      }
      passBytes = Math.min(passBytes, this.#quota);
    }
    // The pass stops once the bytes it moved reach passBytes; they include what the handler
    // generated, so it never pops a chain when nothing is left to put in it.
    this.#passLeft = passBytes;
    const more = serveQueue(config.memory, qc, this.#fill, (e) => this.#error(e), {
      chains: DEFAULT_SERVE_BUDGET.chains,
      bytes: passBytes,
    }).more;
    if (more && limit !== undefined && this.#quota === 0) {
      // The period's bytes are spent: the rest stays in the ring until it ends.
      this.#waitForPeriod(index, now);
      return false;
    }
    return more;
  }

  /** Cancel the timer; the device stays usable. */
  remove(): void {
    this.#cancelTimer();
  }

  /**
   * Cancel the timer: requests left in the ring wait for the next activation.
   * @param _wasActive The config the device was active with, if any.
   */
  protected override onReset(_wasActive: VirtioDeviceConfig | undefined): void {
    this.#cancelTimer();
  }

  // Serve queue `index` again when the rate limit's period ends, and signal the driver then
  // (serveQueue does). A pass the timer runs that stops at its cap continues on the next turn.
  #waitForPeriod(index: number, now: number): void {
    if (this.#timer !== undefined) return;
    this.#schedule(index, Math.max(1, Math.ceil(this.#periodEnd - now)));
  }

  #schedule(index: number, delay: number): void {
    this.#timer = this.#clock.setTimer(() => {
      this.#timer = undefined;
      // The ring may have stopped meanwhile: whoever restarts it serves it.
      if (this.queue(index) === undefined) return;
      if (this.processQueue(index) && this.#timer === undefined) this.#schedule(index, 0);
    }, delay);
  }

  #cancelTimer(): void {
    if (this.#timer === undefined) return;
    this.#clock.clearTimer(this.#timer);
    this.#timer = undefined;
  }

  // virtio 1.2 §5.4.6: fill device-writable bytes from the start (readable buffers are
  // ignored), at least one and at most what the caps and the rate limit allow. The pass
  // ends before #passLeft reaches 0 with a chain still wanting bytes (see processQueue).
  #fill = (chain: DescriptorChain): number => {
    const w = chain.writer;
    const total = Math.min(w.remaining, this.#perRequest, this.#passLeft);
    const scratch = this.#scratch;
    while (w.written < total) {
      const chunk = scratch.subarray(0, Math.min(total - w.written, RNG_CHUNK));
      this.#source(chunk);
      w.write(chunk);
    }
    this.#passLeft -= total;
    if (this.#limit !== undefined) this.#quota -= total;
    this.bytesServed += total;
    this.requestsServed++;
    return total;
  };

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}
