/**
 * Serving one virtio-blk request chain: parse, do the I/O on the backend, write the status.
 * Shared by {@linkcode BlockDevice} on the event loop and by the Worker that serves one of its
 * queues on a thread of its own (`_block_thread.ts`): the state both read (the configuration
 * space with the cache mode and the capacity, the counters) lives in SharedArrayBuffers.
 *
 * @module
 */

import type { DescriptorChain } from "../queue/chain.ts";
import { VirtioError } from "./errors.ts";
import {
  BLK_ID_BYTES,
  type BlockRequestLimits,
  parseRequest,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "./_block_request.ts";
import type { BlockBackend } from "./_block_backend.ts";

/** Byte offset of `capacity` (le64) in the configuration space (virtio 1.2 §5.2.4). */
export const CONFIG_CAPACITY = 0;
/** Byte offset of `writeback` (u8) in the configuration space. */
export const CONFIG_WRITEBACK = 32;

/** Column of each counter in a row of the shared counters. */
export const Stat = {
  reads: 0,
  writes: 1,
  flushes: 2,
  discards: 3,
  bytesRead: 4,
  bytesWritten: 5,
  errors: 6,
} as const;
/** Counters per row. */
export const STAT_FIELDS = 7;

/** What a {@linkcode BlockRequestHandler} serves with. */
export interface BlockHandlerOptions {
  /** The storage. */
  backend: BlockBackend;
  /** Request limits; `capacitySectors` is refreshed from `config` for each request. */
  limits: BlockRequestLimits;
  /** The GET_ID answer (20 bytes, NUL-padded). */
  id: Uint8Array;
  /** The configuration space (shared with the device: cache mode and capacity). */
  config: DataView;
  /** Counters this handler adds to (one row of the device's, see {@linkcode Stat}). */
  stats: Float64Array;
  /** Whether VIRTIO_BLK_F_FLUSH was negotiated (without it every write is made durable). */
  flushNegotiated: () => boolean;
  /** Receives every refused or failed request. */
  onError: (err: VirtioError) => void;
}

/** Serves virtio-blk request chains (virtio 1.2 §5.2.6) through a {@linkcode BlockBackend}. */
export class BlockRequestHandler {
  readonly #o: BlockHandlerOptions;
  readonly #views: Uint8Array[] = [];

  /**
   * Create it.
   * @param options The storage, limits, shared state and error hook.
   */
  constructor(options: BlockHandlerOptions) {
    this.#o = options;
  }

  /** Whether writes complete only once durable (writethrough, or FLUSH not negotiated). */
  get writethrough(): boolean {
    return !this.#o.flushNegotiated() || this.#o.config.getUint8(CONFIG_WRITEBACK) === 0;
  }

  /** Forget scratch state (device reset). */
  reset(): void {
    this.#views.length = 0;
  }

  /**
   * Serve one chain.
   * @param chain The request.
   * @returns The used length.
   */
  readonly handle = (chain: DescriptorChain): number => {
    const o = this.#o;
    const limits = o.limits;
    const cfg = o.config;
    // The capacity may change under the driver (updateCapacity), on another thread.
    limits.capacitySectors = cfg.getUint32(CONFIG_CAPACITY, true) +
      cfg.getUint32(CONFIG_CAPACITY + 4, true) * 0x1_0000_0000;
    const stats = o.stats;
    const req = parseRequest(chain, limits);
    if (!req.ok) {
      stats[Stat.errors]++;
      o.onError(new VirtioError("InvalidInput", `virtio-blk chain ${chain.head}: ${req.reason}`));
      // No writable byte: nothing can be answered; return the chain empty.
      if (req.status === undefined) return 0;
      return complete(chain, req.status, 0);
    }
    const backend = o.backend;
    const views = this.#views;
    // Data bytes written in front of the status byte: IN's data and GET_ID's ID once done;
    // nothing for the other types, whatever writable room the driver gave them.
    let dataWritten = 0;
    try {
      switch (req.type) {
        case VIRTIO_BLK_T_IN:
          if (req.length > 0) {
            backend.read(chain.writer.views(req.length, views), req.offset);
            views.length = 0;
          }
          dataWritten = req.length;
          stats[Stat.reads]++;
          stats[Stat.bytesRead] += req.length;
          break;
        case VIRTIO_BLK_T_OUT:
          if (req.length > 0) {
            backend.write(chain.reader.views(req.length, views), req.offset);
            views.length = 0;
          }
          // virtio 1.2 §5.2.6.2: in writethrough mode a write is stable when it completes.
          if (this.writethrough) backend.flush();
          stats[Stat.writes]++;
          stats[Stat.bytesWritten] += req.length;
          break;
        case VIRTIO_BLK_T_FLUSH:
          backend.flush();
          stats[Stat.flushes]++;
          break;
        case VIRTIO_BLK_T_GET_ID: {
          const w = chain.writer;
          const n = Math.min(req.length, BLK_ID_BYTES);
          w.writeExact(o.id.subarray(0, n));
          if (req.length > n) w.fill(req.length - n);
          dataWritten = req.length;
          break;
        }
        case VIRTIO_BLK_T_DISCARD:
        case VIRTIO_BLK_T_WRITE_ZEROES: {
          const discard = req.type === VIRTIO_BLK_T_DISCARD;
          for (const s of req.segments) {
            if (discard) backend.discard(s.offset, s.length);
            else backend.writeZeroes(s.offset, s.length, s.unmap);
          }
          if (this.writethrough) backend.flush();
          stats[Stat.discards]++;
          break;
        }
      }
    } catch (err) {
      views.length = 0;
      stats[Stat.errors]++;
      const msg = err instanceof Error ? err.message : String(err);
      o.onError(
        new VirtioError("IOError", `virtio-blk chain ${chain.head}: ${msg}`, { cause: err }),
      );
      // A read that failed midway may have filled part of the data, but how much is not known
      // (the backend throws, it does not count): none of it is claimed. virtio 1.2 §2.7.8.2
      // lets the used length fall short of what was written, never exceed it.
      return complete(chain, VIRTIO_BLK_S_IOERR, 0);
    }
    return complete(chain, VIRTIO_BLK_S_OK, dataWritten);
  };
}

/**
 * Put the status in the last device-writable byte and return the used length.
 *
 * virtio 1.2 §2.7.8.2: the used length counts bytes written from the start
 * of the chain's writable part, and the device may write beyond it. So it is
 * every writable byte when the data in front of the status was all written
 * (IN and GET_ID that succeeded, or a request whose writable part is only
 * the status byte); otherwise the status byte follows bytes left untouched
 * (a FLUSH given a writable data buffer, a refused or failed IN) and cannot
 * be counted without claiming them, so the length is the data prefix written.
 * @param chain The chain.
 * @param status `VIRTIO_BLK_S_*`.
 * @param dataWritten Bytes written from the start of the writable part, before the status.
 * @returns The used length.
 */
function complete(chain: DescriptorChain, status: number, dataWritten: number): number {
  const w = chain.writer;
  const left = w.remaining;
  if (left > 1) w.skip(left - 1);
  w.writeU8(status);
  const total = chain.writableBytes;
  return dataWritten === total - 1 ? total : dataWritten;
}
