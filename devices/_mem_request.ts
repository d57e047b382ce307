/**
 * The wire format of virtio-mem (virtio 1.2 §5.15) and pure functions over it: parse a guest
 * request, and decide its answer against the device-managed region and its block bitmap. Guest
 * bytes in, a typed request and a typed outcome out; no I/O.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Feature bits (virtio 1.2 §5.15.3)

/** Feature bit: `node_id` is an ACPI proximity domain (not offered: our VMM has no SRAT). */
export const VIRTIO_MEM_F_ACPI_PXM = 0;
/** Feature bit: the driver may not read unplugged memory (not offered: it reads as zero). */
export const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE = 1;
/** Feature bit: the guest may suspend with memory plugged (not offered). */
export const VIRTIO_MEM_F_PERSISTENT_SUSPEND = 2;

// ---------------------------------------------------------------------------
// Requests and responses (virtio 1.2 §5.15.6)

/** Request: plug consecutive unplugged blocks. */
export const VIRTIO_MEM_REQ_PLUG = 0;
/** Request: unplug consecutive plugged blocks. */
export const VIRTIO_MEM_REQ_UNPLUG = 1;
/** Request: unplug every block. */
export const VIRTIO_MEM_REQ_UNPLUG_ALL = 2;
/** Request: the state of consecutive blocks. */
export const VIRTIO_MEM_REQ_STATE = 3;

/** Response: done. */
export const VIRTIO_MEM_RESP_ACK = 0;
/** Response: refused for now (plugging past `requested_size`). */
export const VIRTIO_MEM_RESP_NACK = 1;
/** Response: cannot be processed now. */
export const VIRTIO_MEM_RESP_BUSY = 2;
/** Response: an invalid request. */
export const VIRTIO_MEM_RESP_ERROR = 3;

/** State response: every block plugged. */
export const VIRTIO_MEM_STATE_PLUGGED = 0;
/** State response: every block unplugged. */
export const VIRTIO_MEM_STATE_UNPLUGGED = 1;
/** State response: some of each. */
export const VIRTIO_MEM_STATE_MIXED = 2;

/** Size of `struct virtio_mem_req`. */
export const MEM_REQUEST_SIZE = 24;
/** Size of `struct virtio_mem_resp`. */
export const MEM_RESPONSE_SIZE = 10;

/** Offsets in `struct virtio_mem_config` (virtio 1.2 §5.15.4); every field is read-only. */
export const MemConfigOffset = {
  /** le64: size and alignment of a block. */
  blockSize: 0,
  /** le16: ACPI proximity domain (VIRTIO_MEM_F_ACPI_PXM). */
  nodeId: 8,
  /** le64: guest-physical start of the region. */
  addr: 16,
  /** le64: size of the region. */
  regionSize: 24,
  /** le64: size of the part of the region blocks may be plugged in. */
  usableRegionSize: 32,
  /** le64: bytes plugged. */
  pluggedSize: 40,
  /** le64: bytes the device asks the driver to plug. */
  requestedSize: 48,
} as const;

/** Size of the configuration space. */
export const MEM_CONFIG_SIZE = 56;

/** A request the device can act on. */
export type MemRequest =
  /** PLUG, UNPLUG or STATE of `blocks` blocks from guest-physical `addr`. */
  | { type: "plug" | "unplug" | "state"; addr: number; blocks: number }
  /** UNPLUG ALL. */
  | { type: "unplugAll" };

/** A request the device answers with VIRTIO_MEM_RESP_ERROR without looking further. */
export interface MemRefusal {
  /** Why it is refused. */
  refused: "short" | "unknownType" | "addressTooLarge";
  /** The request type, when it could be read. */
  code?: number;
}

/**
 * Parse a request (virtio 1.2 §5.15.6): le16 type, 6 bytes of padding, then for PLUG, UNPLUG
 * and STATE le64 addr and le16 nb_blocks. Padding is ignored; UNPLUG ALL needs only its type.
 * @param bytes The request's device-readable bytes (the first 24 are enough).
 * @returns The request, or why it is refused.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeMemRequest, parseMemRequest, VIRTIO_MEM_REQ_PLUG } from "./_mem_request.ts";
 * const req = parseMemRequest(encodeMemRequest(VIRTIO_MEM_REQ_PLUG, 0x1_0000_0000, 2));
 * assert.deepEqual(req, { type: "plug", addr: 0x1_0000_0000, blocks: 2 });
 * ```
 */
export function parseMemRequest(bytes: Uint8Array): MemRequest | MemRefusal {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 2) return { refused: "short" };
  const code = view.getUint16(0, true);
  let type: "plug" | "unplug" | "state";
  switch (code) {
    case VIRTIO_MEM_REQ_UNPLUG_ALL:
      return { type: "unplugAll" };
    case VIRTIO_MEM_REQ_PLUG:
      type = "plug";
      break;
    case VIRTIO_MEM_REQ_UNPLUG:
      type = "unplug";
      break;
    case VIRTIO_MEM_REQ_STATE:
      type = "state";
      break;
    default:
      return { refused: "unknownType", code };
  }
  if (bytes.byteLength < 18) return { refused: "short", code };
  const lo = view.getUint32(8, true), hi = view.getUint32(12, true);
  if (hi > 0x1fffff) return { refused: "addressTooLarge", code };
  return { type, addr: hi * 0x1_0000_0000 + lo, blocks: view.getUint16(16, true) };
}

/**
 * Encode a request as a driver does (tests, harnesses).
 * @param type `VIRTIO_MEM_REQ_*`.
 * @param addr Guest-physical address of the first block (bigint for all 64 bits).
 * @param blocks nb_blocks (truncated to 16 bits).
 * @returns The 24 bytes.
 */
export function encodeMemRequest(type: number, addr: number | bigint = 0, blocks = 0): Uint8Array {
  const out = new Uint8Array(MEM_REQUEST_SIZE);
  const view = new DataView(out.buffer);
  view.setUint16(0, type, true);
  view.setBigUint64(8, BigInt.asUintN(64, BigInt(addr)), true);
  view.setUint16(16, blocks, true);
  return out;
}

/**
 * Decode a response as a driver does (tests, harnesses).
 * @param bytes The response bytes (at least 2; the state needs 10).
 * @returns The response type and, for a STATE answer, the state.
 */
export function decodeMemResponse(bytes: Uint8Array): { type: number; state?: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = view.getUint16(0, true);
  return bytes.byteLength >= MEM_RESPONSE_SIZE
    ? { type, state: view.getUint16(8, true) }
    : { type };
}

/**
 * The plug state of a virtio-mem region: one bit per block, and the region's geometry.
 * Request outcomes are decided here, purely; the device applies them to host memory.
 */
export class MemBlockMap {
  /** Size of one block (a power of two). */
  readonly blockSize: number;
  /** Blocks in the region. */
  readonly blocks: number;
  /** Guest-physical start of the region (0 until the VMM placed it). */
  addr = 0;
  /** Blocks in the usable part of the region, from its start. */
  usableBlocks: number;
  /** Blocks plugged. */
  plugged = 0;
  readonly #bits: Uint8Array;

  /**
   * Create it, every block unplugged.
   * @param blockSize Block size in bytes.
   * @param blocks Number of blocks.
   */
  constructor(blockSize: number, blocks: number) {
    this.blockSize = blockSize;
    this.blocks = blocks;
    this.usableBlocks = blocks;
    this.#bits = new Uint8Array(Math.ceil(blocks / 8));
  }

  /**
   * Whether block `i` is plugged.
   * @param i Block index.
   * @returns The state.
   */
  isPlugged(i: number): boolean {
    return (this.#bits[i >>> 3] & (1 << (i & 7))) !== 0;
  }

  /**
   * Plug or unplug blocks `[first, first + count)`.
   * @param first First block.
   * @param count Number of blocks.
   * @param plugged New state.
   */
  set(first: number, count: number, plugged: boolean): void {
    for (let i = first; i < first + count; i++) {
      const was = this.isPlugged(i);
      if (was === plugged) continue;
      if (plugged) this.#bits[i >>> 3] |= 1 << (i & 7);
      else this.#bits[i >>> 3] &= ~(1 << (i & 7));
      this.plugged += plugged ? 1 : -1;
    }
  }

  /**
   * The state of blocks `[first, first + count)`.
   * @param first First block.
   * @param count Number of blocks (at least 1).
   * @returns `VIRTIO_MEM_STATE_*`.
   */
  state(first: number, count: number): number {
    let on = 0;
    for (let i = first; i < first + count; i++) if (this.isPlugged(i)) on++;
    if (on === count) return VIRTIO_MEM_STATE_PLUGGED;
    return on === 0 ? VIRTIO_MEM_STATE_UNPLUGGED : VIRTIO_MEM_STATE_MIXED;
  }

  /**
   * Check a PLUG, UNPLUG or STATE range (virtio 1.2 §5.15.6.1–3): `addr` aligned to the block
   * size, at least one block, every block inside the usable region.
   * @param addr Guest-physical address of the first block.
   * @param blocks nb_blocks.
   * @returns The first block index, or -1 when the range is invalid.
   */
  firstBlock(addr: number, blocks: number): number {
    const bs = this.blockSize;
    if (blocks <= 0 || addr % bs !== 0 || addr < this.addr) return -1;
    const first = (addr - this.addr) / bs;
    return first + blocks <= this.usableBlocks ? first : -1;
  }
}

/** What the device does for one request. */
export interface MemOutcome {
  /** `VIRTIO_MEM_RESP_*`. */
  response: number;
  /** For an acknowledged STATE request, `VIRTIO_MEM_STATE_*`. */
  state?: number;
  /** Blocks to plug (ACK only). */
  plug?: { first: number; count: number };
  /** Blocks to unplug and release (ACK only); for UNPLUG ALL, the whole region. */
  unplug?: { first: number; count: number };
}

/**
 * Decide a request's answer (virtio 1.2 §5.15.6) without changing anything: invalid ranges and
 * blocks in the wrong state are ERROR; plugging past `requested_size` is NACK.
 * @param map The block bitmap and geometry.
 * @param requestedBlocks `requested_size` in blocks.
 * @param req The parsed request or refusal.
 * @returns The outcome.
 */
export function decideMemRequest(
  map: MemBlockMap,
  requestedBlocks: number,
  req: MemRequest | MemRefusal,
): MemOutcome {
  if ("refused" in req) return { response: VIRTIO_MEM_RESP_ERROR };
  if (req.type === "unplugAll") {
    return { response: VIRTIO_MEM_RESP_ACK, unplug: { first: 0, count: map.blocks } };
  }
  const first = map.firstBlock(req.addr, req.blocks);
  if (first < 0) return { response: VIRTIO_MEM_RESP_ERROR };
  const count = req.blocks;
  const state = map.state(first, count);
  switch (req.type) {
    case "state":
      return { response: VIRTIO_MEM_RESP_ACK, state };
    case "plug":
      if (state !== VIRTIO_MEM_STATE_UNPLUGGED) return { response: VIRTIO_MEM_RESP_ERROR };
      if (map.plugged + count > requestedBlocks) return { response: VIRTIO_MEM_RESP_NACK };
      return { response: VIRTIO_MEM_RESP_ACK, plug: { first, count } };
    case "unplug":
      if (state !== VIRTIO_MEM_STATE_PLUGGED) return { response: VIRTIO_MEM_RESP_ERROR };
      return { response: VIRTIO_MEM_RESP_ACK, unplug: { first, count } };
  }
}
