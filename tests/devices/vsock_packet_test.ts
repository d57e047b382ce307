import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  checkVsockPacket,
  decodeVsockHeader,
  emptyVsockHeader,
  encodeVsockHeader,
  VIRTIO_VSOCK_F_NO_IMPLIED_STREAM,
  VIRTIO_VSOCK_F_SEQPACKET,
  VIRTIO_VSOCK_F_STREAM,
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_INVALID,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_TYPE_SEQPACKET,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_HEADER_SIZE,
  vsockFwdCntValid,
  type VsockHeader,
  vsockHeader,
  type VsockPacketLimits,
  vsockPeerFree,
  vsockTypesAllowed,
  vsockWithinCredit,
} from "../../devices/vsock.ts";

const LIMITS: VsockPacketLimits = {
  guestCid: 3,
  stream: true,
  seqpacket: true,
  maxPayload: 65536,
};

function decode(bytes: Uint8Array): VsockHeader {
  return decodeVsockHeader(new DataView(bytes.buffer, bytes.byteOffset), emptyVsockHeader());
}

const GOOD: Partial<VsockHeader> = {
  srcCid: 3,
  dstCid: 2,
  srcPort: 1000,
  dstPort: 2000,
  type: VIRTIO_VSOCK_TYPE_STREAM,
  op: VIRTIO_VSOCK_OP_RW,
  len: 10,
};

describe("vsock packet header", () => {
  it("encodes and decodes every field little-endian at its offset", () => {
    const h: VsockHeader = {
      srcCid: 0x01020304,
      srcCidHigh: 0x05060708,
      dstCid: 2,
      dstCidHigh: 0,
      srcPort: 0xdeadbeef,
      dstPort: 0x11223344,
      len: 0x55667788,
      type: 0x99aa,
      op: 0xbbcc,
      flags: 0xddeeff00,
      bufAlloc: 0x12345678,
      fwdCnt: 0x9abcdef0,
    };
    const bytes = new Uint8Array(VSOCK_HEADER_SIZE);
    encodeVsockHeader(new DataView(bytes.buffer), h);
    assert.deepEqual([...bytes.subarray(0, 8)], [4, 3, 2, 1, 8, 7, 6, 5]);
    assert.deepEqual([...bytes.subarray(16, 20)], [0xef, 0xbe, 0xad, 0xde]);
    assert.deepEqual([...bytes.subarray(28, 32)], [0xaa, 0x99, 0xcc, 0xbb]);
    assert.deepEqual([...bytes.subarray(40, 44)], [0xf0, 0xde, 0xbc, 0x9a]);
    assert.deepEqual(decode(bytes), h);
  });

  it("vsockHeader fills unspecified fields with zero", () => {
    const h = decode(vsockHeader({ srcPort: 7 }));
    assert.deepEqual(h, { ...emptyVsockHeader(), srcPort: 7 });
  });
});

describe("checkVsockPacket", () => {
  const cases: [string, Partial<VsockHeader>, number, string | null, string?][] = [
    ["a good RW packet", {}, 54, null],
    ["a header alone for a control op", { op: VIRTIO_VSOCK_OP_REQUEST, len: 0 }, 44, null],
    ["extra readable bytes past len", {}, 100, null],
    ["a chain shorter than a header", {}, 43, "shortHeader", "drop"],
    ["an empty chain", {}, 0, "shortHeader", "drop"],
    ["a spoofed source CID", { srcCid: 4 }, 54, "badSourceCid", "drop"],
    ["the host's CID as source", { srcCid: 2 }, 54, "badSourceCid", "drop"],
    ["reserved source CID bits", { srcCidHigh: 1 }, 54, "reservedCidBits", "drop"],
    ["reserved destination CID bits", { dstCidHigh: 0x80000000 }, 54, "reservedCidBits", "drop"],
    [
      "a request to another guest",
      { dstCid: 5, op: VIRTIO_VSOCK_OP_REQUEST, len: 0 },
      44,
      "badDestination",
      "rst",
    ],
    ["data to another guest", { dstCid: 5 }, 54, "badDestination", "drop"],
    ["data to the guest itself", { dstCid: 3 }, 54, "badDestination", "drop"],
    ["type 0", { type: 0 }, 54, "unknownType", "rst"],
    ["type 3", { type: 3 }, 54, "unknownType", "rst"],
    ["type 0xffff", { type: 0xffff }, 54, "unknownType", "rst"],
    [
      "an RST of unknown type",
      { type: 9, op: VIRTIO_VSOCK_OP_RST, len: 0 },
      44,
      "unknownType",
      "drop",
    ],
    ["op INVALID", { op: VIRTIO_VSOCK_OP_INVALID }, 54, "unknownOp", "rst"],
    ["op 8", { op: 8 }, 54, "unknownOp", "rst"],
    ["op 0xffff", { op: 0xffff }, 54, "unknownOp", "rst"],
    ["len past the chain", { len: 11 }, 54, "lengthExceedsBuffer", "rst"],
    ["len 2^32 - 1", { len: 0xffffffff }, 54, "lengthExceedsBuffer", "rst"],
    ["len past the device limit", { len: 65537 }, 44 + 65537, "lengthTooLarge", "rst"],
    [
      "an RST whose len lies",
      { op: VIRTIO_VSOCK_OP_RST, len: 100 },
      44,
      "lengthExceedsBuffer",
      "drop",
    ],
    ["a credit request", { op: VIRTIO_VSOCK_OP_CREDIT_REQUEST, len: 0 }, 44, null],
  ];
  for (const [name, fields, readable, reason, action] of cases) {
    it(`${reason === null ? "accepts" : "refuses"} ${name}`, () => {
      const h = decode(vsockHeader({ ...GOOD, ...fields }));
      const got = checkVsockPacket(h, readable, LIMITS);
      if (reason === null) assert.equal(got, null);
      else assert.deepEqual(got, { reason, action });
    });
  }

  it("refuses a socket type the features do not allow", () => {
    const h = decode(vsockHeader({ ...GOOD, type: VIRTIO_VSOCK_TYPE_SEQPACKET }));
    assert.deepEqual(checkVsockPacket(h, 54, { ...LIMITS, seqpacket: false }), {
      reason: "unknownType",
      action: "rst",
    });
    const s = decode(vsockHeader(GOOD));
    assert.deepEqual(checkVsockPacket(s, 54, { ...LIMITS, stream: false }), {
      reason: "unknownType",
      action: "rst",
    });
  });
});

describe("vsockTypesAllowed (virtio 1.2 §5.10.3)", () => {
  const bit = (b: number) => 1n << BigInt(b);
  const cases: [string, bigint, boolean, boolean][] = [
    ["no type feature: stream", 0n, true, false],
    ["STREAM", bit(VIRTIO_VSOCK_F_STREAM), true, false],
    ["SEQPACKET implies stream", bit(VIRTIO_VSOCK_F_SEQPACKET), true, true],
    [
      "SEQPACKET + NO_IMPLIED_STREAM",
      bit(VIRTIO_VSOCK_F_SEQPACKET) | bit(VIRTIO_VSOCK_F_NO_IMPLIED_STREAM),
      false,
      true,
    ],
    [
      "all three",
      bit(VIRTIO_VSOCK_F_STREAM) | bit(VIRTIO_VSOCK_F_SEQPACKET) |
      bit(VIRTIO_VSOCK_F_NO_IMPLIED_STREAM),
      true,
      true,
    ],
  ];
  for (const [name, acked, stream, seqpacket] of cases) {
    it(name, () => assert.deepEqual(vsockTypesAllowed(acked), { stream, seqpacket }));
  }
});

describe("vsock credit arithmetic (wrapping 32-bit counters)", () => {
  it("peer free space", () => {
    assert.equal(vsockPeerFree(65536, 0, 0), 65536);
    assert.equal(vsockPeerFree(65536, 65536, 0), 0);
    assert.equal(vsockPeerFree(65536, 70000, 10000), 5536);
    // Across the wrap: 0x10 sent past 2^32, the peer consumed up to 2^32 - 0x10.
    assert.equal(vsockPeerFree(4096, 0x10, 0xfffffff0), 4096 - 0x20);
    // A peer that shrank its buffer below what is in flight has no room, not negative room.
    assert.equal(vsockPeerFree(100, 1000, 0), 0);
    assert.equal(vsockPeerFree(0xffffffff, 0, 0), 0xffffffff);
  });

  it("fwd_cnt may only move forward up to tx_cnt, across the wrap too", () => {
    assert.equal(vsockFwdCntValid(0, 0, 0), true);
    assert.equal(vsockFwdCntValid(0, 100, 100), true);
    assert.equal(vsockFwdCntValid(0, 101, 100), false); // past what was sent
    assert.equal(vsockFwdCntValid(50, 49, 100), false); // backwards
    assert.equal(vsockFwdCntValid(0xfffffff0, 0xfffffff8, 0x10), true);
    assert.equal(vsockFwdCntValid(0xfffffff0, 0x10, 0x10), true); // forward across the wrap
    assert.equal(vsockFwdCntValid(0xfffffff0, 0x11, 0x10), false);
    assert.equal(vsockFwdCntValid(0x10, 0xfffffff0, 0x20), false); // backwards across it
  });

  it("data within the advertised buffer", () => {
    assert.equal(vsockWithinCredit(1000, 0, 0, 1000), true);
    assert.equal(vsockWithinCredit(1000, 0, 0, 1001), false);
    assert.equal(vsockWithinCredit(1000, 500, 200, 700), true);
    assert.equal(vsockWithinCredit(1000, 500, 200, 701), false);
    assert.equal(vsockWithinCredit(1000, 0x10, 0xfffffff0, 968), true); // 0x20 held
    assert.equal(vsockWithinCredit(1000, 0x10, 0xfffffff0, 969), false);
  });
});
