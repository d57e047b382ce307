/**
 * The driver side of a virtio-net device, for tests and benchmarks without a VM: what the
 * Linux virtio_net driver does with the queues (post receive buffers, send frames with a
 * `virtio_net_hdr`, collect received frames, merge MRG_RXBUF buffers, send control commands),
 * over {@linkcode DriverQueue}s; and builders for the Ethernet/IPv4/IPv6/TCP/UDP frames the
 * tests send, with correct checksums.
 *
 * @module
 */

import type { UsedEntry } from "./queue_driver.ts";

/** Fields of a `virtio_net_hdr` (all default to 0). */
export interface NetHeaderFields {
  /** `flags`. */
  flags?: number;
  /** `gso_type` (ECN bit included). */
  gsoType?: number;
  /** `hdr_len`. */
  hdrLen?: number;
  /** `gso_size`. */
  gsoSize?: number;
  /** `csum_start`. */
  csumStart?: number;
  /** `csum_offset`. */
  csumOffset?: number;
  /** `num_buffers`. */
  numBuffers?: number;
}

/**
 * Encode a 12-byte `virtio_net_hdr` (or the legacy 10-byte one).
 * @param fields The fields.
 * @param size 12 (default) or 10.
 * @returns The bytes.
 */
export function netHeader(fields: NetHeaderFields = {}, size = 12): Uint8Array {
  const out = new Uint8Array(12);
  const v = new DataView(out.buffer);
  v.setUint8(0, fields.flags ?? 0);
  v.setUint8(1, fields.gsoType ?? 0);
  v.setUint16(2, fields.hdrLen ?? 0, true);
  v.setUint16(4, fields.gsoSize ?? 0, true);
  v.setUint16(6, fields.csumStart ?? 0, true);
  v.setUint16(8, fields.csumOffset ?? 0, true);
  v.setUint16(10, fields.numBuffers ?? 0, true);
  return out.subarray(0, size);
}

/**
 * Decode a `virtio_net_hdr`.
 * @param b At least 10 bytes.
 * @returns The fields (`numBuffers` only with 12 bytes).
 */
export function decodeNetHeader(b: Uint8Array): Required<NetHeaderFields> {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    flags: v.getUint8(0),
    gsoType: v.getUint8(1),
    hdrLen: v.getUint16(2, true),
    gsoSize: v.getUint16(4, true),
    csumStart: v.getUint16(6, true),
    csumOffset: v.getUint16(8, true),
    numBuffers: b.length >= 12 ? v.getUint16(10, true) : 1,
  };
}

/** Concatenate byte arrays. */
export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Options of {@linkcode ethFrame}. */
export interface EthFrameOptions {
  /** Destination MAC (default broadcast). */
  dst?: Uint8Array | number[];
  /** Source MAC (default 02:00:00:00:00:01). */
  src?: Uint8Array | number[];
  /** Ethertype (default 0x88b5, local experimental). */
  ethertype?: number;
  /** An 802.1Q tag with this VLAN id. */
  vlan?: number;
  /** Payload (default 46 zero bytes). */
  payload?: Uint8Array;
}

/**
 * An Ethernet frame.
 * @param o Addresses, ethertype, VLAN tag and payload.
 * @returns The frame.
 */
export function ethFrame(o: EthFrameOptions = {}): Uint8Array {
  const tag = o.vlan === undefined ? 0 : 4;
  const payload = o.payload ?? new Uint8Array(46);
  const f = new Uint8Array(14 + tag + payload.length);
  f.set(o.dst ?? [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0);
  f.set(o.src ?? [2, 0, 0, 0, 0, 1], 6);
  const v = new DataView(f.buffer);
  if (o.vlan !== undefined) {
    v.setUint16(12, 0x8100);
    v.setUint16(14, o.vlan & 0xfff);
  }
  v.setUint16(12 + tag, o.ethertype ?? 0x88b5);
  f.set(payload, 14 + tag);
  return f;
}

/** The Internet checksum (RFC 1071) of `b`, plus `initial` (a partial sum). */
export function inetChecksum(b: Uint8Array, initial = 0): number {
  let sum = initial;
  let i = 0;
  for (; i + 1 < b.length; i += 2) sum += (b[i] << 8) | b[i + 1];
  if (i < b.length) sum += b[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
}

/** Options of {@linkcode ipv4Frame}. */
export interface Ipv4FrameOptions extends Omit<EthFrameOptions, "ethertype" | "payload"> {
  /** Source address (default 10.0.0.1). */
  srcIp?: number[];
  /** Destination address (default 10.0.0.2). */
  dstIp?: number[];
  /** 6 TCP (default) or 17 UDP. */
  proto?: 6 | 17;
  /** Source port (default 1000). */
  srcPort?: number;
  /** Destination port (default 2000). */
  dstPort?: number;
  /** Transport payload (default 64 bytes). */
  data?: Uint8Array;
  /**
   * Leave the transport checksum as the pseudo-header sum, as a driver using NEEDS_CSUM does
   * (default false: complete).
   */
  partial?: boolean;
}

/** A frame and where its transport checksum is (for NEEDS_CSUM headers). */
export interface BuiltFrame {
  /** The frame. */
  frame: Uint8Array;
  /** `csum_start`: where the transport header begins. */
  csumStart: number;
  /** `csum_offset`: the checksum field inside it. */
  csumOffset: number;
  /** Bytes of headers (Ethernet, IP, transport). */
  headerLength: number;
}

/**
 * An IPv4 frame carrying TCP or UDP with correct IP and transport checksums (or the
 * pseudo-header sum only, with `partial`).
 * @param o Addresses, ports, payload.
 * @returns The frame and its checksum position.
 */
export function ipv4Frame(o: Ipv4FrameOptions = {}): BuiltFrame {
  const proto = o.proto ?? 6;
  const data = o.data ?? new Uint8Array(64).map((_, i) => i);
  const l4len = (proto === 6 ? 20 : 8) + data.length;
  const ip = new Uint8Array(20 + l4len);
  const v = new DataView(ip.buffer);
  const srcIp = o.srcIp ?? [10, 0, 0, 1];
  const dstIp = o.dstIp ?? [10, 0, 0, 2];
  v.setUint8(0, 0x45);
  v.setUint16(2, ip.length);
  v.setUint8(8, 64);
  v.setUint8(9, proto);
  ip.set(srcIp, 12);
  ip.set(dstIp, 16);
  v.setUint16(10, inetChecksum(ip.subarray(0, 20)));
  const l4 = ip.subarray(20);
  const lv = new DataView(l4.buffer, l4.byteOffset);
  lv.setUint16(0, o.srcPort ?? 1000);
  lv.setUint16(2, o.dstPort ?? 2000);
  let csumOffset: number;
  if (proto === 6) {
    lv.setUint32(4, 1);
    lv.setUint8(12, 5 << 4);
    lv.setUint8(13, 0x18); // PSH ACK
    lv.setUint16(14, 65535);
    l4.set(data, 20);
    csumOffset = 16;
  } else {
    lv.setUint16(4, l4len);
    l4.set(data, 8);
    csumOffset = 6;
  }
  // Pseudo header: addresses, protocol, length.
  const pseudo = new Uint8Array(12);
  pseudo.set(srcIp, 0);
  pseudo.set(dstIp, 4);
  pseudo[9] = proto;
  new DataView(pseudo.buffer).setUint16(10, l4len);
  const pseudoSum = ~inetChecksum(pseudo) & 0xffff;
  const l4sum = inetChecksum(l4, pseudoSum);
  lv.setUint16(csumOffset, o.partial ? pseudoSum : l4sum === 0 && proto === 17 ? 0xffff : l4sum);
  const frame = ethFrame({ ...o, ethertype: 0x0800, payload: ip });
  const l3 = 14 + (o.vlan === undefined ? 0 : 4);
  return {
    frame,
    csumStart: l3 + 20,
    csumOffset,
    headerLength: l3 + 20 + (proto === 6 ? 20 : 8),
  };
}

/**
 * Whether the IPv4 TCP/UDP checksum of `frame` is right.
 * @param frame An IPv4 frame without VLAN tag.
 * @returns True when the transport checksum verifies.
 */
export function ipv4ChecksumOk(frame: Uint8Array): boolean {
  const ip = frame.subarray(14);
  const proto = ip[9];
  const total = (ip[2] << 8) | ip[3];
  const l4 = ip.subarray(20, total);
  const pseudo = new Uint8Array(12);
  pseudo.set(ip.subarray(12, 20), 0);
  pseudo[9] = proto;
  new DataView(pseudo.buffer).setUint16(10, l4.length);
  return inetChecksum(l4, ~inetChecksum(pseudo) & 0xffff) === 0;
}

/** A frame the driver received. */
export interface ReceivedFrame {
  /** The header (of the first buffer). */
  header: Required<NetHeaderFields>;
  /** The frame, reassembled from every buffer. */
  frame: Uint8Array;
  /** Used entries it took. */
  buffers: number;
}

/**
 * Collect received frames from a receive queue: each used entry starts with a header whose
 * `num_buffers` says how many entries the frame spans (1 without MRG_RXBUF).
 * @param queue The receive queue (a `DriverQueue`, or a vhost-user frontend's ring).
 * @param hdrSize 12, or 10 for a legacy driver without MRG_RXBUF.
 * @returns The frames, oldest first.
 * @throws {Error} When `num_buffers` asks for more entries than are used (the device must
 *   publish them together).
 */
export function takeFrames(
  queue: { takeUsed(): UsedEntry | null },
  hdrSize = 12,
): ReceivedFrame[] {
  const out: ReceivedFrame[] = [];
  let first: UsedEntry | null;
  while ((first = queue.takeUsed()) !== null) {
    const header = decodeNetHeader(first.written.subarray(0, hdrSize));
    const n = hdrSize === 12 ? header.numBuffers : 1;
    const parts = [first.written.subarray(hdrSize, first.len)];
    for (let i = 1; i < n; i++) {
      const next = queue.takeUsed();
      if (next === null) throw new Error(`num_buffers ${n} but only ${i} buffers are used`);
      parts.push(next.written.subarray(0, next.len));
    }
    out.push({ header, frame: concatBytes(...parts), buffers: n });
  }
  return out;
}
