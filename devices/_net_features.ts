/**
 * virtio-net feature bits, status bits and the configuration space layout (virtio 1.2
 * §5.1.3–5.1.4), the device's defaults, and MAC address helpers.
 *
 * @module
 */

import { featureBit } from "./constants.ts";
import type { NetOffloads } from "./_net_backend.ts";

// ---------------------------------------------------------------------------
// Feature bits (virtio 1.2 §5.1.3)

/** Feature bit: the device handles partial checksums (NEEDS_CSUM on transmit). */
export const VIRTIO_NET_F_CSUM = 0;
/** Feature bit: the driver handles partial checksums on receive. */
export const VIRTIO_NET_F_GUEST_CSUM = 1;
/** Feature bit: the driver may change receive offloads through the control queue. */
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
/** Feature bit: `mtu` is valid. */
export const VIRTIO_NET_F_MTU = 3;
/** Feature bit: `mac` is valid. */
export const VIRTIO_NET_F_MAC = 5;
/** Feature bit: the driver receives TCPv4 segmentation. */
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
/** Feature bit: the driver receives TCPv6 segmentation. */
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
/** Feature bit: the driver receives TCP segmentation with ECN. */
export const VIRTIO_NET_F_GUEST_ECN = 9;
/** Feature bit: the driver receives UDP fragmentation. */
export const VIRTIO_NET_F_GUEST_UFO = 10;
/** Feature bit: the device takes TCPv4 segmentation. */
export const VIRTIO_NET_F_HOST_TSO4 = 11;
/** Feature bit: the device takes TCPv6 segmentation. */
export const VIRTIO_NET_F_HOST_TSO6 = 12;
/** Feature bit: the device takes TCP segmentation with ECN. */
export const VIRTIO_NET_F_HOST_ECN = 13;
/** Feature bit: the device takes UDP fragmentation. */
export const VIRTIO_NET_F_HOST_UFO = 14;
/** Feature bit: the driver can merge receive buffers. */
export const VIRTIO_NET_F_MRG_RXBUF = 15;
/** Feature bit: `status` is valid (link state, announce). */
export const VIRTIO_NET_F_STATUS = 16;
/** Feature bit: there is a control queue. */
export const VIRTIO_NET_F_CTRL_VQ = 17;
/** Feature bit: control queue RX modes and MAC table. */
export const VIRTIO_NET_F_CTRL_RX = 18;
/** Feature bit: control queue VLAN filter. */
export const VIRTIO_NET_F_CTRL_VLAN = 19;
/** Feature bit: control queue extra RX modes. */
export const VIRTIO_NET_F_CTRL_RX_EXTRA = 20;
/** Feature bit: the driver can send gratuitous packets when asked. */
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
/** Feature bit: multiqueue with automatic receive steering. */
export const VIRTIO_NET_F_MQ = 22;
/** Feature bit: set the MAC address through the control queue. */
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;
/** Feature bit: `speed` and `duplex` are valid. */
export const VIRTIO_NET_F_SPEED_DUPLEX = 63;

/** Status bit: the link is up. */
export const VIRTIO_NET_S_LINK_UP = 1;
/** Status bit: the device asks the driver to announce itself. */
export const VIRTIO_NET_S_ANNOUNCE = 2;

/** Byte offsets of `struct virtio_net_config` (virtio 1.2 §5.1.4). */
export const NetConfigOffset = {
  /** u8[6]. */
  mac: 0,
  /** le16: `VIRTIO_NET_S_*`. */
  status: 6,
  /** le16. */
  maxVirtqueuePairs: 8,
  /** le16. */
  mtu: 10,
  /** le32, Mbit/s (0xffffffff unknown). */
  speed: 12,
  /** u8: 1 full, 0 half, 0xff unknown. */
  duplex: 16,
} as const;

/** Size of the configuration space (up to the RSS fields, which stay zero). */
export const NET_CONFIG_SIZE = 24;
/** Default size of each queue. */
export const NET_QUEUE_SIZE = 256;
/** Default MTU offered. */
export const NET_DEFAULT_MTU = 1500;
/** Default speed reported, in Mbit/s. */
export const NET_DEFAULT_SPEED = 10000;
/** Default receive backlog per queue pair, in bytes. */
export const NET_RX_BACKLOG_BYTES: number = 1 << 20;
/** Default number of addresses kept per MAC filter table. */
export const NET_MAC_TABLE_ENTRIES = 64;
/** Frames taken from the backend in one pass before the event loop is given back. */
export const NET_RX_BUDGET = 256;
/** Most queue pairs the device accepts (the spec's 0x8000, bounded by the queue indices). */
export const NET_MAX_QUEUE_PAIRS = 0x8000;

/** The GUEST_* offload feature bits (what CTRL_GUEST_OFFLOADS may switch). */
export const GUEST_OFFLOAD_BITS: bigint = featureBit(VIRTIO_NET_F_GUEST_CSUM) |
  featureBit(VIRTIO_NET_F_GUEST_TSO4) | featureBit(VIRTIO_NET_F_GUEST_TSO6) |
  featureBit(VIRTIO_NET_F_GUEST_ECN) | featureBit(VIRTIO_NET_F_GUEST_UFO);

/**
 * Parse a MAC address.
 * @param mac `"aa:bb:cc:dd:ee:ff"` (or `-` separated) or 6 bytes.
 * @returns The 6 bytes.
 * @throws {RangeError} For anything else, a multicast or an all-zero address.
 */
export function parseMac(mac: string | Uint8Array): Uint8Array {
  let bytes: Uint8Array;
  if (typeof mac === "string") {
    const parts = mac.split(/[:-]/);
    if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) {
      throw new RangeError(`Bad MAC address ${mac}`);
    }
    bytes = new Uint8Array(parts.map((p) => parseInt(p, 16)));
  } else {
    if (mac.length !== 6) throw new RangeError(`A MAC address has 6 bytes, got ${mac.length}`);
    bytes = mac.slice();
  }
  if ((bytes[0] & 1) !== 0 || bytes.every((b) => b === 0)) {
    throw new RangeError(`MAC address ${formatMac(bytes)} is not a unicast address`);
  }
  return bytes;
}

/**
 * Format a MAC address as `aa:bb:cc:dd:ee:ff`.
 * @param mac 6 bytes.
 * @returns The text.
 */
export function formatMac(mac: Uint8Array): string {
  return [...mac.subarray(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/**
 * A random locally administered unicast MAC address.
 * @returns 6 bytes.
 */
export function randomMac(): Uint8Array {
  const m = new Uint8Array(6);
  crypto.getRandomValues(m);
  m[0] = (m[0] & 0xfe) | 0x02; // unicast, locally administered
  return m;
}

/**
 * The receive offloads in effect for a set of GUEST_* feature bits: segmentation needs the
 * checksum offload it depends on (virtio 1.2 §5.1.3.1).
 * @param bits Feature bits (others are ignored).
 * @returns The offloads.
 */
export function effectiveGuestOffloads(bits: bigint): NetOffloads {
  const has = (b: number) => (bits & featureBit(b)) !== 0n;
  const csum = has(VIRTIO_NET_F_GUEST_CSUM);
  const tso4 = csum && has(VIRTIO_NET_F_GUEST_TSO4);
  const tso6 = csum && has(VIRTIO_NET_F_GUEST_TSO6);
  return {
    csum,
    tso4,
    tso6,
    ecn: (tso4 || tso6) && has(VIRTIO_NET_F_GUEST_ECN),
    ufo: csum && has(VIRTIO_NET_F_GUEST_UFO),
  };
}
