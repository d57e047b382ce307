/**
 * The entropy device (virtio 1.2 §5.4): one request queue whose writable
 * buffers the device fills with random bytes.
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import {
  featureBit,
  serveQueue,
  TYPE_RNG,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  VirtioDeviceInfo,
  VirtioError,
} from "./device.ts";

/** Largest chunk `crypto.getRandomValues` fills in one call (Web Crypto limit). */
export const RNG_CHUNK = 65536;

/** Default size of the request queue. */
export const RNG_QUEUE_SIZE = 256;

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
}

/**
 * The virtio entropy device.
 *
 * @example Drive it through the MMIO transport with the driver harness
 * ```ts ignore
 * const rng = new RngDevice();
 * const transport = new MmioTransport(rng, mem);
 * ```
 */
export class RngDevice extends VirtioDeviceBase {
  readonly #source: (buf: Uint8Array) => void;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #scratch = new Uint8Array(RNG_CHUNK);
  /** Random bytes handed to the guest since creation. */
  bytesServed = 0;
  /** Requests served since creation. */
  requestsServed = 0;

  /**
   * Create it.
   * @param options Queue size, randomness source and error hook.
   */
  constructor(options: RngOptions = {}) {
    const features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_EVENT_IDX);
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
  }

  /**
   * Serve the request queue, one budget's worth at most.
   * @param index Queue index; only 0 exists.
   * @returns `true` when buffers are left for another pass.
   */
  processQueue(index: number): boolean {
    const config = this.active;
    if (config === undefined) return false;
    const qc = this.queue(index);
    if (qc === undefined) {
      this.#error(new VirtioError("InvalidInput", `rng has no queue ${index}`));
      return false;
    }
    return serveQueue(config.memory, qc, this.#fill, (e) => this.#error(e)).more;
  }

  // virtio 1.2 §5.4.6: fill every device-writable byte; readable buffers are ignored.
  #fill = (chain: DescriptorChain): number => {
    const w = chain.writer;
    const scratch = this.#scratch;
    while (w.remaining > 0) {
      const n = Math.min(w.remaining, RNG_CHUNK);
      const chunk = scratch.subarray(0, n);
      this.#source(chunk);
      w.write(chunk);
    }
    this.bytesServed += w.written;
    this.requestsServed++;
    return w.written;
  };

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}
