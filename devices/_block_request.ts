/**
 * The wire format of virtio-blk requests and a pure parser for it: it checks a
 * descriptor chain's shape and bounds before any I/O happens.
 *
 * @module
 */

import type { DescriptorChain } from "../queue/chain.ts";

// ---------------------------------------------------------------------------
// Wire constants (virtio 1.2 §5.2.6)

/** The protocol's sector size in bytes; every `sector` field counts these. */
export const SECTOR_SIZE = 512;
/** log2 of {@linkcode SECTOR_SIZE}. */
export const SECTOR_SHIFT = 9;
/** Size of the request header: type, reserved, sector. */
export const BLK_HEADER_SIZE = 16;
/** Size of one discard / write-zeroes segment. */
export const BLK_SEGMENT_SIZE = 16;
/** Length of the device ID string returned by GET_ID. */
export const BLK_ID_BYTES = 20;

/** Request type: read sectors into device-writable data. */
export const VIRTIO_BLK_T_IN = 0;
/** Request type: write device-readable data to sectors. */
export const VIRTIO_BLK_T_OUT = 1;
/** Request type: make completed writes durable. */
export const VIRTIO_BLK_T_FLUSH = 4;
/** Legacy synonym of {@linkcode VIRTIO_BLK_T_FLUSH} (virtio 1.2 §5.2.6.3). */
export const VIRTIO_BLK_T_FLUSH_OUT = 5;
/** Request type: fetch the device ID string. */
export const VIRTIO_BLK_T_GET_ID = 8;
/** Request type: storage lifetime metrics (not supported: answered UNSUPP). */
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
/** Request type: discard sector ranges. */
export const VIRTIO_BLK_T_DISCARD = 11;
/** Request type: zero sector ranges, optionally deallocating them. */
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
/** Request type: secure erase (not supported: answered UNSUPP). */
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Status: success. */
export const VIRTIO_BLK_S_OK = 0;
/** Status: device or driver error. */
export const VIRTIO_BLK_S_IOERR = 1;
/** Status: request not supported by the device. */
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Segment flag: write-zeroes may deallocate the range. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

// ---------------------------------------------------------------------------
// Encoders: what a driver puts in its device-readable buffers (the parser's inverse)

/**
 * Encode a request header (virtio 1.2 §5.2.6): le32 type, le32 reserved (0), le64 sector.
 * For drivers, test harnesses and benchmarks.
 * @param type `VIRTIO_BLK_T_*`.
 * @param sector First sector; a bigint reaches all 64 bits.
 * @returns The 16 bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { blockRequestHeader, VIRTIO_BLK_T_IN } from "./block.ts";
 * const h = blockRequestHeader(VIRTIO_BLK_T_IN, 8);
 * assert.equal(h.length, 16);
 * assert.equal(h[8], 8);
 * ```
 */
export function blockRequestHeader(type: number, sector: number | bigint = 0): Uint8Array {
  const b = new Uint8Array(BLK_HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return b;
}

/**
 * Encode one DISCARD / WRITE_ZEROES segment (virtio 1.2 §5.2.6): le64 sector, le32 number of
 * sectors, le32 flags.
 * @param sector First sector; a bigint reaches all 64 bits.
 * @param numSectors Number of sectors.
 * @param flags `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP` or 0.
 * @returns The 16 bytes.
 */
export function blockRangeSegment(
  sector: number | bigint,
  numSectors: number,
  flags = 0,
): Uint8Array {
  const b = new Uint8Array(BLK_SEGMENT_SIZE);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(sector), true);
  v.setUint32(8, numSectors, true);
  v.setUint32(12, flags, true);
  return b;
}

// ---------------------------------------------------------------------------
// Parser types

/** What the parser needs to know about the device. */
export interface BlockRequestLimits {
  /** Device size in 512-byte sectors. */
  capacitySectors: number;
  /** Whether the device is read-only (VIRTIO_BLK_F_RO offered). */
  readOnly: boolean;
  /** Logical block size in bytes (a multiple of 512); ranges must be aligned to it. */
  blockSize: number;
  /** Whether VIRTIO_BLK_T_DISCARD is supported (VIRTIO_BLK_F_DISCARD negotiated). */
  discard: boolean;
  /** Most segments in one discard request. */
  maxDiscardSegments: number;
  /** Most sectors in one discard segment. */
  maxDiscardSectors: number;
  /** Whether VIRTIO_BLK_T_WRITE_ZEROES is supported (VIRTIO_BLK_F_WRITE_ZEROES negotiated). */
  writeZeroes: boolean;
  /** Most segments in one write-zeroes request. */
  maxWriteZeroesSegments: number;
  /** Most sectors in one write-zeroes segment. */
  maxWriteZeroesSectors: number;
}

/** One range of a discard or write-zeroes request, already bounds-checked. */
export interface BlockSegment {
  /** First sector. */
  readonly sector: number;
  /** Number of sectors. */
  readonly numSectors: number;
  /** Byte offset on the disk (`sector * 512`). */
  readonly offset: number;
  /** Byte length (`numSectors * 512`). */
  readonly length: number;
  /** The UNMAP flag (write-zeroes only). */
  readonly unmap: boolean;
}

/** A well-formed request, ready for I/O. */
export interface BlockRequest {
  /** Discriminant: the request can be served. */
  readonly ok: true;
  /** `VIRTIO_BLK_T_*` (FLUSH_OUT is reported as FLUSH). */
  readonly type: number;
  /** First sector (IN / OUT; 0 otherwise). */
  readonly sector: number;
  /** Byte offset on the disk (`sector * 512`). */
  readonly offset: number;
  /**
   * Data bytes: what IN reads into the writable part, what OUT writes from the
   * readable part, the room GET_ID has; 0 for other types.
   */
  readonly length: number;
  /** The ranges of a DISCARD or WRITE_ZEROES request; empty for other types. */
  readonly segments: readonly BlockSegment[];
}

/** A request that cannot be served. */
export interface BlockRequestError {
  /** Discriminant: the request is refused. */
  readonly ok: false;
  /**
   * The status byte to answer with (`VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`),
   * or `undefined` when the chain has no device-writable byte to put it in.
   */
  readonly status: number | undefined;
  /** Why, for the host's logs. */
  readonly reason: string;
}

/** Result of {@linkcode parseRequest}. */
export type ParsedRequest = BlockRequest | BlockRequestError;

const NO_SEGMENTS: readonly BlockSegment[] = Object.freeze([]);

// One scratch header reused by every parse: the parser never runs re-entrantly.
const scratch = new Uint8Array(BLK_HEADER_SIZE);
const scratchView = new DataView(scratch.buffer);

function fail(status: number | undefined, reason: string): BlockRequestError {
  return { ok: false, status, reason };
}

function ioerr(reason: string): BlockRequestError {
  return fail(VIRTIO_BLK_S_IOERR, reason);
}

/** Reads `sector` (le64) at `at` in the scratch buffer; -1 when above 2^53 - 1. */
function scratchSector(at: number): number {
  const lo = scratchView.getUint32(at, true);
  const hi = scratchView.getUint32(at + 4, true);
  return hi > 0x1fffff ? -1 : hi * 0x1_0000_0000 + lo;
}

/**
 * Checks that `[sector, sector + n)` lies on the disk and on block boundaries,
 * without forming any product that could leave the safe integer range.
 */
function rangeProblem(
  sector: number,
  n: number,
  limits: BlockRequestLimits,
): string | undefined {
  const cap = limits.capacitySectors;
  if (sector < 0 || sector > cap || n > cap - sector) {
    return `sectors ${sector < 0 ? ">= 2^53" : sector} +${n} beyond capacity ${cap}`;
  }
  const perBlock = limits.blockSize >>> SECTOR_SHIFT;
  if (perBlock > 1 && (sector % perBlock !== 0 || n % perBlock !== 0)) {
    return `sectors ${sector} +${n} not aligned to ${limits.blockSize}-byte blocks`;
  }
  return undefined;
}

/**
 * Parse and validate one virtio-blk request (virtio 1.2 §5.2.6): a 16-byte
 * device-readable header, the data, and a device-writable status byte, which
 * is taken to be the last device-writable byte of the chain.
 *
 * Pure apart from consuming the chain's reader: the header (and, for DISCARD
 * and WRITE_ZEROES, the segments) are read, so an OUT request's data is next
 * on `chain.reader`. The writer is left untouched. Nothing is thrown for a
 * malformed chain; the refusal comes back as a {@linkcode BlockRequestError}.
 *
 * - No device-writable byte: `status` is `undefined` (the chain cannot be answered).
 * - Short header, data in the wrong direction, a length that is not a
 *   multiple of 512, a range past the capacity or off block boundaries, a
 *   write to a read-only disk, too many sectors in a segment: `VIRTIO_BLK_S_IOERR`.
 * - An unknown or unnegotiated type, too many segments, reserved segment
 *   flags, UNMAP on a discard: `VIRTIO_BLK_S_UNSUPP`.
 *
 * @param chain The chain, fresh off the queue.
 * @param limits The device's geometry and negotiated features.
 * @returns The request, or why it is refused.
 *
 * @example Refuse a read past the end of the disk
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { SplitQueue } from "../queue/split.ts";
 * import { DriverQueue } from "../testing/queue_driver.ts";
 * import { parseRequest, VIRTIO_BLK_S_IOERR } from "./block.ts";
 * const mem = GuestMemory.create(1 << 20);
 * const driver = new DriverQueue(mem, { size: 8 });
 * const queue = new SplitQueue(8);
 * driver.program(queue);
 * const header = new Uint8Array(16);
 * new DataView(header.buffer).setUint32(8, 100, true); // sector 100, type IN
 * driver.addChain([{ readable: header }, { writable: 512 }, { writable: 1 }]);
 * const req = parseRequest(queue.pop(mem)!, {
 *   capacitySectors: 100, readOnly: false, blockSize: 512,
 *   discard: false, maxDiscardSegments: 0, maxDiscardSectors: 0,
 *   writeZeroes: false, maxWriteZeroesSegments: 0, maxWriteZeroesSectors: 0,
 * });
 * assert.equal(req.ok, false);
 * assert.equal(req.ok ? 0 : req.status, VIRTIO_BLK_S_IOERR);
 * ```
 */
export function parseRequest(chain: DescriptorChain, limits: BlockRequestLimits): ParsedRequest {
  const writable = chain.writableBytes;
  const readable = chain.readableBytes;
  // virtio 1.2 §5.2.6: the status byte is device-writable and comes last.
  if (writable < 1) return fail(undefined, "no device-writable status byte");
  if (readable < BLK_HEADER_SIZE) {
    return ioerr(`header of ${readable} bytes, need ${BLK_HEADER_SIZE}`);
  }
  chain.reader.readExact(scratch);
  const type = scratchView.getUint32(0, true);
  const sector = scratchSector(8);
  const readData = readable - BLK_HEADER_SIZE;
  const writeData = writable - 1;

  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const isIn = type === VIRTIO_BLK_T_IN;
      // virtio 1.2 §5.2.6.2: a read-only device fails every write without touching data.
      if (!isIn && limits.readOnly) return ioerr("write to a read-only device");
      if (isIn ? readData !== 0 : writeData !== 0) {
        return ioerr(
          isIn ? `IN with ${readData} device-readable data bytes` : `OUT with ${writeData} ` +
            "device-writable data bytes",
        );
      }
      const length = isIn ? writeData : readData;
      // virtio 1.2 §5.2.6.1: IN and OUT data is a whole number of sectors.
      if ((length & (SECTOR_SIZE - 1)) !== 0) {
        return ioerr(`data length ${length} is not a multiple of ${SECTOR_SIZE}`);
      }
      const problem = rangeProblem(sector, length / SECTOR_SIZE, limits);
      if (problem !== undefined) return ioerr(problem);
      return {
        ok: true,
        type,
        sector,
        offset: sector * SECTOR_SIZE,
        length,
        segments: NO_SEGMENTS,
      };
    }
    case VIRTIO_BLK_T_FLUSH:
    case VIRTIO_BLK_T_FLUSH_OUT:
      // virtio 1.2 §5.2.6.1: sector is 0 and there is no data; neither matters to a flush.
      return {
        ok: true,
        type: VIRTIO_BLK_T_FLUSH,
        sector: 0,
        offset: 0,
        length: 0,
        segments: NO_SEGMENTS,
      };
    case VIRTIO_BLK_T_GET_ID:
      if (readData !== 0) return ioerr(`GET_ID with ${readData} device-readable data bytes`);
      if (writeData === 0) return ioerr("GET_ID without room for the ID");
      return { ok: true, type, sector: 0, offset: 0, length: writeData, segments: NO_SEGMENTS };
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
      return parseRanges(chain, type, readData, writeData, limits);
    default:
      return fail(VIRTIO_BLK_S_UNSUPP, `unsupported request type ${type}`);
  }
}

// virtio 1.2 §5.2.6: DISCARD and WRITE_ZEROES carry 16-byte segments as device-readable data.
function parseRanges(
  chain: DescriptorChain,
  type: number,
  readData: number,
  writeData: number,
  limits: BlockRequestLimits,
): ParsedRequest {
  const discard = type === VIRTIO_BLK_T_DISCARD;
  const name = discard ? "DISCARD" : "WRITE_ZEROES";
  if (!(discard ? limits.discard : limits.writeZeroes)) {
    return fail(VIRTIO_BLK_S_UNSUPP, `${name} not negotiated`);
  }
  if (limits.readOnly) return ioerr(`${name} on a read-only device`);
  if (writeData !== 0) return ioerr(`${name} with ${writeData} device-writable data bytes`);
  if (readData === 0 || readData % BLK_SEGMENT_SIZE !== 0) {
    return ioerr(`${name} data of ${readData} bytes is not whole segments`);
  }
  const count = readData / BLK_SEGMENT_SIZE;
  const maxSeg = discard ? limits.maxDiscardSegments : limits.maxWriteZeroesSegments;
  if (count > maxSeg) {
    return fail(VIRTIO_BLK_S_UNSUPP, `${name} with ${count} segments, at most ${maxSeg}`);
  }
  const maxSectors = discard ? limits.maxDiscardSectors : limits.maxWriteZeroesSectors;
  const segments: BlockSegment[] = [];
  const reader = chain.reader;
  let unsupp: string | undefined;
  let bad: string | undefined;
  for (let i = 0; i < count; i++) {
    reader.readExact(scratch);
    const sector = scratchSector(0);
    const numSectors = scratchView.getUint32(8, true);
    const flags = scratchView.getUint32(12, true);
    const unmap = (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0;
    // virtio 1.2 §5.2.6.2: unknown flags, or UNMAP on a discard, are UNSUPP, which wins.
    if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) {
      unsupp ??= `${name} segment ${i} has reserved flags 0x${flags.toString(16)}`;
      continue;
    }
    if (discard && unmap) {
      unsupp ??= `DISCARD segment ${i} has the UNMAP flag`;
      continue;
    }
    if (bad !== undefined) continue;
    if (numSectors > maxSectors) {
      bad = `${name} segment ${i} of ${numSectors} sectors, at most ${maxSectors}`;
      continue;
    }
    const problem = rangeProblem(sector, numSectors, limits);
    if (problem !== undefined) {
      bad = `${name} segment ${i}: ${problem}`;
      continue;
    }
    segments.push({
      sector,
      numSectors,
      offset: sector * SECTOR_SIZE,
      length: numSectors * SECTOR_SIZE,
      unmap,
    });
  }
  if (unsupp !== undefined) return fail(VIRTIO_BLK_S_UNSUPP, unsupp);
  if (bad !== undefined) return ioerr(bad);
  return { ok: true, type, sector: 0, offset: 0, length: 0, segments };
}
