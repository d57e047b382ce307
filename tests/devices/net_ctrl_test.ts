import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  type NetCtrlLimits,
  parseCtrlCommand,
  VIRTIO_NET_CTRL_ANNOUNCE,
  VIRTIO_NET_CTRL_GUEST_OFFLOADS,
  VIRTIO_NET_CTRL_MAC,
  VIRTIO_NET_CTRL_MQ,
  VIRTIO_NET_CTRL_RX,
  VIRTIO_NET_CTRL_VLAN,
} from "../../devices/net.ts";

const ALL: NetCtrlLimits = {
  ctrlRx: true,
  ctrlRxExtra: true,
  ctrlVlan: true,
  announce: true,
  mq: true,
  maxPairs: 4,
  macAddr: true,
  guestOffloads: true,
  guestOffloadMask: 0x782n, // GUEST_CSUM, TSO4, TSO6, ECN, UFO
  macTableEntries: 2,
};
const NONE: NetCtrlLimits = {
  ...ALL,
  ctrlRx: false,
  ctrlRxExtra: false,
  ctrlVlan: false,
  announce: false,
  mq: false,
  macAddr: false,
  guestOffloads: false,
};

const u8 = (...b: number[]) => new Uint8Array(b);
const le16 = (v: number) => u8(v & 0xff, v >> 8);
const le32 = (v: number) => u8(v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24);
const le64 = (v: bigint) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
};
const cat = (...p: Uint8Array[]) => {
  const out = new Uint8Array(p.reduce((n, x) => n + x.length, 0));
  let o = 0;
  for (const x of p) {
    out.set(x, o);
    o += x.length;
  }
  return out;
};
const UNI = [u8(2, 0, 0, 0, 0, 1), u8(2, 0, 0, 0, 0, 2), u8(2, 0, 0, 0, 0, 3)];
const MULTI = [u8(1, 0, 0x5e, 0, 0, 1)];
const table = (uni: Uint8Array[], multi: Uint8Array[]) =>
  cat(le32(uni.length), ...uni, le32(multi.length), ...multi);

describe("parseCtrlCommand()", () => {
  const ok: [string, number, number, Uint8Array, unknown][] = [
    ["PROMISC on", VIRTIO_NET_CTRL_RX, 0, u8(1), { kind: "rxMode", mode: "promisc", on: true }],
    ["ALLMULTI off", VIRTIO_NET_CTRL_RX, 1, u8(0), { kind: "rxMode", mode: "allmulti", on: false }],
    ["ALLUNI", VIRTIO_NET_CTRL_RX, 2, u8(1), { kind: "rxMode", mode: "alluni", on: true }],
    ["NOMULTI", VIRTIO_NET_CTRL_RX, 3, u8(1), { kind: "rxMode", mode: "nomulti", on: true }],
    ["NOUNI", VIRTIO_NET_CTRL_RX, 4, u8(1), { kind: "rxMode", mode: "nouni", on: true }],
    ["NOBCAST", VIRTIO_NET_CTRL_RX, 5, u8(1), { kind: "rxMode", mode: "nobcast", on: true }],
    ["MAC_ADDR_SET", VIRTIO_NET_CTRL_MAC, 1, UNI[0], { kind: "macAddr", mac: UNI[0] }],
    ["VLAN_ADD 4095", VIRTIO_NET_CTRL_VLAN, 0, le16(4095), { kind: "vlan", add: true, vid: 4095 }],
    ["VLAN_DEL 0", VIRTIO_NET_CTRL_VLAN, 1, le16(0), { kind: "vlan", add: false, vid: 0 }],
    ["ANNOUNCE_ACK", VIRTIO_NET_CTRL_ANNOUNCE, 0, u8(), { kind: "announceAck" }],
    ["VQ_PAIRS_SET 1", VIRTIO_NET_CTRL_MQ, 0, le16(1), { kind: "vqPairs", pairs: 1 }],
    ["VQ_PAIRS_SET max", VIRTIO_NET_CTRL_MQ, 0, le16(4), { kind: "vqPairs", pairs: 4 }],
    [
      "GUEST_OFFLOADS_SET",
      VIRTIO_NET_CTRL_GUEST_OFFLOADS,
      0,
      le64(0x82n),
      { kind: "guestOffloads", offloads: 0x82n },
    ],
  ];
  for (const [name, cls, cmd, data, want] of ok) {
    it(`accepts ${name}`, () => {
      assert.deepEqual(parseCtrlCommand(cls, cmd, data, ALL), { ok: true, command: want });
    });
  }

  it("accepts MAC tables, keeping at most the capacity and flagging the overflow", () => {
    const r = parseCtrlCommand(VIRTIO_NET_CTRL_MAC, 0, table(UNI, MULTI), ALL);
    assert.ok(r.ok && r.command.kind === "macTable");
    const t = r.command.table;
    assert.equal(t.unicast.length, 12);
    assert.equal(t.unicastOverflow, true);
    assert.deepEqual(t.multicast, MULTI[0]);
    assert.equal(t.multicastOverflow, false);
    const empty = parseCtrlCommand(VIRTIO_NET_CTRL_MAC, 0, table([], []), ALL);
    assert.ok(empty.ok && empty.command.kind === "macTable");
    assert.equal(empty.command.table.unicast.length, 0);
  });

  const bad: [string, number, number, Uint8Array, NetCtrlLimits?][] = [
    ["an unknown class", 9, 0, u8()],
    ["an unknown RX command", VIRTIO_NET_CTRL_RX, 6, u8(1)],
    ["PROMISC without CTRL_RX", VIRTIO_NET_CTRL_RX, 0, u8(1), NONE],
    ["NOUNI without CTRL_RX_EXTRA", VIRTIO_NET_CTRL_RX, 4, u8(1), { ...ALL, ctrlRxExtra: false }],
    ["an RX switch of 2", VIRTIO_NET_CTRL_RX, 0, u8(2)],
    ["an RX switch without data", VIRTIO_NET_CTRL_RX, 0, u8()],
    ["an RX switch of 2 bytes", VIRTIO_NET_CTRL_RX, 0, u8(1, 0)],
    ["MAC_TABLE_SET without CTRL_RX", VIRTIO_NET_CTRL_MAC, 0, table([], []), NONE],
    ["a MAC table with a huge count", VIRTIO_NET_CTRL_MAC, 0, cat(le32(0xffffffff), le32(0))],
    ["a MAC table one address short", VIRTIO_NET_CTRL_MAC, 0, table(UNI, MULTI).subarray(0, 31)],
    ["a MAC table without its multicast count", VIRTIO_NET_CTRL_MAC, 0, cat(le32(0))],
    ["MAC tables with bytes after them", VIRTIO_NET_CTRL_MAC, 0, cat(table([], []), u8(0))],
    ["a multicast address in the unicast table", VIRTIO_NET_CTRL_MAC, 0, table(MULTI, [])],
    ["a unicast address in the multicast table", VIRTIO_NET_CTRL_MAC, 0, table([], UNI)],
    ["a MAC table of 3 bytes", VIRTIO_NET_CTRL_MAC, 0, u8(0, 0, 0)],
    ["MAC_ADDR_SET without CTRL_MAC_ADDR", VIRTIO_NET_CTRL_MAC, 1, UNI[0], NONE],
    ["a 5-byte MAC address", VIRTIO_NET_CTRL_MAC, 1, UNI[0].subarray(0, 5)],
    ["a multicast default MAC", VIRTIO_NET_CTRL_MAC, 1, MULTI[0]],
    ["an all-zero default MAC", VIRTIO_NET_CTRL_MAC, 1, new Uint8Array(6)],
    ["an unknown MAC command", VIRTIO_NET_CTRL_MAC, 2, UNI[0]],
    ["VLAN without CTRL_VLAN", VIRTIO_NET_CTRL_VLAN, 0, le16(1), NONE],
    ["VLAN id 4096", VIRTIO_NET_CTRL_VLAN, 0, le16(4096)],
    ["a 1-byte VLAN id", VIRTIO_NET_CTRL_VLAN, 0, u8(1)],
    ["an unknown VLAN command", VIRTIO_NET_CTRL_VLAN, 2, le16(1)],
    ["ANNOUNCE_ACK without GUEST_ANNOUNCE", VIRTIO_NET_CTRL_ANNOUNCE, 0, u8(), NONE],
    ["ANNOUNCE_ACK with data", VIRTIO_NET_CTRL_ANNOUNCE, 0, u8(0)],
    ["an unknown ANNOUNCE command", VIRTIO_NET_CTRL_ANNOUNCE, 1, u8()],
    ["VQ_PAIRS_SET without MQ", VIRTIO_NET_CTRL_MQ, 0, le16(2), NONE],
    ["VQ_PAIRS_SET 0", VIRTIO_NET_CTRL_MQ, 0, le16(0)],
    ["VQ_PAIRS_SET above max_virtqueue_pairs", VIRTIO_NET_CTRL_MQ, 0, le16(5)],
    ["VQ_PAIRS_SET of 4 bytes", VIRTIO_NET_CTRL_MQ, 0, le32(2)],
    ["RSS_CONFIG (RSS not offered)", VIRTIO_NET_CTRL_MQ, 1, new Uint8Array(16)],
    ["HASH_CONFIG (not offered)", VIRTIO_NET_CTRL_MQ, 2, new Uint8Array(16)],
    ["GUEST_OFFLOADS_SET without the feature", VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0, le64(0n), NONE],
    ["an offload not negotiated", VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0, le64(0x2n | (1n << 54n))],
    ["offloads of 4 bytes", VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0, le32(2)],
    ["an unknown GUEST_OFFLOADS command", VIRTIO_NET_CTRL_GUEST_OFFLOADS, 1, le64(0n)],
  ];
  for (const [name, cls, cmd, data, limits] of bad) {
    it(`refuses ${name}`, () => {
      const r = parseCtrlCommand(cls, cmd, data, limits ?? ALL);
      assert.equal(r.ok, false);
      assert.ok(!r.ok && r.reason.length > 0);
    });
  }
});
