/**
 * Commands of the virtio-net control queue (virtio 1.2 §5.1.6.5): a pure parser from the
 * driver's class, command and data bytes to a typed command, or a typed refusal that the
 * device answers with VIRTIO_NET_ERR.
 *
 * @module
 */

/** Ack value: the command was applied. */
export const VIRTIO_NET_OK = 0;
/** Ack value: the command was refused. */
export const VIRTIO_NET_ERR = 1;

/** Class: receive modes (§5.1.6.5.1). */
export const VIRTIO_NET_CTRL_RX = 0;
/** RX command: promiscuous mode on/off. */
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
/** RX command: all multicast on/off. */
export const VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
/** RX command (RX_EXTRA): all unicast on/off. */
export const VIRTIO_NET_CTRL_RX_ALLUNI = 2;
/** RX command (RX_EXTRA): no multicast. */
export const VIRTIO_NET_CTRL_RX_NOMULTI = 3;
/** RX command (RX_EXTRA): no unicast. */
export const VIRTIO_NET_CTRL_RX_NOUNI = 4;
/** RX command (RX_EXTRA): no broadcast. */
export const VIRTIO_NET_CTRL_RX_NOBCAST = 5;

/** Class: MAC filtering (§5.1.6.5.2). */
export const VIRTIO_NET_CTRL_MAC = 1;
/** MAC command: set the unicast and multicast filter tables. */
export const VIRTIO_NET_CTRL_MAC_TABLE_SET = 0;
/** MAC command: set the default MAC address. */
export const VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;

/** Class: VLAN filtering (§5.1.6.5.3). */
export const VIRTIO_NET_CTRL_VLAN = 2;
/** VLAN command: add an id to the filter table. */
export const VIRTIO_NET_CTRL_VLAN_ADD = 0;
/** VLAN command: remove an id from the filter table. */
export const VIRTIO_NET_CTRL_VLAN_DEL = 1;

/** Class: gratuitous packets (§5.1.6.5.4). */
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
/** ANNOUNCE command: the driver saw VIRTIO_NET_S_ANNOUNCE. */
export const VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;

/** Class: multiqueue (§5.1.6.5.5). */
export const VIRTIO_NET_CTRL_MQ = 4;
/** MQ command: number of queue pairs in use (automatic receive steering). */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
/** MQ command: RSS configuration (RSS is not offered). */
export const VIRTIO_NET_CTRL_MQ_RSS_CONFIG = 1;
/** MQ command: hash configuration (HASH_REPORT is not offered). */
export const VIRTIO_NET_CTRL_MQ_HASH_CONFIG = 2;
/** Fewest queue pairs VQ_PAIRS_SET may ask for. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1;
/** Most queue pairs VQ_PAIRS_SET may ask for. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000;

/** Class: guest offloads (§5.1.6.5.6). */
export const VIRTIO_NET_CTRL_GUEST_OFFLOADS = 5;
/** GUEST_OFFLOADS command: set the offloads in effect. */
export const VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET = 0;

/** Largest command data the device reads (a MAC table of about 10900 addresses). */
export const NET_CTRL_MAX_DATA = 65536;

/** The receive-mode switches of the RX class, by command number. */
export const RX_MODES = ["promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast"] as const;
/** One receive-mode switch. */
export type NetRxMode = typeof RX_MODES[number];

/** A MAC filter table as VIRTIO_NET_CTRL_MAC_TABLE_SET sets it. */
export interface NetMacTable {
  /** Unicast addresses kept (6 bytes each, at most the table's capacity). */
  unicast: Uint8Array;
  /** More unicast addresses were given than fit: accept all unicast. */
  unicastOverflow: boolean;
  /** Multicast addresses kept (6 bytes each). */
  multicast: Uint8Array;
  /** More multicast addresses were given than fit: accept all multicast. */
  multicastOverflow: boolean;
}

/** A control command the device accepted. */
export type NetCtrlCommand =
  /** Turn one receive mode on or off. */
  | { kind: "rxMode"; mode: NetRxMode; on: boolean }
  /** Replace the MAC filter tables. */
  | { kind: "macTable"; table: NetMacTable }
  /** Set the default MAC address. */
  | { kind: "macAddr"; mac: Uint8Array }
  /** Add (or remove) a VLAN id to (from) the filter table. */
  | { kind: "vlan"; add: boolean; vid: number }
  /** Clear VIRTIO_NET_S_ANNOUNCE. */
  | { kind: "announceAck" }
  /** Use this many queue pairs. */
  | { kind: "vqPairs"; pairs: number }
  /** Set the guest offloads in effect (feature bit numbers as a mask). */
  | { kind: "guestOffloads"; offloads: bigint };

/** What the negotiation allows on the control queue. */
export interface NetCtrlLimits {
  /** VIRTIO_NET_F_CTRL_RX: PROMISC, ALLMULTI, MAC_TABLE_SET. */
  ctrlRx: boolean;
  /** VIRTIO_NET_F_CTRL_RX_EXTRA: ALLUNI, NOMULTI, NOUNI, NOBCAST. */
  ctrlRxExtra: boolean;
  /** VIRTIO_NET_F_CTRL_VLAN. */
  ctrlVlan: boolean;
  /** VIRTIO_NET_F_GUEST_ANNOUNCE. */
  announce: boolean;
  /** VIRTIO_NET_F_MQ. */
  mq: boolean;
  /** `max_virtqueue_pairs`. */
  maxPairs: number;
  /** VIRTIO_NET_F_CTRL_MAC_ADDR. */
  macAddr: boolean;
  /** VIRTIO_NET_F_CTRL_GUEST_OFFLOADS. */
  guestOffloads: boolean;
  /** The guest offload features negotiated: the bits GUEST_OFFLOADS_SET may turn on. */
  guestOffloadMask: bigint;
  /** Addresses kept per MAC table (unicast and multicast each). */
  macTableEntries: number;
}

/** What {@linkcode parseCtrlCommand} returns. */
export type ParsedCtrlCommand =
  | { ok: true; command: NetCtrlCommand }
  | { ok: false; reason: string };

const refuse = (reason: string): ParsedCtrlCommand => ({ ok: false, reason });
const accept = (command: NetCtrlCommand): ParsedCtrlCommand => ({ ok: true, command });

function le16(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8);
}

function le32(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}

function isMulticast(b: Uint8Array, at: number): boolean {
  return (b[at] & 1) !== 0;
}

// One table of `struct virtio_net_ctrl_mac` at `at`: le32 entries, then 6-byte addresses.
function macTable(
  data: Uint8Array,
  at: number,
  multicast: boolean,
  capacity: number,
): { end: number; macs: Uint8Array; overflow: boolean } | string {
  if (at + 4 > data.length) return "MAC table shorter than its entry count";
  const entries = le32(data, at);
  const start = at + 4;
  // Bounded by the bytes there before any multiplication: a hostile count cannot overflow.
  if (entries > (data.length - start) / 6) return `MAC table of ${entries} entries overruns`;
  const end = start + 6 * entries;
  for (let i = start; i < end; i += 6) {
    if (isMulticast(data, i) !== multicast) {
      return `${multicast ? "unicast" : "multicast"} address in the ${
        multicast ? "multicast" : "unicast"
      } table`;
    }
  }
  const kept = Math.min(entries, capacity);
  return { end, macs: data.slice(start, start + 6 * kept), overflow: entries > capacity };
}

/**
 * Parse one control command. `data` is the command-specific data only (the bytes between
 * `command` and `ack`). Refused: a class or command that is unknown or whose feature was not
 * negotiated, data of the wrong length, a switch byte other than 0 or 1, MAC tables whose
 * counts do not match the data (or hold an address of the other kind), a multicast or zero
 * default MAC, a VLAN id above 4095, a pair count outside 1..`maxPairs`, and offloads that
 * were not negotiated (virtio 1.2 §5.1.6.5).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseCtrlCommand } from "./_net_ctrl.ts";
 * const limits = {
 *   ctrlRx: true, ctrlRxExtra: false, ctrlVlan: true, announce: true, mq: true, maxPairs: 4,
 *   macAddr: true, guestOffloads: true, guestOffloadMask: 0x782n, macTableEntries: 64,
 * };
 * const r = parseCtrlCommand(4, 0, new Uint8Array([2, 0]), limits);
 * assert.deepEqual(r, { ok: true, command: { kind: "vqPairs", pairs: 2 } });
 * assert.equal(parseCtrlCommand(4, 0, new Uint8Array([5, 0]), limits).ok, false);
 * ```
 *
 * @param cls `class`.
 * @param cmd `command`.
 * @param data The command-specific data.
 * @param limits What was negotiated.
 * @returns The command, or why it is refused.
 */
export function parseCtrlCommand(
  cls: number,
  cmd: number,
  data: Uint8Array,
  limits: NetCtrlLimits,
): ParsedCtrlCommand {
  switch (cls) {
    case VIRTIO_NET_CTRL_RX: {
      if (cmd > VIRTIO_NET_CTRL_RX_NOBCAST) return refuse(`unknown RX command ${cmd}`);
      const extra = cmd > VIRTIO_NET_CTRL_RX_ALLMULTI;
      if (extra ? !limits.ctrlRxExtra : !limits.ctrlRx) {
        return refuse(`RX command ${cmd} without ${extra ? "CTRL_RX_EXTRA" : "CTRL_RX"}`);
      }
      if (data.length !== 1) return refuse(`RX command data of ${data.length} bytes`);
      if (data[0] > 1) return refuse(`RX switch value ${data[0]}`);
      return accept({ kind: "rxMode", mode: RX_MODES[cmd], on: data[0] === 1 });
    }
    case VIRTIO_NET_CTRL_MAC: {
      if (cmd === VIRTIO_NET_CTRL_MAC_TABLE_SET) {
        if (!limits.ctrlRx) return refuse("MAC_TABLE_SET without CTRL_RX");
        const uni = macTable(data, 0, false, limits.macTableEntries);
        if (typeof uni === "string") return refuse(uni);
        const multi = macTable(data, uni.end, true, limits.macTableEntries);
        if (typeof multi === "string") return refuse(multi);
        if (multi.end !== data.length) {
          return refuse(`${data.length - multi.end} bytes after the MAC tables`);
        }
        return accept({
          kind: "macTable",
          table: {
            unicast: uni.macs,
            unicastOverflow: uni.overflow,
            multicast: multi.macs,
            multicastOverflow: multi.overflow,
          },
        });
      }
      if (cmd === VIRTIO_NET_CTRL_MAC_ADDR_SET) {
        if (!limits.macAddr) return refuse("MAC_ADDR_SET without CTRL_MAC_ADDR");
        if (data.length !== 6) return refuse(`MAC address of ${data.length} bytes`);
        if (isMulticast(data, 0) || data.every((b) => b === 0)) {
          return refuse("default MAC address must be a non-zero unicast address");
        }
        return accept({ kind: "macAddr", mac: data.slice(0, 6) });
      }
      return refuse(`unknown MAC command ${cmd}`);
    }
    case VIRTIO_NET_CTRL_VLAN: {
      if (cmd > VIRTIO_NET_CTRL_VLAN_DEL) return refuse(`unknown VLAN command ${cmd}`);
      if (!limits.ctrlVlan) return refuse("VLAN command without CTRL_VLAN");
      if (data.length !== 2) return refuse(`VLAN id of ${data.length} bytes`);
      const vid = le16(data, 0);
      if (vid > 4095) return refuse(`VLAN id ${vid}`);
      return accept({ kind: "vlan", add: cmd === VIRTIO_NET_CTRL_VLAN_ADD, vid });
    }
    case VIRTIO_NET_CTRL_ANNOUNCE: {
      if (cmd !== VIRTIO_NET_CTRL_ANNOUNCE_ACK) return refuse(`unknown ANNOUNCE command ${cmd}`);
      if (!limits.announce) return refuse("ANNOUNCE_ACK without GUEST_ANNOUNCE");
      if (data.length !== 0) return refuse(`ANNOUNCE_ACK with ${data.length} bytes of data`);
      return accept({ kind: "announceAck" });
    }
    case VIRTIO_NET_CTRL_MQ: {
      if (cmd !== VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) {
        return refuse(`MQ command ${cmd} (RSS and hash reports are not offered)`);
      }
      if (!limits.mq) return refuse("VQ_PAIRS_SET without MQ");
      if (data.length !== 2) return refuse(`VQ_PAIRS_SET data of ${data.length} bytes`);
      const pairs = le16(data, 0);
      if (pairs < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN || pairs > limits.maxPairs) {
        return refuse(`${pairs} queue pairs (1..${limits.maxPairs})`);
      }
      return accept({ kind: "vqPairs", pairs });
    }
    case VIRTIO_NET_CTRL_GUEST_OFFLOADS: {
      if (cmd !== VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET) {
        return refuse(`unknown GUEST_OFFLOADS command ${cmd}`);
      }
      if (!limits.guestOffloads) return refuse("GUEST_OFFLOADS_SET without CTRL_GUEST_OFFLOADS");
      if (data.length !== 8) return refuse(`offloads of ${data.length} bytes`);
      const offloads = BigInt(le32(data, 0)) | (BigInt(le32(data, 4)) << 32n);
      const extra = offloads & ~limits.guestOffloadMask;
      if (extra !== 0n) return refuse(`offloads 0x${extra.toString(16)} were not negotiated`);
      return accept({ kind: "guestOffloads", offloads });
    }
    default:
      return refuse(`unknown class ${cls}`);
  }
}
