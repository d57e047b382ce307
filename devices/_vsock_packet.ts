/**
 * The wire format of virtio-vsock packets (virtio 1.2 §5.10.6) and the pure checks a packet
 * from the driver goes through before the device acts on it: guest bytes in, a decoded header
 * and a verdict (accept, answer with RST, or drop) out. The credit arithmetic of §5.10.6.3 is
 * here too, in wrapping 32-bit form, so that it can be table-tested on its own.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Wire constants (virtio 1.2 §5.10)

/** Bytes of `struct virtio_vsock_hdr`. */
export const VSOCK_HEADER_SIZE = 44;
/** Bytes of `struct virtio_vsock_event`. */
export const VSOCK_EVENT_SIZE = 4;
/** The host's well-known CID (virtio 1.2 §5.10.4). */
export const VSOCK_HOST_CID = 2;

/** Feature bit: stream sockets (virtio 1.2 §5.10.3). */
export const VIRTIO_VSOCK_F_STREAM = 0;
/** Feature bit: seqpacket sockets. */
export const VIRTIO_VSOCK_F_SEQPACKET = 1;
/** Feature bit: stream sockets are not implied by the absence of VIRTIO_VSOCK_F_STREAM. */
export const VIRTIO_VSOCK_F_NO_IMPLIED_STREAM = 2;

/** Socket type: stream (virtio 1.2 §5.10.6.2). */
export const VIRTIO_VSOCK_TYPE_STREAM = 1;
/** Socket type: seqpacket. */
export const VIRTIO_VSOCK_TYPE_SEQPACKET = 2;

/** Operation: invalid (never valid on the wire). */
export const VIRTIO_VSOCK_OP_INVALID = 0;
/** Operation: connection request. */
export const VIRTIO_VSOCK_OP_REQUEST = 1;
/** Operation: connection accepted. */
export const VIRTIO_VSOCK_OP_RESPONSE = 2;
/** Operation: reset (refuse or abort a connection). */
export const VIRTIO_VSOCK_OP_RST = 3;
/** Operation: shutdown, with `VIRTIO_VSOCK_SHUTDOWN_*` in `flags`. */
export const VIRTIO_VSOCK_OP_SHUTDOWN = 4;
/** Operation: payload. */
export const VIRTIO_VSOCK_OP_RW = 5;
/** Operation: the sender's credit (`buf_alloc`, `fwd_cnt`). */
export const VIRTIO_VSOCK_OP_CREDIT_UPDATE = 6;
/** Operation: ask the peer for a CREDIT_UPDATE. */
export const VIRTIO_VSOCK_OP_CREDIT_REQUEST = 7;

/** SHUTDOWN flag: the sender will receive no more data. */
export const VIRTIO_VSOCK_SHUTDOWN_RCV = 1;
/** SHUTDOWN flag: the sender will send no more data. */
export const VIRTIO_VSOCK_SHUTDOWN_SEND = 2;
/** Both SHUTDOWN flags. */
export const VIRTIO_VSOCK_SHUTDOWN_BOTH = 3;

/** RW flag (seqpacket): last packet of a message (virtio 1.2 §5.10.6.4.1). */
export const VIRTIO_VSOCK_SEQ_EOM = 1;
/** RW flag (seqpacket): last packet of a record. */
export const VIRTIO_VSOCK_SEQ_EOR = 2;

/** Event: the transport was reset; the driver drops its connections and re-reads the CID. */
export const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0;

/** Byte offsets of the fields of `struct virtio_vsock_hdr` (all little-endian). */
export const VsockHeaderOffset = {
  /** le64. */
  srcCid: 0,
  /** le64. */
  dstCid: 8,
  /** le32. */
  srcPort: 16,
  /** le32. */
  dstPort: 20,
  /** le32: payload bytes. */
  len: 24,
  /** le16: `VIRTIO_VSOCK_TYPE_*`. */
  type: 28,
  /** le16: `VIRTIO_VSOCK_OP_*`. */
  op: 30,
  /** le32. */
  flags: 32,
  /** le32. */
  bufAlloc: 36,
  /** le32. */
  fwdCnt: 40,
} as const;

/**
 * A decoded packet header. CIDs are le64 on the wire with the upper 32 bits reserved
 * (virtio 1.2 §5.10.4): the low halves are in `srcCid`/`dstCid` and the high halves in
 * `srcCidHigh`/`dstCidHigh`, so no value is lost before the checks see it.
 */
export interface VsockHeader {
  /** Low 32 bits of the source CID. */
  srcCid: number;
  /** High 32 bits of the source CID (reserved: must be 0). */
  srcCidHigh: number;
  /** Low 32 bits of the destination CID. */
  dstCid: number;
  /** High 32 bits of the destination CID (reserved: must be 0). */
  dstCidHigh: number;
  /** Source port. */
  srcPort: number;
  /** Destination port. */
  dstPort: number;
  /** Payload length the header claims. */
  len: number;
  /** `VIRTIO_VSOCK_TYPE_*`. */
  type: number;
  /** `VIRTIO_VSOCK_OP_*`. */
  op: number;
  /** Operation flags. */
  flags: number;
  /** The sender's receive buffer size for this connection. */
  bufAlloc: number;
  /** The sender's free-running count of bytes it has received and consumed. */
  fwdCnt: number;
}

/**
 * A zeroed header, to be filled by {@linkcode decodeVsockHeader} (one per device, reused).
 * @returns The header.
 */
export function emptyVsockHeader(): VsockHeader {
  return {
    srcCid: 0,
    srcCidHigh: 0,
    dstCid: 0,
    dstCidHigh: 0,
    srcPort: 0,
    dstPort: 0,
    len: 0,
    type: 0,
    op: 0,
    flags: 0,
    bufAlloc: 0,
    fwdCnt: 0,
  };
}

/**
 * Decode the 44 header bytes at `view`'s start into `out`.
 * @param view At least {@linkcode VSOCK_HEADER_SIZE} bytes.
 * @param out The header to fill.
 * @returns `out`.
 * @throws {RangeError} When `view` is shorter than a header.
 */
export function decodeVsockHeader(view: DataView, out: VsockHeader): VsockHeader {
  const O = VsockHeaderOffset;
  out.srcCid = view.getUint32(O.srcCid, true);
  out.srcCidHigh = view.getUint32(O.srcCid + 4, true);
  out.dstCid = view.getUint32(O.dstCid, true);
  out.dstCidHigh = view.getUint32(O.dstCid + 4, true);
  out.srcPort = view.getUint32(O.srcPort, true);
  out.dstPort = view.getUint32(O.dstPort, true);
  out.len = view.getUint32(O.len, true);
  out.type = view.getUint16(O.type, true);
  out.op = view.getUint16(O.op, true);
  out.flags = view.getUint32(O.flags, true);
  out.bufAlloc = view.getUint32(O.bufAlloc, true);
  out.fwdCnt = view.getUint32(O.fwdCnt, true);
  return out;
}

/**
 * Encode `h` into the 44 bytes at `view`'s start. Every value is truncated to its field.
 * @param view At least {@linkcode VSOCK_HEADER_SIZE} bytes.
 * @param h The header.
 * @throws {RangeError} When `view` is shorter than a header.
 */
export function encodeVsockHeader(view: DataView, h: Readonly<VsockHeader>): void {
  const O = VsockHeaderOffset;
  view.setUint32(O.srcCid, h.srcCid >>> 0, true);
  view.setUint32(O.srcCid + 4, h.srcCidHigh >>> 0, true);
  view.setUint32(O.dstCid, h.dstCid >>> 0, true);
  view.setUint32(O.dstCid + 4, h.dstCidHigh >>> 0, true);
  view.setUint32(O.srcPort, h.srcPort >>> 0, true);
  view.setUint32(O.dstPort, h.dstPort >>> 0, true);
  view.setUint32(O.len, h.len >>> 0, true);
  view.setUint16(O.type, h.type & 0xffff, true);
  view.setUint16(O.op, h.op & 0xffff, true);
  view.setUint32(O.flags, h.flags >>> 0, true);
  view.setUint32(O.bufAlloc, h.bufAlloc >>> 0, true);
  view.setUint32(O.fwdCnt, h.fwdCnt >>> 0, true);
}

/**
 * Encode a packet header as a driver (or a test) puts it in a tx buffer: the fields not given
 * are 0. For drivers, test harnesses and benchmarks.
 * @param fields The fields.
 * @returns The 44 bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_TYPE_STREAM, vsockHeader } from "./vsock.ts";
 * const h = vsockHeader({ srcCid: 3, dstCid: 2, op: VIRTIO_VSOCK_OP_REQUEST, type: VIRTIO_VSOCK_TYPE_STREAM });
 * assert.equal(h.length, 44);
 * assert.equal(h[0], 3);
 * ```
 */
export function vsockHeader(fields: Partial<VsockHeader>): Uint8Array {
  const b = new Uint8Array(VSOCK_HEADER_SIZE);
  encodeVsockHeader(new DataView(b.buffer), { ...emptyVsockHeader(), ...fields });
  return b;
}

// ---------------------------------------------------------------------------
// Checks of a packet from the driver (tx queue)

/** What the device does with a packet that fails a check. */
export type VsockRefusalAction =
  /** Answer with an RST to the packet's source (virtio 1.2 §5.10.6.3, §5.10.6.4). */
  | "rst"
  /** Drop it (count it): there is no one sensible to answer. */
  | "drop";

/** Why a packet from the driver was refused; each reason has a counter. */
export type VsockRefusalReason =
  /** The readable part of the chain is shorter than a header. */
  | "shortHeader"
  /** `src_cid` is not the guest's CID (virtio 1.2 §5.10.6.3: the driver MUST use it). */
  | "badSourceCid"
  /** A reserved upper CID half is not zero. */
  | "reservedCidBits"
  /** `dst_cid` is not the host: only a REQUEST is answered (RST), the rest is dropped. */
  | "badDestination"
  /** `type` is not one the negotiated features allow (virtio 1.2 §5.10.6.3: RST). */
  | "unknownType"
  /** `op` is not one of REQUEST … CREDIT_REQUEST. */
  | "unknownOp"
  /** `len` claims more payload than the chain's readable part holds. */
  | "lengthExceedsBuffer"
  /** `len` is larger than the device accepts in one packet. */
  | "lengthTooLarge";

/** What the checks need to know about the device. */
export interface VsockPacketLimits {
  /** The guest's CID (low 32 bits; the high half is always 0). */
  guestCid: number;
  /** Whether stream sockets are usable under the negotiated features. */
  stream: boolean;
  /** Whether seqpacket sockets are usable (VIRTIO_VSOCK_F_SEQPACKET negotiated). */
  seqpacket: boolean;
  /** Most payload bytes accepted in one packet. */
  maxPayload: number;
}

/** The checks' verdict: `null` when the packet may be acted on. */
export interface VsockRefusal {
  /** Why. */
  readonly reason: VsockRefusalReason;
  /** What to do. */
  readonly action: VsockRefusalAction;
}

const refusals = new Map<string, VsockRefusal>();
function refusal(reason: VsockRefusalReason, action: VsockRefusalAction): VsockRefusal {
  const key = `${reason}:${action}`;
  let r = refusals.get(key);
  if (r === undefined) {
    r = Object.freeze({ reason, action });
    refusals.set(key, r);
  }
  return r;
}

/**
 * Which socket types the negotiated features allow (virtio 1.2 §5.10.3.2): stream when
 * VIRTIO_VSOCK_F_STREAM was accepted, or no type feature was, or SEQPACKET was accepted
 * without NO_IMPLIED_STREAM; seqpacket only when SEQPACKET was accepted.
 * @param acked The acknowledged feature bits.
 * @returns The allowed types.
 */
export function vsockTypesAllowed(acked: bigint): { stream: boolean; seqpacket: boolean } {
  const has = (bit: number) => (acked & (1n << BigInt(bit))) !== 0n;
  const stream = has(VIRTIO_VSOCK_F_STREAM);
  const seqpacket = has(VIRTIO_VSOCK_F_SEQPACKET);
  const noImplied = has(VIRTIO_VSOCK_F_NO_IMPLIED_STREAM);
  return { stream: stream || !seqpacket || !noImplied, seqpacket };
}

/**
 * Check a packet the driver sent on the tx queue, before any connection state is looked at.
 * Checks run in this order: the header fits; the source CID is the guest's; no reserved CID
 * bits; the destination is the host; the type is allowed; the op is known; `len` fits in the
 * chain and in the device's limit. An RST is never answered with an RST (that could loop), so
 * every refusal of an RST packet is a drop.
 *
 * @param h The decoded header (ignored when `readable` is short).
 * @param readable Bytes in the chain's device-readable part, header included.
 * @param limits The guest CID, the allowed types and the payload limit.
 * @returns `null` to accept, or why and what to do.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkVsockPacket, decodeVsockHeader, emptyVsockHeader, vsockHeader } from "./vsock.ts";
 * const bytes = vsockHeader({ srcCid: 7, dstCid: 2, type: 1, op: 1 });
 * const h = decodeVsockHeader(new DataView(bytes.buffer), emptyVsockHeader());
 * const limits = { guestCid: 3, stream: true, seqpacket: false, maxPayload: 65536 };
 * assert.deepEqual(checkVsockPacket(h, 44, limits), { reason: "badSourceCid", action: "drop" });
 * ```
 */
export function checkVsockPacket(
  h: Readonly<VsockHeader>,
  readable: number,
  limits: VsockPacketLimits,
): VsockRefusal | null {
  if (readable < VSOCK_HEADER_SIZE) return refusal("shortHeader", "drop");
  // virtio 1.2 §5.10.6.3: the source is the guest's CID; anything else is spoofed, and an
  // answer would go to a CID the guest does not own.
  if (h.srcCid !== limits.guestCid) return refusal("badSourceCid", "drop");
  if (h.srcCidHigh !== 0 || h.dstCidHigh !== 0) return refusal("reservedCidBits", "drop");
  const isRst = h.op === VIRTIO_VSOCK_OP_RST;
  const answer: VsockRefusalAction = isRst ? "drop" : "rst";
  if (h.dstCid !== VSOCK_HOST_CID) {
    // Only the host is reachable through this device: a connection request elsewhere is
    // refused (no listener there), anything else has no connection to belong to.
    return refusal("badDestination", h.op === VIRTIO_VSOCK_OP_REQUEST ? "rst" : "drop");
  }
  // virtio 1.2 §5.10.6.3: a packet of an unknown type is answered with an RST.
  const typeOk = (h.type === VIRTIO_VSOCK_TYPE_STREAM && limits.stream) ||
    (h.type === VIRTIO_VSOCK_TYPE_SEQPACKET && limits.seqpacket);
  if (!typeOk) return refusal("unknownType", answer);
  if (h.op < VIRTIO_VSOCK_OP_REQUEST || h.op > VIRTIO_VSOCK_OP_CREDIT_REQUEST) {
    return refusal("unknownOp", answer);
  }
  // The payload follows the header in the readable part; bytes past `len` are ignored.
  if (h.len > readable - VSOCK_HEADER_SIZE) return refusal("lengthExceedsBuffer", answer);
  if (h.len > limits.maxPayload) return refusal("lengthTooLarge", answer);
  return null;
}

// ---------------------------------------------------------------------------
// Credit (virtio 1.2 §5.10.6.3): free-running 32-bit counters that wrap

/**
 * Bytes the peer can still take: `buf_alloc - (tx_cnt - fwd_cnt)` in wrapping 32-bit
 * arithmetic, and 0 (not negative) when the peer shrank its buffer below what is in flight.
 * @param peerBufAlloc The peer's `buf_alloc`.
 * @param txCnt Bytes sent to the peer so far (mod 2^32).
 * @param peerFwdCnt The peer's `fwd_cnt`.
 * @returns Free bytes, from 0 to 2^32 - 1.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { vsockPeerFree } from "./vsock.ts";
 * assert.equal(vsockPeerFree(4096, 10, 0xfffffffe), 4084); // 12 bytes in flight across the wrap
 * ```
 */
export function vsockPeerFree(peerBufAlloc: number, txCnt: number, peerFwdCnt: number): number {
  const inFlight = (txCnt - peerFwdCnt) >>> 0;
  const free = (peerBufAlloc >>> 0) - inFlight;
  return free > 0 ? free : 0;
}

/**
 * Whether a new `fwd_cnt` from the peer is consistent: it may only move forward, and never
 * past the bytes sent to it (`tx_cnt`), both modulo 2^32. A counter that goes backwards or
 * claims bytes never sent is a broken or hostile peer.
 * @param oldFwdCnt The peer's previous `fwd_cnt`.
 * @param newFwdCnt The one just received.
 * @param txCnt Bytes sent to the peer so far (mod 2^32).
 * @returns Whether to accept it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { vsockFwdCntValid } from "./vsock.ts";
 * assert.equal(vsockFwdCntValid(0xfffffff0, 5, 8), true); // forward across the wrap
 * assert.equal(vsockFwdCntValid(100, 90, 200), false); // backwards
 * assert.equal(vsockFwdCntValid(100, 201, 200), false); // past what was sent
 * ```
 */
export function vsockFwdCntValid(oldFwdCnt: number, newFwdCnt: number, txCnt: number): boolean {
  const advance = (newFwdCnt - oldFwdCnt) >>> 0;
  const inFlight = (txCnt - oldFwdCnt) >>> 0;
  return advance <= inFlight;
}

/**
 * Whether `len` more bytes from the peer fit in the buffer space this side advertised:
 * `(rx_cnt + len) - fwd_cnt <= buf_alloc` in wrapping 32-bit arithmetic (virtio 1.2
 * §5.10.6.3.1: the peer MUST only send what fits).
 * @param bufAlloc This side's `buf_alloc`.
 * @param rxCnt Bytes received from the peer so far (mod 2^32).
 * @param fwdCnt Bytes of those consumed so far (mod 2^32).
 * @param len The new packet's payload.
 * @returns Whether the packet is within credit.
 */
export function vsockWithinCredit(
  bufAlloc: number,
  rxCnt: number,
  fwdCnt: number,
  len: number,
): boolean {
  const held = (rxCnt - fwdCnt) >>> 0;
  return held + len <= bufAlloc;
}
