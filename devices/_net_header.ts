/**
 * The `virtio_net_hdr` that precedes every frame (virtio 1.2 §5.1.6): a pure parser that
 * checks it against the frame it describes and what was negotiated, plus the frame helpers
 * the device needs (software checksum, destination class, VLAN id, flow hash). Guest (or
 * backend) bytes in, a typed header or a typed refusal out; nothing here touches a queue.
 *
 * @module
 */

/** Size of `struct virtio_net_hdr` with `num_buffers` (VERSION_1 or MRG_RXBUF). */
export const NET_HDR_SIZE = 12;
/** Size of the legacy header without `num_buffers` (virtio 1.2 §5.1.6.1, legacy). */
export const NET_HDR_LEGACY_SIZE = 10;
/** Ethernet header length (destination, source, ethertype). */
export const ETH_HLEN = 14;
/** Length of one 802.1Q tag. */
export const VLAN_HLEN = 4;
/**
 * Largest frame with segmentation offload: 14 bytes of Ethernet header, 40 of IPv6 header
 * and 65535 of payload (virtio 1.2 §5.1.6.3), plus one VLAN tag.
 */
export const NET_MAX_GSO_FRAME: number = ETH_HLEN + 40 + 65535 + VLAN_HLEN;

/** Header flag: the checksum at `csum_start + csum_offset` is still to be computed. */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
/** Header flag: the device validated the packet checksum (receive only). */
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
/** Header flag: `csum_start`/`csum_offset` carry coalescing counts (RSC_EXT; never used here). */
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;

/** `gso_type`: no segmentation. */
export const VIRTIO_NET_HDR_GSO_NONE = 0;
/** `gso_type`: TCP over IPv4 segmentation. */
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
/** `gso_type`: UDP fragmentation (UFO). */
export const VIRTIO_NET_HDR_GSO_UDP = 3;
/** `gso_type`: TCP over IPv6 segmentation. */
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
/** `gso_type`: UDP segmentation (USO; never offered here). */
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
/** `gso_type` bit: the TCP segments carry ECN (needs HOST_ECN / GUEST_ECN). */
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** Byte offsets in `struct virtio_net_hdr` (all multi-byte fields little-endian). */
export const NetHeaderOffset = {
  /** u8. */
  flags: 0,
  /** u8. */
  gsoType: 1,
  /** le16. */
  hdrLen: 2,
  /** le16. */
  gsoSize: 4,
  /** le16. */
  csumStart: 6,
  /** le16. */
  csumOffset: 8,
  /** le16, only in the 12-byte header. */
  numBuffers: 10,
} as const;

/**
 * Why a frame was not passed on. Used for both directions in the device counters.
 *
 * - `shortChain`: a transmit chain shorter than the `virtio_net_hdr`.
 * - `runt`: a frame shorter than an Ethernet header.
 * - `badGso`: a `gso_type` that is unknown, not negotiated, without NEEDS_CSUM or
 *   `gso_size`, ECN where it is not allowed, or not matching the frame's ethertype.
 * - `badCsum`: NEEDS_CSUM without checksum offload, or `csum_start`/`csum_offset` outside
 *   the frame.
 * - `badHdrLen`: `hdr_len` beyond the frame.
 * - `oversize`: larger than the MTU (plus Ethernet and VLAN headers) without segmentation,
 *   or than {@linkcode NET_MAX_GSO_FRAME} with it.
 * - `gsoRefused`: a segmented frame for a driver that did not accept that offload.
 * - `noBuffer`: the driver posted no receive buffers and the backlog was full.
 * - `tooBig`: the driver's receive buffers can never hold the frame.
 * - `rxBuffer`: a receive buffer with no room for the header (a driver bug).
 * - `filtered`: refused by the receive filter (MAC table, RX mode, VLAN table).
 * - `linkDown`: the link is down.
 * - `truncated`: the backend had a frame longer than any frame can be.
 * - `backend`: the backend refused or failed the frame.
 */
export type NetDropReason =
  | "shortChain"
  | "runt"
  | "badGso"
  | "badCsum"
  | "badHdrLen"
  | "oversize"
  | "gsoRefused"
  | "noBuffer"
  | "tooBig"
  | "rxBuffer"
  | "filtered"
  | "linkDown"
  | "truncated"
  | "backend";

/** Every {@linkcode NetDropReason}, in a fixed order. */
export const NET_DROP_REASONS: readonly NetDropReason[] = Object.freeze([
  "shortChain",
  "runt",
  "badGso",
  "badCsum",
  "badHdrLen",
  "oversize",
  "gsoRefused",
  "noBuffer",
  "tooBig",
  "rxBuffer",
  "filtered",
  "linkDown",
  "truncated",
  "backend",
]);

/** What a header may carry: the offloads in effect for this direction, and the size limits. */
export interface NetHeaderRules {
  /** NEEDS_CSUM allowed (VIRTIO_NET_F_CSUM for transmit). */
  csum: boolean;
  /** GSO_TCPV4 allowed. */
  tso4: boolean;
  /** GSO_TCPV6 allowed. */
  tso6: boolean;
  /** The ECN bit allowed on TCP segmentation. */
  ecn: boolean;
  /** GSO_UDP allowed. */
  ufo: boolean;
  /** Largest frame without segmentation, Ethernet (and VLAN) header included. */
  maxFrame: number;
}

/** A checked header, filled in place by {@linkcode parseNetHeader} (no allocation). */
export interface NetHeader {
  /** Flags the device understands (NEEDS_CSUM, DATA_VALID); others are dropped. */
  flags: number;
  /** `gso_type` without the ECN bit. */
  gsoType: number;
  /** Whether the ECN bit was set. */
  ecn: boolean;
  /** `hdr_len` (a hint: never trusted beyond being inside the frame). */
  hdrLen: number;
  /** `gso_size` (the MSS). */
  gsoSize: number;
  /** `csum_start`. */
  csumStart: number;
  /** `csum_offset`. */
  csumOffset: number;
}

/**
 * A fresh {@linkcode NetHeader} to parse into.
 * @returns All fields zero.
 */
export function newNetHeader(): NetHeader {
  return { flags: 0, gsoType: 0, ecn: false, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
}

const ETH_P_IP = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const ETH_P_8021Q = 0x8100;
const ETH_P_8021AD = 0x88a8;

/**
 * The ethertype of the frame's network header, looking through one VLAN tag.
 * @param frame The frame's first bytes (at least 14; 18 to see through a tag).
 * @param at Where the frame starts in `frame`.
 * @param len Bytes of the frame available from `at`.
 * @returns The ethertype, or -1 when the frame is too short to say.
 */
export function l3Ethertype(frame: Uint8Array, at: number, len: number): number {
  if (len < ETH_HLEN) return -1;
  let et = (frame[at + 12] << 8) | frame[at + 13];
  if (et === ETH_P_8021Q || et === ETH_P_8021AD) {
    if (len < ETH_HLEN + VLAN_HLEN) return -1;
    et = (frame[at + 16] << 8) | frame[at + 17];
  }
  return et;
}

/**
 * Check a `virtio_net_hdr` against its frame (virtio 1.2 §5.1.6.2 and §5.1.6.4) and fill
 * `out`. The header is `bytes[0, hdrSize)`; the frame's first bytes (up to 18, enough for the
 * ethertype behind a VLAN tag) follow it in `bytes`, and the whole frame is `frameLen` long.
 *
 * Refused: a frame shorter than an Ethernet header (`runt`); a `gso_type` that is unknown,
 * not allowed by `rules`, without NEEDS_CSUM or `gso_size`, with an ECN bit not allowed or on
 * no segmentation, or not matching the frame's ethertype (`badGso`); NEEDS_CSUM not allowed,
 * or a checksum field outside the frame or inside the Ethernet header (`badCsum`); `hdr_len`
 * beyond the frame (`badHdrLen`); a frame above `rules.maxFrame` without segmentation or above
 * {@linkcode NET_MAX_GSO_FRAME} with it (`oversize`). Flag bits other than NEEDS_CSUM and
 * DATA_VALID are ignored, as the device must (§5.1.6.2.2). The legacy 10-byte header reads
 * the same fields.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { newNetHeader, parseNetHeader } from "./_net_header.ts";
 * const rules = { csum: true, tso4: true, tso6: true, ecn: false, ufo: false, maxFrame: 1518 };
 * const bytes = new Uint8Array(12 + 14);
 * bytes[0] = 1; // NEEDS_CSUM
 * bytes[6] = 14 + 20; // csum_start: a TCP header after IPv4
 * bytes[8] = 16; // csum_offset
 * const h = newNetHeader();
 * assert.equal(parseNetHeader(bytes, 12, 100, rules, h), undefined);
 * assert.equal(h.csumStart, 34);
 * assert.equal(parseNetHeader(bytes, 12, 40, rules, h), "badCsum"); // 34 + 16 + 2 > 40
 * ```
 *
 * @param bytes The header, then the frame's first bytes.
 * @param hdrSize 12, or 10 for a legacy driver without MRG_RXBUF.
 * @param frameLen Length of the whole frame.
 * @param rules What may be asked for, and the size limit.
 * @param out Filled with the header when it is accepted.
 * @returns `undefined` when accepted, else why not.
 */
export function parseNetHeader(
  bytes: Uint8Array,
  hdrSize: number,
  frameLen: number,
  rules: NetHeaderRules,
  out: NetHeader,
): NetDropReason | undefined {
  if (frameLen < ETH_HLEN) return "runt";
  const flags = bytes[0] & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID);
  const rawGso = bytes[1];
  const gso = rawGso & ~VIRTIO_NET_HDR_GSO_ECN;
  const ecn = (rawGso & VIRTIO_NET_HDR_GSO_ECN) !== 0;
  const hdrLen = bytes[2] | (bytes[3] << 8);
  const gsoSize = bytes[4] | (bytes[5] << 8);
  const csumStart = bytes[6] | (bytes[7] << 8);
  const csumOffset = bytes[8] | (bytes[9] << 8);
  const needsCsum = (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
  if (gso === VIRTIO_NET_HDR_GSO_NONE) {
    if (ecn) return "badGso";
  } else {
    // virtio 1.2 §5.1.6.2: segmentation only as negotiated, always with NEEDS_CSUM and an MSS.
    let allowed: boolean;
    switch (gso) {
      case VIRTIO_NET_HDR_GSO_TCPV4:
        allowed = rules.tso4;
        break;
      case VIRTIO_NET_HDR_GSO_TCPV6:
        allowed = rules.tso6;
        break;
      case VIRTIO_NET_HDR_GSO_UDP:
        allowed = rules.ufo && !ecn;
        break;
      default:
        allowed = false; // UDP_L4 (USO) and the tunnel bits are never offered
    }
    if (!allowed || (ecn && !rules.ecn) || !needsCsum || gsoSize === 0) return "badGso";
    const et = l3Ethertype(bytes, hdrSize, Math.min(frameLen, bytes.length - hdrSize));
    const v4 = et === ETH_P_IP;
    const v6 = et === ETH_P_IPV6;
    if (
      gso === VIRTIO_NET_HDR_GSO_TCPV4 ? !v4 : gso === VIRTIO_NET_HDR_GSO_TCPV6 ? !v6 : !v4 && !v6
    ) {
      return "badGso";
    }
  }
  if (needsCsum) {
    // §5.1.6.2.1: checksumming runs from csum_start to the end, the result lands 2 bytes at
    // csum_start + csum_offset: both inside the frame, and past the Ethernet header.
    if (!rules.csum || csumStart < ETH_HLEN || csumStart + csumOffset + 2 > frameLen) {
      return "badCsum";
    }
  }
  // hdr_len is only a hint (§5.1.6.2.2), but one past the end of the frame is a lie.
  if (hdrLen > frameLen) return "badHdrLen";
  if (frameLen > (gso === VIRTIO_NET_HDR_GSO_NONE ? rules.maxFrame : NET_MAX_GSO_FRAME)) {
    return "oversize";
  }
  out.flags = flags;
  out.gsoType = gso;
  out.ecn = ecn;
  out.hdrLen = hdrLen;
  out.gsoSize = gsoSize;
  out.csumStart = csumStart;
  out.csumOffset = csumOffset;
  return undefined;
}

/**
 * Write a 12-byte `virtio_net_hdr` for `h` into `dst` at `at`.
 * @param h The header.
 * @param dst Destination.
 * @param at Offset in `dst`.
 * @param numBuffers `num_buffers` (0 on transmit).
 */
export function writeNetHeader(h: NetHeader, dst: Uint8Array, at: number, numBuffers = 0): void {
  dst[at] = h.flags;
  dst[at + 1] = h.gsoType | (h.ecn ? VIRTIO_NET_HDR_GSO_ECN : 0);
  dst[at + 2] = h.hdrLen & 0xff;
  dst[at + 3] = h.hdrLen >>> 8;
  dst[at + 4] = h.gsoSize & 0xff;
  dst[at + 5] = h.gsoSize >>> 8;
  dst[at + 6] = h.csumStart & 0xff;
  dst[at + 7] = h.csumStart >>> 8;
  dst[at + 8] = h.csumOffset & 0xff;
  dst[at + 9] = h.csumOffset >>> 8;
  dst[at + 10] = numBuffers & 0xff;
  dst[at + 11] = numBuffers >>> 8;
}

/**
 * Complete a partial checksum in software (what a driver without GUEST_CSUM expects, virtio
 * 1.2 §5.1.6.4.1): the ones' complement sum from `start` to the end of the frame, folded and
 * inverted, stored big-endian at `start + offset` (0 is sent as 0xffff, as Linux does). The
 * caller checked `start + offset + 2 <= frame.length`.
 * @param frame The frame (it is changed in place).
 * @param start `csum_start`.
 * @param offset `csum_offset`.
 */
export function completeChecksum(frame: Uint8Array, start: number, offset: number): void {
  let sum = 0;
  const end = frame.length;
  let i = start;
  // Sum 16-bit big-endian words; the pseudo-header sum the sender left in the field is part
  // of the range, which is what makes the result right.
  for (; i + 1 < end; i += 2) sum += (frame[i] << 8) | frame[i + 1];
  if (i < end) sum += frame[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  const csum = ~sum & 0xffff;
  const at = start + offset;
  const v = csum === 0 ? 0xffff : csum;
  frame[at] = v >>> 8;
  frame[at + 1] = v & 0xff;
}

/** Destination class of {@linkcode destinationClass}: a single station. */
export const MAC_UNICAST = 0;
/** Destination class: a group address other than broadcast. */
export const MAC_MULTICAST = 1;
/** Destination class: ff:ff:ff:ff:ff:ff. */
export const MAC_BROADCAST = 2;

/**
 * Classify the destination MAC address at `frame[at]`.
 * @param frame Bytes holding the frame.
 * @param at Where the frame starts.
 * @returns {@linkcode MAC_UNICAST}, {@linkcode MAC_MULTICAST} or {@linkcode MAC_BROADCAST}.
 */
export function destinationClass(frame: Uint8Array, at: number): number {
  if ((frame[at] & 1) === 0) return MAC_UNICAST;
  for (let i = 0; i < 6; i++) if (frame[at + i] !== 0xff) return MAC_MULTICAST;
  return MAC_BROADCAST;
}

/**
 * The VLAN id of an 802.1Q-tagged frame.
 * @param frame Bytes holding the frame.
 * @param at Where the frame starts.
 * @param len Frame length.
 * @returns The VLAN id (0–4095), or -1 when the frame is not tagged.
 */
export function vlanId(frame: Uint8Array, at: number, len: number): number {
  if (len < ETH_HLEN + VLAN_HLEN) return -1;
  if (((frame[at + 12] << 8) | frame[at + 13]) !== ETH_P_8021Q) return -1;
  return ((frame[at + 14] << 8) | frame[at + 15]) & 0xfff;
}

const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

/**
 * A flow hash that is the same in both directions (addresses and ports are combined
 * symmetrically), so a reply can be steered to the queue pair its request left from
 * (virtio 1.2 §5.1.6.5.6.1). IPv4 and IPv6 with TCP or UDP use addresses and ports, other IP
 * traffic the addresses; anything else hashes to 0.
 * @param frame Bytes holding the frame.
 * @param at Where the frame starts.
 * @param len Frame length.
 * @returns A 32-bit hash.
 */
export function flowHash(frame: Uint8Array, at: number, len: number): number {
  let l3 = at + ETH_HLEN;
  const et = l3Ethertype(frame, at, len);
  if (et < 0) return 0;
  const outer = (frame[at + 12] << 8) | frame[at + 13];
  if (outer === ETH_P_8021Q || outer === ETH_P_8021AD) l3 += VLAN_HLEN;
  const end = at + len;
  let a = 0;
  let b = 0;
  let proto = -1;
  let l4 = -1;
  if (et === ETH_P_IP) {
    if (l3 + 20 > end) return 0;
    a = readU32(frame, l3 + 12);
    b = readU32(frame, l3 + 16);
    proto = frame[l3 + 9];
    const fragmented = (((frame[l3 + 6] << 8) | frame[l3 + 7]) & 0x3fff) !== 0;
    if (!fragmented) l4 = l3 + (frame[l3] & 0x0f) * 4;
  } else if (et === ETH_P_IPV6) {
    if (l3 + 40 > end) return 0;
    for (let i = 0; i < 4; i++) {
      a = (a ^ readU32(frame, l3 + 8 + 4 * i)) >>> 0;
      b = (b ^ readU32(frame, l3 + 24 + 4 * i)) >>> 0;
    }
    proto = frame[l3 + 6];
    l4 = l3 + 40;
  } else {
    return 0;
  }
  let h = Math.imul((a ^ b) >>> 0, 0x9e3779b1) ^ Math.imul((a + b) >>> 0, 0x85ebca6b);
  if ((proto === IPPROTO_TCP || proto === IPPROTO_UDP) && l4 >= 0 && l4 + 4 <= end) {
    const p1 = (frame[l4] << 8) | frame[l4 + 1];
    const p2 = (frame[l4 + 2] << 8) | frame[l4 + 3];
    h ^= Math.imul((p1 ^ p2) + ((p1 + p2) << 16), 0xc2b2ae35);
  }
  h ^= h >>> 16;
  return Math.imul(h, 0x27d4eb2f) >>> 0;
}

function readU32(b: Uint8Array, at: number): number {
  return ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
}
