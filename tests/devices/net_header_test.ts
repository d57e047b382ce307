import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  completeChecksum,
  destinationClass,
  ETH_HLEN,
  flowHash,
  FrameBacklog,
  MAC_BROADCAST,
  MAC_MULTICAST,
  MAC_UNICAST,
  NET_MAX_GSO_FRAME,
  type NetDropReason,
  type NetHeaderRules,
  newNetHeader,
  parseNetHeader,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP,
  VIRTIO_NET_HDR_GSO_UDP_L4,
  vlanId,
  writeNetHeader,
} from "../../devices/net.ts";
import {
  concatBytes,
  ethFrame,
  ipv4ChecksumOk,
  ipv4Frame,
  netHeader,
  type NetHeaderFields,
} from "../../testing/net_driver.ts";

const ALL: NetHeaderRules = {
  csum: true,
  tso4: true,
  tso6: true,
  ecn: true,
  ufo: true,
  maxFrame: 1518,
};
const NONE: NetHeaderRules = {
  csum: false,
  tso4: false,
  tso6: false,
  ecn: false,
  ufo: false,
  maxFrame: 1518,
};

const V4 = 0x0800;
const V6 = 0x86dd;

/** Header bytes, then the first bytes of a frame with this ethertype (and VLAN tag). */
function bytes(h: NetHeaderFields, ethertype = V4, vlan?: number): Uint8Array {
  return concatBytes(netHeader(h), ethFrame({ ethertype, vlan }).subarray(0, 18));
}

const csum34 = { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 16 };
const tso4 = { ...csum34, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, hdrLen: 66 };

describe("parseNetHeader()", () => {
  const cases: {
    name: string;
    h: NetHeaderFields;
    len: number;
    rules?: NetHeaderRules;
    ethertype?: number;
    vlan?: number;
    want: NetDropReason | undefined;
  }[] = [
    { name: "a plain frame", h: {}, len: 60, want: undefined },
    { name: "a frame of exactly the MTU plus headers", h: {}, len: 1518, want: undefined },
    { name: "a frame above the MTU", h: {}, len: 1519, want: "oversize" },
    { name: "a frame shorter than an Ethernet header", h: {}, len: 13, want: "runt" },
    { name: "a partial checksum", h: csum34, len: 100, want: undefined },
    { name: "NEEDS_CSUM without CSUM", h: csum34, len: 100, rules: NONE, want: "badCsum" },
    {
      name: "csum_start past the frame",
      h: { ...csum34, csumStart: 200 },
      len: 100,
      want: "badCsum",
    },
    {
      name: "csum_offset past the frame",
      h: { ...csum34, csumOffset: 65 },
      len: 100,
      want: "badCsum",
    },
    {
      name: "a checksum ending exactly at the end",
      h: { ...csum34, csumOffset: 64 },
      len: 100,
      want: undefined,
    },
    {
      name: "csum_start inside the Ethernet header",
      h: { ...csum34, csumStart: 4 },
      len: 100,
      want: "badCsum",
    },
    {
      name: "csum fields ignored without NEEDS_CSUM",
      h: { csumStart: 60000, csumOffset: 60000 },
      len: 60,
      want: undefined,
    },
    { name: "hdr_len past the frame", h: { hdrLen: 61 }, len: 60, want: "badHdrLen" },
    { name: "TSO4", h: tso4, len: 60000, want: undefined },
    { name: "TSO4 not negotiated", h: tso4, len: 60000, rules: NONE, want: "badGso" },
    { name: "TSO4 on an IPv6 frame", h: tso4, len: 60000, ethertype: V6, want: "badGso" },
    {
      name: "TSO4 behind a VLAN tag",
      h: { ...tso4, csumStart: 38 },
      len: 60000,
      vlan: 5,
      want: undefined,
    },
    {
      name: "TSO6 on an IPv6 frame",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_TCPV6, csumStart: 54 },
      len: 60000,
      ethertype: V6,
      want: undefined,
    },
    {
      name: "TSO6 on an IPv4 frame",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_TCPV6 },
      len: 60000,
      want: "badGso",
    },
    {
      name: "UFO over IPv6",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_UDP, csumStart: 54, csumOffset: 6 },
      len: 9000,
      ethertype: V6,
      want: undefined,
    },
    {
      name: "UFO on a non-IP frame",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_UDP },
      len: 9000,
      ethertype: 0x88b5,
      want: "badGso",
    },
    { name: "an unknown gso_type", h: { ...tso4, gsoType: 2 }, len: 9000, want: "badGso" },
    {
      name: "USO (never offered)",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_UDP_L4 },
      len: 9000,
      want: "badGso",
    },
    { name: "a tunnel bit", h: { ...tso4, gsoType: 0x21 }, len: 9000, want: "badGso" },
    {
      name: "segmentation without NEEDS_CSUM",
      h: { ...tso4, flags: 0 },
      len: 9000,
      want: "badGso",
    },
    { name: "segmentation with gso_size 0", h: { ...tso4, gsoSize: 0 }, len: 9000, want: "badGso" },
    {
      name: "ECN with HOST_ECN",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN },
      len: 9000,
      want: undefined,
    },
    {
      name: "ECN without HOST_ECN",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN },
      len: 9000,
      rules: { ...ALL, ecn: false },
      want: "badGso",
    },
    {
      name: "ECN on no segmentation",
      h: { gsoType: VIRTIO_NET_HDR_GSO_ECN },
      len: 60,
      want: "badGso",
    },
    {
      name: "ECN on UFO",
      h: { ...tso4, gsoType: VIRTIO_NET_HDR_GSO_UDP | VIRTIO_NET_HDR_GSO_ECN },
      len: 9000,
      want: "badGso",
    },
    {
      name: "a segmented frame of the largest size",
      h: tso4,
      len: NET_MAX_GSO_FRAME,
      want: undefined,
    },
    {
      name: "a segmented frame above 64 KiB + headers",
      h: tso4,
      len: NET_MAX_GSO_FRAME + 1,
      want: "oversize",
    },
    {
      name: "segmentation hdr_len past the frame",
      h: { ...tso4, hdrLen: 9001 },
      len: 9000,
      want: "badHdrLen",
    },
  ];
  for (const c of cases) {
    it(`${c.want === undefined ? "accepts" : `refuses (${c.want})`} ${c.name}`, () => {
      const out = newNetHeader();
      const got = parseNetHeader(bytes(c.h, c.ethertype, c.vlan), 12, c.len, c.rules ?? ALL, out);
      assert.equal(got, c.want);
      if (c.want === undefined) {
        assert.equal(out.gsoType, (c.h.gsoType ?? 0) & 0x7f);
        assert.equal(out.gsoSize, c.h.gsoSize ?? 0);
        assert.equal(out.csumStart, c.h.csumStart ?? 0);
      }
    });
  }

  it("keeps NEEDS_CSUM and DATA_VALID and ignores unknown flag bits", () => {
    const out = newNetHeader();
    const h = bytes({ ...csum34, flags: 0xff });
    assert.equal(parseNetHeader(h, 12, 100, ALL, out), undefined);
    assert.equal(out.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID);
  });

  it("reads the legacy 10-byte header the same way", () => {
    const out = newNetHeader();
    const legacy = concatBytes(netHeader(tso4, 10), ethFrame().subarray(0, 18));
    legacy[10 + 12] = 0x08; // IPv4 ethertype right after the 10-byte header
    legacy[10 + 13] = 0x00;
    assert.equal(parseNetHeader(legacy, 10, 9000, ALL, out), undefined);
    assert.equal(out.gsoSize, 1448);
  });

  it("writes back what it read", () => {
    const out = newNetHeader();
    parseNetHeader(bytes(tso4), 12, 9000, ALL, out);
    const back = new Uint8Array(12);
    writeNetHeader(out, back, 0, 3);
    assert.deepEqual(back, netHeader({ ...tso4, numBuffers: 3 }));
  });
});

describe("frame helpers", () => {
  it("completeChecksum() finishes a partial TCP and UDP checksum as the sender would", () => {
    for (const proto of [6, 17] as const) {
      for (const len of [0, 1, 63, 1400]) {
        const full = ipv4Frame({ proto, data: new Uint8Array(len).map((_, i) => i * 7) });
        const partial = ipv4Frame({
          proto,
          data: new Uint8Array(len).map((_, i) => i * 7),
          partial: true,
        });
        assert.ok(ipv4ChecksumOk(full.frame));
        assert.ok(!ipv4ChecksumOk(partial.frame) || len === 0);
        completeChecksum(partial.frame, partial.csumStart, partial.csumOffset);
        assert.ok(ipv4ChecksumOk(partial.frame), `proto ${proto}, ${len} bytes`);
      }
    }
  });

  it("classifies destinations and reads VLAN ids", () => {
    assert.equal(destinationClass(ethFrame(), 0), MAC_BROADCAST);
    assert.equal(destinationClass(ethFrame({ dst: [1, 0, 0x5e, 0, 0, 1] }), 0), MAC_MULTICAST);
    assert.equal(destinationClass(ethFrame({ dst: [2, 0, 0, 0, 0, 9] }), 0), MAC_UNICAST);
    assert.equal(vlanId(ethFrame({ vlan: 42 }), 0, 64), 42);
    assert.equal(vlanId(ethFrame(), 0, 60), -1);
    assert.equal(vlanId(ethFrame({ vlan: 42 }), 0, ETH_HLEN), -1);
  });

  it("flowHash() is the same both ways and differs between flows", () => {
    const ab = ipv4Frame({ srcIp: [10, 0, 0, 1], dstIp: [10, 0, 0, 2], srcPort: 1, dstPort: 2 });
    const ba = ipv4Frame({ srcIp: [10, 0, 0, 2], dstIp: [10, 0, 0, 1], srcPort: 2, dstPort: 1 });
    const other = ipv4Frame({ srcIp: [10, 0, 0, 1], dstIp: [10, 0, 0, 2], srcPort: 3, dstPort: 2 });
    const h = (f: Uint8Array) => flowHash(f, 0, f.length);
    assert.equal(h(ab.frame), h(ba.frame));
    assert.notEqual(h(ab.frame), h(other.frame));
    assert.equal(h(ethFrame()), 0);
    assert.equal(h(ab.frame.subarray(0, 20)), 0); // truncated: no fields read past the end
  });
});

describe("FrameBacklog", () => {
  it("keeps frames in order across wrap-around and refuses what does not fit", () => {
    const b = new FrameBacklog(100);
    const frame = (n: number, v: number) => new Uint8Array(n).fill(v);
    assert.ok(b.push(frame(40, 1), 40));
    assert.ok(b.push(frame(40, 2), 40));
    assert.ok(!b.push(frame(40, 3), 40)); // 3 × 44 > 100
    assert.equal(b.peek()![0], 1);
    b.shift();
    assert.ok(b.push(frame(30, 3), 30)); // wraps to the start
    assert.ok(!b.push(frame(10, 4), 10)); // would reach the oldest record
    assert.deepEqual([b.peek()![0], b.peek()!.length], [2, 40]);
    b.shift();
    assert.deepEqual([b.peek()![0], b.peek()!.length], [3, 30]);
    b.shift();
    assert.equal(b.length, 0);
    assert.equal(b.peek(), undefined);
    assert.ok(!b.push(frame(97, 5), 97));
    assert.ok(b.push(frame(96, 5), 96));
    assert.equal(b.bytes, 96);
    assert.equal(b.clear(), 1);
  });

  it("never holds more than its capacity, whatever the sizes", () => {
    const b = new FrameBacklog(1000);
    let x = 12345;
    let held = 0;
    const lens: number[] = [];
    for (let i = 0; i < 5000; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      if (x % 3 === 0 && b.length > 0) {
        assert.equal(b.peek()!.length, lens.shift());
        b.shift();
      } else {
        const n = x % 300;
        if (b.push(new Uint8Array(n), n)) lens.push(n);
      }
      held = Math.max(held, b.bytes + 4 * b.length);
      assert.ok(b.bytes + 4 * b.length <= 1000);
    }
    assert.ok(held > 500);
  });
});
