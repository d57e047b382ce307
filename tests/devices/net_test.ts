// The virtio-net device driven from the guest side: the MMIO transport and its driver harness
// set it up as a Linux driver would, DriverQueues post buffers and frames, a MemoryNetBackend
// stands for the wire. Every request and control command type, and every bad value.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { VIRTIO_F_EVENT_IDX } from "../../queue/split.ts";
import {
  DEFAULT_SERVE_BUDGET,
  DEVICE_DRIVER_OK,
  featureBit,
  VIRTIO_F_VERSION_1,
  VIRTIO_INTR_CONFIG,
  type VirtioError,
} from "../../devices/device.ts";
import {
  MemoryNetBackend,
  type MemoryNetBackendOptions,
  NET_CONFIG_SIZE,
  NetConfigOffset,
  NetDevice,
  type NetOptions,
  VIRTIO_NET_CTRL_ANNOUNCE,
  VIRTIO_NET_CTRL_GUEST_OFFLOADS,
  VIRTIO_NET_CTRL_MAC,
  VIRTIO_NET_CTRL_MQ,
  VIRTIO_NET_CTRL_RX,
  VIRTIO_NET_CTRL_VLAN,
  VIRTIO_NET_ERR,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_SPEED_DUPLEX,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_OK,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
} from "../../devices/net.ts";
import { MMIO_CONFIG_OFFSET, MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import type { DriverQueue } from "../../testing/queue_driver.ts";
import {
  concatBytes,
  ethFrame,
  ipv4ChecksumOk,
  ipv4Frame,
  netHeader,
  type NetHeaderFields,
  takeFrames,
} from "../../testing/net_driver.ts";

const ALL = ~0n & 0xffff_ffff_ffff_ffffn;
const bit = featureBit;
const MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const OTHER = [0x52, 0x54, 0x00, 0x99, 0x99, 0x99];

interface Rig {
  mem: GuestMemory;
  net: NetDevice;
  backend: MemoryNetBackend;
  transport: MmioTransport;
  driver: MmioDriver;
  q: DriverQueue[];
  errors: VirtioError[];
  irq: { count: number };
}

function rig(
  o: {
    net?: Partial<NetOptions>;
    backend?: MemoryNetBackendOptions;
    features?: bigint;
    queueSize?: number;
    version?: 1 | 2;
  } = {},
): Rig {
  const mem = GuestMemory.create(16 << 20);
  const backend = new MemoryNetBackend(o.backend);
  const errors: VirtioError[] = [];
  const net = new NetDevice({
    backend,
    mac: new Uint8Array(MAC),
    onError: (e) => errors.push(e),
    ...o.net,
  });
  const irq = { count: 0 };
  const transport = new MmioTransport(net, mem, {
    version: o.version,
    interrupt: () => irq.count++,
  });
  const driver = new MmioDriver(transport, mem);
  const q = driver.init({ features: o.features ?? ALL, queueSize: o.queueSize ?? 64 });
  return { mem, net, backend, transport, driver, q, errors, irq };
}

/** Send frames on the transmit queue of `pair` (each chain: header, then frame). */
function send(r: Rig, frames: Uint8Array[], pair = 0, header: NetHeaderFields = {}): void {
  const hdr = netHeader(header);
  for (const f of frames) r.q[2 * pair + 1].addChain([{ readable: concatBytes(hdr, f) }]);
  r.driver.kick(2 * pair + 1, true);
}

/** Post receive buffers on `pair` and kick. */
function postRx(r: Rig, count: number, size = 1526, pair = 0): void {
  for (let i = 0; i < count; i++) r.q[2 * pair].addChain([{ writable: size }]);
  r.driver.kick(2 * pair, true);
}

/** A frame the backend delivers: header, then frame. */
function inject(r: Rig, frame: Uint8Array, header: NetHeaderFields = {}, queue = 0): void {
  r.backend.inject(concatBytes(netHeader(header), frame), queue);
}

/** Send one control command on queue `index`; returns the ack. */
function ctrl(
  r: Rig,
  index: number,
  cls: number,
  cmd: number,
  data: Uint8Array = new Uint8Array(0),
) {
  r.q[index].addChain([{ readable: concatBytes(new Uint8Array([cls, cmd]), data) }, {
    writable: 1,
  }]);
  r.driver.kick(index, true);
  const used = r.q[index].takeUsed();
  assert.ok(used !== null, "control command not completed");
  assert.equal(used.len, 1);
  return used.written[0];
}

const le16 = (v: number) => new Uint8Array([v & 0xff, v >> 8]);
const le32 = (v: number) => new Uint8Array([v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24]);
const toMac = (dst: number[]) => ethFrame({ dst, src: OTHER, payload: new Uint8Array(50).fill(7) });
const tick = () => new Promise<void>((r) => setTimeout(r, 0));

describe("NetDevice: negotiation and configuration", () => {
  it("lays out the configuration space: MAC, status, pairs, MTU, speed, duplex", () => {
    const r = rig({ net: { queuePairs: 3, mtu: 9000, speed: 2500 } });
    const c = r.driver.readConfig(0, NET_CONFIG_SIZE);
    const v = new DataView(c.buffer);
    assert.deepEqual([...c.subarray(0, 6)], MAC);
    assert.equal(v.getUint16(NetConfigOffset.status, true), VIRTIO_NET_S_LINK_UP);
    assert.equal(v.getUint16(NetConfigOffset.maxVirtqueuePairs, true), 3);
    assert.equal(v.getUint16(NetConfigOffset.mtu, true), 9000);
    assert.equal(v.getUint32(NetConfigOffset.speed, true), 2500);
    assert.equal(c[NetConfigOffset.duplex], 1);
    assert.equal(r.net.queueMaxSizes().length, 7); // 3 pairs and the control queue
  });

  it("offers the offloads the backend carries, and nothing they require that it lacks", () => {
    const offered = (backend: MemoryNetBackendOptions, net: Partial<NetOptions> = {}) => {
      const dev = new NetDevice({ backend: new MemoryNetBackend(backend), ...net });
      return BigInt(dev.getAvailFeatures(0)) | (BigInt(dev.getAvailFeatures(1)) << 32n);
    };
    const all = offered({});
    for (
      const b of [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_SPEED_DUPLEX,
        VIRTIO_NET_F_CTRL_VQ,
      ]
    ) assert.ok((all & bit(b)) !== 0n, `feature ${b}`);
    assert.equal(all & bit(VIRTIO_NET_F_MQ), 0n); // one pair
    assert.ok((offered({}, { queuePairs: 2 }) & bit(VIRTIO_NET_F_MQ)) !== 0n);
    const offloads = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM) |
      bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_HOST_ECN) |
      bit(VIRTIO_NET_F_HOST_UFO) | bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6) |
      bit(VIRTIO_NET_F_GUEST_ECN) | bit(VIRTIO_NET_F_GUEST_UFO) |
      bit(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
    const none = { csum: false, tso4: false, tso6: false, ecn: false, ufo: false };
    assert.equal(offered({ offloads: none }) & offloads, 0n);
    // Segmentation without checksums cannot be offered (virtio 1.2 §5.1.3.1).
    assert.equal(offered({ offloads: { csum: false } }) & offloads, 0n);
    const tso4Only = offered({ offloads: { tso6: false, ecn: false, ufo: false } });
    assert.ok((tso4Only & bit(VIRTIO_NET_F_HOST_TSO4)) !== 0n);
    assert.equal(tso4Only & (bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_GUEST_UFO)), 0n);
    // The options restrict further; no control queue means none of its features.
    assert.equal(offered({}, { offloads: { tso4: false } }) & bit(VIRTIO_NET_F_GUEST_TSO4), 0n);
    assert.equal(offered({}, { ctrlQueue: false, queuePairs: 2 }) & bit(VIRTIO_NET_F_MQ), 0n);
  });

  it("refuses bad options", () => {
    const b = new MemoryNetBackend();
    assert.throws(() => new NetDevice({ backend: b, mtu: 67 }), RangeError);
    assert.throws(() => new NetDevice({ backend: b, mtu: 65536 }), RangeError);
    assert.throws(() => new NetDevice({ backend: b, queuePairs: 0 }), RangeError);
    assert.throws(() => new NetDevice({ backend: b, queueSize: 100 }), RangeError);
    assert.throws(() => new NetDevice({ backend: b, mac: "01:00:5e:00:00:01" }), RangeError);
    assert.throws(() => new NetDevice({ backend: b, mac: "00:00:00:00:00:00" }), RangeError);
    assert.throws(() => new NetDevice({ backend: b, mac: "52:54:00:12:34" }), RangeError);
    assert.throws(() => new NetDevice({ backend: b, speed: -1 }), RangeError);
    assert.equal(new NetDevice({ backend: b, mac: "52-54-00-AB-CD-EF" }).mac, "52:54:00:ab:cd:ef");
    const random = new NetDevice({ backend: b });
    assert.match(random.mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    assert.equal(parseInt(random.mac.slice(0, 2), 16) & 3, 2); // local, unicast
  });

  it("keeps the configuration space read-only for a modern driver", () => {
    const r = rig();
    r.transport.write(MMIO_CONFIG_OFFSET, new Uint8Array([1, 2, 3, 4, 5, 6]));
    assert.deepEqual([...r.driver.readConfig(0, 6)], MAC);
  });

  it("starts the backend on activation, stops it on reset, and serves again after", () => {
    const r = rig();
    assert.ok(r.backend.started);
    r.driver.transport.writeU32(0x70, 0); // Status = 0: reset
    assert.ok(!r.backend.started);
    const q = r.driver.init({ queueSize: 64 });
    r.q = q;
    assert.ok(r.backend.started);
    send(r, [ethFrame()]);
    assert.equal(r.backend.takeSent().length, 1);
  });
});

describe("NetDevice: transmit", () => {
  it("sends header and frame to the backend, completes the chain with length 0", () => {
    const r = rig();
    const { frame, csumStart, csumOffset } = ipv4Frame({ partial: true });
    send(r, [frame], 0, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart, csumOffset });
    const [sent] = r.backend.takeSent();
    assert.deepEqual(
      sent.bytes,
      concatBytes(netHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart, csumOffset }), frame),
    );
    const used = r.q[1].takeUsed()!;
    assert.equal(used.len, 0);
    assert.equal(r.net.stats.txFrames, 1);
    assert.equal(r.net.stats.txBytes, frame.length);
    assert.equal(r.net.stats.txCsumOffload, 1);
  });

  it("takes the frame in any number of descriptors, header split or not, indirect or not", () => {
    const r = rig();
    const frame = ethFrame({ payload: new Uint8Array(1000).map((_, i) => i) });
    const hdr = netHeader();
    r.q[1].addChain([
      { readable: hdr.subarray(0, 5) },
      { readable: concatBytes(hdr.subarray(5), frame.subarray(0, 3)) },
      { readable: frame.subarray(3, 500) },
      { readable: frame.subarray(500) },
    ]);
    r.q[1].addChain([{ readable: concatBytes(hdr, frame) }], { indirect: true });
    r.driver.kick(1);
    const sent = r.backend.takeSent();
    assert.equal(sent.length, 2);
    for (const s of sent) assert.deepEqual(s.bytes, concatBytes(hdr, frame));
  });

  it("sends the checked copy of the header, with only NEEDS_CSUM kept", () => {
    const r = rig();
    send(r, [ethFrame()], 0, { flags: 0xfe, numBuffers: 7 });
    const [sent] = r.backend.takeSent();
    assert.deepEqual(sent.bytes.subarray(0, 12), netHeader());
  });

  const bad: [string, NetHeaderFields, Uint8Array, string][] = [
    ["an unknown gso_type", { gsoType: 2 }, ethFrame(), "badGso"],
    [
      "TSO4 without NEEDS_CSUM",
      { gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448 },
      ipv4Frame().frame,
      "badGso",
    ],
    [
      "csum_start past the frame",
      { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 5000, csumOffset: 16 },
      ethFrame(),
      "badCsum",
    ],
    [
      "csum_offset past the frame",
      { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 60 },
      ethFrame(),
      "badCsum",
    ],
    ["hdr_len past the frame", { hdrLen: 61 }, ethFrame(), "badHdrLen"],
    ["a frame above the MTU", {}, ethFrame({ payload: new Uint8Array(1505) }), "oversize"],
    ["a frame shorter than an Ethernet header", {}, new Uint8Array(10), "runt"],
  ];
  for (const [name, h, frame, reason] of bad) {
    it(`drops and counts ${name} (${reason}) and keeps serving`, () => {
      const r = rig();
      send(r, [frame], 0, h);
      send(r, [ethFrame()]);
      assert.equal(r.backend.takeSent().length, 1); // only the good frame
      assert.equal((r.net.stats.txDrops as Record<string, number>)[reason], 1);
      assert.deepEqual(r.q[1].takeAllUsed().map((u) => u.len), [0, 0]);
      assert.equal(r.errors.length, 0);
      assert.equal(r.driver.status() & 0x40, 0); // no NEEDS_RESET
    });
  }

  it("drops a chain shorter than the header, and one with only writable buffers", () => {
    const r = rig();
    r.q[1].addChain([{ readable: new Uint8Array(11) }]);
    r.q[1].addChain([{ writable: 100 }]);
    r.driver.kick(1);
    assert.equal(r.net.stats.txDrops.shortChain, 2);
    assert.equal(r.q[1].takeAllUsed().length, 2);
  });

  it("refuses segmentation the driver did not negotiate, accepts what it did", () => {
    const { frame, csumStart, csumOffset } = ipv4Frame({
      data: new Uint8Array(4000),
      partial: true,
    });
    const tso = {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      gsoSize: 1448,
      hdrLen: 54,
      csumStart,
      csumOffset,
    };
    const without = rig({ features: ALL & ~bit(VIRTIO_NET_F_HOST_TSO4) });
    send(without, [frame], 0, tso);
    assert.equal(without.net.stats.txDrops.badGso, 1);
    const withTso = rig();
    send(withTso, [frame], 0, tso);
    assert.equal(withTso.backend.takeSent().length, 1);
    assert.equal(withTso.net.stats.txGso, 1);
  });

  it("without MTU negotiated, takes frames up to 64 KiB without segmentation", () => {
    const r = rig({ features: ALL & ~bit(VIRTIO_NET_F_MTU) });
    send(r, [ethFrame({ payload: new Uint8Array(9000) })]);
    assert.equal(r.backend.takeSent().length, 1);
  });

  it("drops frames while the link is down", () => {
    const r = rig();
    r.net.setLinkUp(false);
    send(r, [ethFrame()]);
    assert.equal(r.backend.takeSent().length, 0);
    assert.equal(r.net.stats.txDrops.linkDown, 1);
    assert.equal(r.q[1].takeAllUsed().length, 1);
  });

  it("stops taking chains while the backend is full and resumes when it is writable", async () => {
    const r = rig({ backend: { sendCapacity: 2 } });
    let calls = 0;
    const send0 = r.backend.send.bind(r.backend);
    r.backend.send = (q, parts) => (calls++, send0(q, parts));
    send(r, [1, 2, 3, 4, 5].map((i) => ethFrame({ payload: new Uint8Array(46).fill(i) })));
    // Two taken, one offered and refused, the rest left in the ring: no spinning.
    assert.equal(calls, 3);
    assert.equal(r.net.stats.txStalls, 1);
    assert.equal(r.q[1].takeAllUsed().length, 2);
    // A kick while full does nothing.
    r.driver.kick(1, true);
    assert.equal(calls, 3);
    const first = r.backend.takeSent(); // room for two more: the device is told
    assert.deepEqual(first.map((s) => s.bytes[12 + 14]), [1, 2]);
    await tick();
    const second = r.backend.takeSent();
    assert.deepEqual(second.map((s) => s.bytes[12 + 14]), [3, 4]);
    await tick();
    assert.deepEqual(r.backend.takeSent().map((s) => s.bytes[12 + 14]), [5]);
    assert.equal(r.q[1].takeAllUsed().length, 3);
    assert.equal(r.net.stats.txFrames, 5);
  });

  it("counts a backend that throws and goes on", () => {
    const r = rig();
    let n = 0;
    r.backend.send = () => {
      if (n++ === 0) throw new Error("wire cut");
      return "sent";
    };
    send(r, [ethFrame(), ethFrame()]);
    assert.equal(r.net.stats.txDrops.backend, 1);
    assert.equal(r.net.stats.backendErrors, 1);
    assert.equal(r.net.stats.txFrames, 1);
    assert.equal(r.errors.length, 1);
  });
});

describe("NetDevice: receive", () => {
  it("puts a frame with num_buffers = 1 in one buffer", () => {
    const r = rig();
    postRx(r, 4);
    const frame = toMac(MAC);
    inject(r, frame);
    const [got] = takeFrames(r.q[0]);
    assert.deepEqual(got.frame, frame);
    assert.equal(got.header.numBuffers, 1);
    assert.equal(r.net.stats.rxFrames, 1);
    assert.equal(r.net.stats.queues[0].rxBytes, frame.length);
    assert.ok(r.irq.count > 0);
  });

  it("spreads a large segmented frame over merged buffers, published together", () => {
    const r = rig();
    postRx(r, 40, 4096);
    const { frame, csumStart, csumOffset } = ipv4Frame({
      dst: MAC,
      data: new Uint8Array(65000).map((_, i) => i * 13),
      partial: true,
    });
    const h = {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      gsoSize: 1448,
      hdrLen: 54,
      csumStart,
      csumOffset,
    };
    // The driver must see all the packet's buffers at once: one used.idx move, no single adds.
    const q0 = r.transport.queues[0];
    const publications: number[] = [];
    const many = q0.addUsedMany.bind(q0);
    q0.addUsedMany = (mem, heads, lens, count) => {
      publications.push(count ?? heads.length);
      many(mem, heads, lens, count);
    };
    q0.addUsed = () => assert.fail("a buffer of a merged packet published alone");
    inject(r, frame, h);
    const [got] = takeFrames(r.q[0]);
    assert.equal(got.buffers, Math.ceil((frame.length + 12) / 4096));
    assert.deepEqual(publications, [got.buffers]);
    assert.deepEqual(got.frame, frame);
    assert.equal(got.header.gsoType, VIRTIO_NET_HDR_GSO_TCPV4);
    assert.equal(got.header.gsoSize, 1448);
    assert.equal(r.net.stats.rxGso, 1);
  });

  it("without MRG_RXBUF uses one buffer per frame and drops a frame it does not fit", () => {
    const r = rig({ features: ALL & ~bit(VIRTIO_NET_F_MRG_RXBUF) });
    postRx(r, 2, 200);
    inject(r, toMac(MAC));
    inject(r, ethFrame({ dst: MAC, payload: new Uint8Array(300) }));
    const got = takeFrames(r.q[0]);
    assert.equal(got.length, 1);
    assert.equal(got[0].header.numBuffers, 1);
    assert.equal(r.net.stats.rxDrops.tooBig, 1);
    inject(r, toMac(MAC)); // the buffer the big frame did not take is still there
    assert.equal(takeFrames(r.q[0]).length, 1);
  });

  it("keeps frames in a backlog until buffers come, in order", () => {
    const r = rig();
    for (let i = 0; i < 3; i++) {
      inject(r, ethFrame({ dst: MAC, payload: new Uint8Array(46).fill(i) }));
    }
    assert.equal(r.net.backlogFrames, 3);
    postRx(r, 8);
    const got = takeFrames(r.q[0]);
    assert.deepEqual(got.map((f) => f.frame[14]), [0, 1, 2]);
    assert.equal(r.net.backlogFrames, 0);
    // New frames go straight in now.
    inject(r, toMac(MAC));
    assert.equal(takeFrames(r.q[0]).length, 1);
  });

  it("drops and counts what does not fit in the bounded backlog of a driver without buffers", () => {
    const r = rig({ net: { rxBacklogBytes: 4 * (4 + 12 + 64) } });
    for (let i = 0; i < 1000; i++) inject(r, ethFrame({ dst: MAC, payload: new Uint8Array(50) }));
    assert.equal(r.net.backlogFrames, 4);
    assert.equal(r.net.stats.rxDrops.noBuffer, 996);
    assert.equal(r.backend.pending(), 0); // the backend never holds on to them
  });

  it("completes partial checksums for a driver without GUEST_CSUM, and clears the flags", () => {
    const r = rig({
      features: ALL &
        ~(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4) |
          bit(VIRTIO_NET_F_GUEST_TSO6) | bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_GUEST_ECN)),
    });
    postRx(r, 4);
    for (const proto of [6, 17] as const) {
      const { frame, csumStart, csumOffset } = ipv4Frame({ dst: MAC, proto, partial: true });
      inject(r, frame, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart, csumOffset });
      const [got] = takeFrames(r.q[0]);
      assert.equal(got.header.flags, 0);
      assert.ok(ipv4ChecksumOk(got.frame));
    }
    assert.equal(r.net.stats.rxCsumCompleted, 2);
  });

  it("passes partial checksums on to a driver with GUEST_CSUM", () => {
    const r = rig();
    postRx(r, 2);
    const { frame, csumStart, csumOffset } = ipv4Frame({ dst: MAC, partial: true });
    inject(r, frame, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart, csumOffset });
    const [got] = takeFrames(r.q[0]);
    assert.equal(got.header.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert.deepEqual(got.frame, frame);
  });

  it("drops segmented frames of a type the driver did not accept", () => {
    const r = rig({ features: ALL & ~bit(VIRTIO_NET_F_GUEST_TSO4) });
    postRx(r, 20, 4096);
    const { frame, csumStart, csumOffset } = ipv4Frame({ dst: MAC, data: new Uint8Array(9000) });
    inject(r, frame, {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      gsoSize: 1448,
      csumStart,
      csumOffset,
    });
    assert.equal(r.net.stats.rxDrops.gsoRefused, 1);
    assert.equal(takeFrames(r.q[0]).length, 0);
  });

  it("drops frames above the negotiated MTU, bad headers and cut frames from the backend", () => {
    const r = rig();
    postRx(r, 8, 4096);
    inject(r, ethFrame({ dst: MAC, payload: new Uint8Array(1600) }));
    inject(r, toMac(MAC), { gsoType: 2 });
    inject(r, toMac(MAC), { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 500 });
    r.backend.inject(new Uint8Array(20)); // header and 8 bytes
    r.backend.inject(new Uint8Array(80000)); // longer than any frame
    const s = r.net.stats.rxDrops;
    assert.deepEqual([s.oversize, s.badGso, s.badCsum, s.runt, s.truncated], [1, 1, 1, 1, 1]);
    assert.equal(takeFrames(r.q[0]).length, 0);
    inject(r, toMac(MAC));
    assert.equal(takeFrames(r.q[0]).length, 1);
  });

  it("drops frames while the link is down", () => {
    const r = rig();
    postRx(r, 2);
    r.net.setLinkUp(false);
    inject(r, toMac(MAC));
    assert.equal(r.net.stats.rxDrops.linkDown, 1);
    r.net.setLinkUp(true);
    inject(r, toMac(MAC));
    assert.equal(takeFrames(r.q[0]).length, 1);
  });

  it("gives back a receive buffer too small for a header, empty, and goes on", () => {
    const r = rig();
    r.q[0].addChain([{ writable: 4 }]);
    r.q[0].addChain([{ readable: new Uint8Array(100) }]);
    r.q[0].addChain([{ writable: 1526 }]);
    r.driver.kick(0);
    inject(r, toMac(MAC));
    const used = r.q[0].takeAllUsed();
    assert.deepEqual(used.map((u) => u.len), [0, 0, 12 + 64]);
    assert.equal(r.errors.length, 2);
    assert.equal(r.driver.status() & 0x40, 0);
  });

  it("drops a frame when a merged buffer mid-packet has no room, returning the buffers empty", () => {
    const r = rig();
    r.q[0].addChain([{ writable: 100 }]);
    r.q[0].addChain([{ readable: new Uint8Array(8) }]);
    r.q[0].addChain([{ writable: 4096 }]);
    r.driver.kick(0);
    inject(r, ethFrame({ dst: MAC, payload: new Uint8Array(1000) }));
    assert.deepEqual(r.q[0].takeAllUsed().map((u) => u.len), [0, 0]);
    assert.equal(r.net.stats.rxDrops.rxBuffer, 1);
    inject(r, toMac(MAC));
    assert.equal(takeFrames(r.q[0]).length, 1); // into the 4096-byte buffer
  });
});

describe("NetDevice: control queue", () => {
  it("answers every command class and refuses bad ones, by ack", () => {
    const r = rig();
    const C = 2; // no MQ: the control queue follows the first pair
    assert.equal(ctrl(r, C, VIRTIO_NET_CTRL_RX, 0, new Uint8Array([0])), VIRTIO_NET_OK);
    assert.equal(ctrl(r, C, VIRTIO_NET_CTRL_RX, 5, new Uint8Array([1])), VIRTIO_NET_OK);
    assert.equal(ctrl(r, C, VIRTIO_NET_CTRL_RX, 0, new Uint8Array([7])), VIRTIO_NET_ERR);
    assert.equal(
      ctrl(r, C, VIRTIO_NET_CTRL_MAC, 0, concatBytes(le32(0), le32(0))),
      VIRTIO_NET_OK,
    );
    assert.equal(ctrl(r, C, VIRTIO_NET_CTRL_VLAN, 0, le16(5)), VIRTIO_NET_OK);
    assert.equal(ctrl(r, C, VIRTIO_NET_CTRL_VLAN, 1, le16(5)), VIRTIO_NET_OK);
    assert.equal(ctrl(r, C, VIRTIO_NET_CTRL_ANNOUNCE, 0), VIRTIO_NET_OK);
    assert.equal(ctrl(r, C, VIRTIO_NET_CTRL_MQ, 0, le16(1)), VIRTIO_NET_ERR); // no MQ
    assert.equal(ctrl(r, C, 42, 0), VIRTIO_NET_ERR);
    assert.equal(r.net.stats.ctrlOk, 6);
    assert.equal(r.net.stats.ctrlErr, 3);
  });

  it("answers ERR to a command shorter than class and command, and to too much data", () => {
    const r = rig();
    r.q[2].addChain([{ readable: new Uint8Array([0]) }, { writable: 1 }]);
    r.q[2].addChain([{ readable: new Uint8Array(70000) }, { writable: 1 }]);
    r.driver.kick(2);
    assert.deepEqual(r.q[2].takeAllUsed().map((u) => [u.len, u.written[0]]), [[1, 1], [1, 1]]);
  });

  it("returns a command with no ack byte empty and counts it", () => {
    const r = rig();
    r.q[2].addChain([{ readable: new Uint8Array([0, 0, 1]) }]);
    r.driver.kick(2);
    assert.equal(r.q[2].takeUsed()!.len, 0);
    assert.equal(r.net.stats.ctrlErr, 1);
    assert.equal(r.driver.status() & 0x40, 0);
  });

  it("filters by RX mode, MAC table and VLAN table; promiscuous after reset", () => {
    const r = rig();
    postRx(r, 32);
    const delivered = (frame: Uint8Array) => {
      const before = r.net.stats.rxFrames;
      inject(r, frame);
      takeFrames(r.q[0]);
      return r.net.stats.rxFrames > before;
    };
    const MULTI = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x07];
    assert.ok(delivered(toMac(OTHER)), "promiscuous after reset");
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_RX, 0, new Uint8Array([0])), VIRTIO_NET_OK);
    assert.ok(!delivered(toMac(OTHER)));
    assert.ok(delivered(toMac(MAC)));
    assert.ok(delivered(ethFrame()), "broadcast");
    assert.ok(!delivered(toMac(MULTI)));
    const table = concatBytes(le32(1), new Uint8Array(OTHER), le32(1), new Uint8Array(MULTI));
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_MAC, 0, table), VIRTIO_NET_OK);
    assert.ok(delivered(toMac(OTHER)), "unicast table");
    assert.ok(delivered(toMac(MULTI)), "multicast table");
    assert.ok(!delivered(toMac([0x01, 0, 0x5e, 0, 0, 8])));
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_RX, 1, new Uint8Array([1])), VIRTIO_NET_OK);
    assert.ok(delivered(toMac([0x01, 0, 0x5e, 0, 0, 8])), "allmulti");
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_RX, 3, new Uint8Array([1])), VIRTIO_NET_OK);
    assert.ok(!delivered(toMac(MULTI)), "nomulti beats allmulti and the table");
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_RX, 5, new Uint8Array([1])), VIRTIO_NET_OK);
    assert.ok(!delivered(ethFrame()), "nobcast");
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_RX, 4, new Uint8Array([1])), VIRTIO_NET_OK);
    assert.ok(!delivered(toMac(MAC)), "nouni");
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_RX, 4, new Uint8Array([0])), VIRTIO_NET_OK);
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_RX, 2, new Uint8Array([1])), VIRTIO_NET_OK);
    assert.ok(delivered(toMac([2, 9, 9, 9, 9, 9])), "alluni");
    // VLAN: a tagged frame needs its id in the table; untagged frames do not care.
    const tagged = ethFrame({ dst: MAC, vlan: 5 });
    assert.ok(!delivered(tagged));
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_VLAN, 0, le16(5)), VIRTIO_NET_OK);
    assert.ok(delivered(tagged));
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_VLAN, 1, le16(5)), VIRTIO_NET_OK);
    assert.ok(!delivered(tagged));
    assert.ok(delivered(toMac(MAC)));
    assert.ok(r.net.stats.rxDrops.filtered >= 8);
    // After reset the filter is open again.
    r.driver.transport.writeU32(0x70, 0);
    r.q = r.driver.init({ queueSize: 64 });
    postRx(r, 4);
    assert.ok(delivered(toMac(OTHER)));
  });

  it("a MAC table larger than the device keeps accepts its whole kind", () => {
    const r = rig({ net: { macTableEntries: 1 } });
    postRx(r, 4);
    ctrl(r, 2, VIRTIO_NET_CTRL_RX, 0, new Uint8Array([0]));
    const two = concatBytes(le32(2), new Uint8Array([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]), le32(0));
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_MAC, 0, two), VIRTIO_NET_OK);
    inject(r, toMac([2, 7, 7, 7, 7, 7]));
    assert.equal(takeFrames(r.q[0]).length, 1);
  });

  it("MAC_ADDR_SET changes the configuration space before it completes, and the filter", () => {
    const r = rig();
    postRx(r, 4);
    ctrl(r, 2, VIRTIO_NET_CTRL_RX, 0, new Uint8Array([0]));
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_MAC, 1, new Uint8Array(OTHER)), VIRTIO_NET_OK);
    assert.deepEqual([...r.driver.readConfig(0, 6)], OTHER);
    assert.equal(r.net.mac, "52:54:00:99:99:99");
    inject(r, toMac(OTHER));
    assert.equal(takeFrames(r.q[0]).length, 1);
    assert.equal(
      ctrl(r, 2, VIRTIO_NET_CTRL_MAC, 1, new Uint8Array([1, 2, 3, 4, 5, 6])),
      VIRTIO_NET_ERR,
    );
    r.driver.transport.writeU32(0x70, 0);
    assert.equal(r.net.mac, "52:54:00:12:34:56"); // reset restores the configured address
  });

  it("GUEST_OFFLOADS_SET changes what the device delivers and tells the backend", () => {
    const r = rig();
    postRx(r, 20, 4096);
    assert.ok(r.backend.guestOffloads.tso4);
    const csumOnly = new Uint8Array(8);
    csumOnly[0] = 1 << VIRTIO_NET_F_GUEST_CSUM;
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0, csumOnly), VIRTIO_NET_OK);
    assert.deepEqual(r.backend.guestOffloads, {
      csum: true,
      tso4: false,
      tso6: false,
      ecn: false,
      ufo: false,
    });
    const { frame, csumStart, csumOffset } = ipv4Frame({ dst: MAC, data: new Uint8Array(5000) });
    inject(r, frame, {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      gsoSize: 1448,
      csumStart,
      csumOffset,
    });
    assert.equal(r.net.stats.rxDrops.gsoRefused, 1);
    const notNegotiated = new Uint8Array(8);
    notNegotiated[6] = 0x40; // bit 54, GUEST_USO4
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0, notNegotiated), VIRTIO_NET_ERR);
  });

  it("has no control queue without CTRL_VQ: queue 2 is then not served", () => {
    const r = rig({ features: ALL & ~bit(VIRTIO_NET_F_CTRL_VQ) });
    r.q[2].addChain([{ readable: new Uint8Array([0, 0, 0]) }, { writable: 1 }]);
    r.driver.kick(2, true);
    assert.equal(r.q[2].takeUsed(), null);
  });
});

describe("NetDevice: link status and announce", () => {
  it("tells the driver of link changes with a configuration interrupt", () => {
    const r = rig();
    r.driver.ackInterrupt();
    const gen = r.transport.configGeneration;
    r.net.setLinkUp(false);
    assert.equal(r.driver.ackInterrupt() & VIRTIO_INTR_CONFIG, VIRTIO_INTR_CONFIG);
    assert.notEqual(r.transport.configGeneration, gen);
    const status = () =>
      new DataView(r.driver.readConfig(NetConfigOffset.status, 2).buffer).getUint16(0, true);
    assert.equal(status() & VIRTIO_NET_S_LINK_UP, 0);
    r.net.setLinkUp(false); // no change, no interrupt
    assert.equal(r.driver.ackInterrupt(), 0);
    r.net.setLinkUp(true);
    assert.equal(r.driver.ackInterrupt() & VIRTIO_INTR_CONFIG, VIRTIO_INTR_CONFIG);
    assert.equal(status() & VIRTIO_NET_S_LINK_UP, VIRTIO_NET_S_LINK_UP);
  });

  it("raises no interrupt for a driver without STATUS, and none before activation", () => {
    const r = rig({ features: ALL & ~bit(VIRTIO_NET_F_STATUS) });
    r.driver.ackInterrupt();
    r.net.setLinkUp(false);
    assert.equal(r.driver.ackInterrupt(), 0);
    const quiet = new NetDevice({ backend: new MemoryNetBackend() });
    quiet.setLinkUp(false);
    assert.equal(quiet.linkUp, false);
  });

  it("asks for an announcement; ANNOUNCE_ACK clears it", () => {
    const r = rig();
    r.driver.ackInterrupt();
    assert.ok(r.net.announce());
    assert.equal(r.driver.ackInterrupt() & VIRTIO_INTR_CONFIG, VIRTIO_INTR_CONFIG);
    const status = () => r.driver.readConfig(NetConfigOffset.status, 1)[0];
    assert.equal(status() & VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_ANNOUNCE);
    assert.equal(ctrl(r, 2, VIRTIO_NET_CTRL_ANNOUNCE, 0), VIRTIO_NET_OK);
    assert.equal(status() & VIRTIO_NET_S_ANNOUNCE, 0);
    const without = rig({ features: ALL & ~bit(VIRTIO_NET_F_CTRL_VQ) });
    assert.equal(without.net.announce(), false);
  });
});

describe("NetDevice: multiqueue", () => {
  function mq(features = ALL) {
    return rig({ net: { queuePairs: 3 }, features });
  }

  it("puts the control queue at 2N with MQ and at 2 without", () => {
    const r = mq();
    assert.equal(ctrl(r, 6, VIRTIO_NET_CTRL_MQ, 0, le16(2)), VIRTIO_NET_OK);
    assert.equal(ctrl(r, 6, VIRTIO_NET_CTRL_MQ, 0, le16(4)), VIRTIO_NET_ERR);
    const single = mq(ALL & ~bit(VIRTIO_NET_F_MQ));
    assert.equal(ctrl(single, 2, VIRTIO_NET_CTRL_RX, 0, new Uint8Array([1])), VIRTIO_NET_OK);
    assert.equal(ctrl(single, 2, VIRTIO_NET_CTRL_MQ, 0, le16(2)), VIRTIO_NET_ERR);
  });

  it("receives on the first pair only until VQ_PAIRS_SET, then steers flows across pairs", () => {
    const r = mq();
    for (let p = 0; p < 3; p++) postRx(r, 64, 1526, p);
    const flow = (port: number) => ipv4Frame({ dst: MAC, srcPort: port }).frame;
    for (let port = 1; port <= 30; port++) inject(r, flow(port));
    assert.deepEqual(r.net.stats.queues.map((q) => q.rxFrames), [30, 0, 0]);
    assert.equal(ctrl(r, 6, VIRTIO_NET_CTRL_MQ, 0, le16(3)), VIRTIO_NET_OK);
    assert.deepEqual(r.net.activeQueuePairs, [0, 1, 2]);
    for (let port = 1; port <= 30; port++) inject(r, flow(port));
    const after = r.net.stats.queues.map((q) => q.rxFrames);
    assert.ok(after[1] > 0 && after[2] > 0, `spread: ${after}`);
    // One flow always lands on the same pair.
    const before = r.net.stats.queues.map((q) => q.rxFrames);
    for (let i = 0; i < 5; i++) inject(r, flow(7));
    const moved = r.net.stats.queues.map((q, i) => q.rxFrames - before[i]);
    assert.equal(moved.filter((n) => n === 5).length, 1);
    // Back to one pair: nothing goes to the others any more.
    assert.equal(ctrl(r, 6, VIRTIO_NET_CTRL_MQ, 0, le16(1)), VIRTIO_NET_OK);
    const one = r.net.stats.queues.map((q) => q.rxFrames);
    for (let port = 1; port <= 10; port++) inject(r, flow(port));
    assert.deepEqual(r.net.stats.queues.map((q, i) => q.rxFrames - one[i]), [10, 0, 0]);
  });

  it("steers a reply to the pair its flow was sent on", () => {
    const r = mq();
    for (let p = 0; p < 3; p++) postRx(r, 8, 1526, p);
    ctrl(r, 6, VIRTIO_NET_CTRL_MQ, 0, le16(3));
    for (const pair of [0, 1, 2]) {
      const out = ipv4Frame({
        srcIp: [10, 0, 0, 2],
        dstIp: [10, 0, 0, 9],
        srcPort: 5000 + pair,
        dstPort: 80,
      });
      send(r, [out.frame], pair);
      assert.equal(r.net.stats.queues[pair].txFrames, 1);
      const before = r.net.stats.queues[pair].rxFrames;
      const reply = ipv4Frame({
        dst: MAC,
        srcIp: [10, 0, 0, 9],
        dstIp: [10, 0, 0, 2],
        srcPort: 80,
        dstPort: 5000 + pair,
      });
      inject(r, reply.frame);
      assert.equal(r.net.stats.queues[pair].rxFrames, before + 1, `pair ${pair}`);
    }
  });

  it("follows the backend's queue when it has several", () => {
    const r = rig({ net: { queuePairs: 2 }, backend: { queuePairs: 2 } });
    for (let p = 0; p < 2; p++) postRx(r, 8, 1526, p);
    ctrl(r, 4, VIRTIO_NET_CTRL_MQ, 0, le16(2));
    inject(r, toMac(MAC), {}, 1);
    inject(r, toMac(MAC), {}, 0);
    assert.deepEqual(r.net.stats.queues.map((q) => q.rxFrames), [1, 1]);
    send(r, [ethFrame()], 1);
    assert.deepEqual(r.backend.takeSent().map((s) => s.queue), [1]);
  });

  it("without a control queue uses every pair the transport started (vhost-user)", () => {
    const r = rig({ net: { queuePairs: 2, ctrlQueue: false } });
    assert.deepEqual(r.net.activeQueuePairs, [0]); // MQ needs CTRL_VQ: not offered
    const frontend = new NetDevice({
      backend: new MemoryNetBackend(),
      queuePairs: 2,
      mac: new Uint8Array(MAC),
    });
    // As vhost-user does: MQ acked, CTRL_VQ not (QEMU keeps the control queue).
    const mem = GuestMemory.create(16 << 20);
    const transport = new MmioTransport(frontend, mem);
    const driver = new MmioDriver(transport, mem);
    driver.init({
      features: ALL & ~bit(VIRTIO_NET_F_CTRL_VQ) & ~bit(VIRTIO_F_EVENT_IDX),
      queueSize: 16,
    });
    assert.deepEqual(frontend.activeQueuePairs, [0, 1]);
  });
});

describe("NetDevice: legacy driver", () => {
  it("uses the 10-byte header without VERSION_1 and MRG_RXBUF", () => {
    const r = rig({
      version: 1,
      features: ALL & ~bit(VIRTIO_F_VERSION_1) & ~bit(VIRTIO_NET_F_MRG_RXBUF),
    });
    assert.ok((r.driver.status() & DEVICE_DRIVER_OK) !== 0);
    const frame = toMac(MAC);
    r.q[1].addChain([{ readable: concatBytes(netHeader({}, 10), frame) }]);
    r.driver.kick(1);
    const [sent] = r.backend.takeSent();
    assert.deepEqual(sent.bytes, concatBytes(netHeader(), frame));
    postRx(r, 2, 1524);
    inject(r, frame);
    const [got] = takeFrames(r.q[0], 10);
    assert.deepEqual(got.frame, frame);
  });
});

describe("NetDevice: packed virtqueues", () => {
  it("sends, receives and merges buffers on packed rings, taking back a half-filled packet", () => {
    const mem = GuestMemory.create(16 << 20);
    const backend = new MemoryNetBackend();
    const net = new NetDevice({ backend, mac: new Uint8Array(MAC) });
    const transport = new MmioTransport(net, mem);
    const driver = new MmioDriver(transport, mem);
    // Without MTU: a 6000-byte frame is fine without segmentation.
    const [rx, tx] = driver.initPacked({ queueSize: 64, features: ALL & ~bit(VIRTIO_NET_F_MTU) });
    tx.addChain([{ readable: concatBytes(netHeader(), toMac(OTHER)) }]);
    driver.kick(1, true);
    assert.equal(backend.takeSent().length, 1);
    // A 6000-byte frame needs three 2 KiB buffers; two are there: both go back untouched.
    rx.addChain([{ writable: 2048 }]);
    rx.addChain([{ writable: 2048 }]);
    driver.kick(0, true);
    const big = ethFrame({ dst: MAC, payload: new Uint8Array(6000).map((_, i) => i * 7) });
    inject({ backend } as Rig, big);
    assert.equal(rx.pendingUsed(), 0);
    assert.equal(net.backlogFrames, 1);
    rx.addChain([{ writable: 2048 }]);
    rx.addChain([{ writable: 2048 }]);
    driver.kick(0, true);
    const [got] = takeFrames(rx);
    assert.equal(got.buffers, 3);
    assert.deepEqual(got.frame, big);
    inject({ backend } as Rig, toMac(MAC));
    assert.equal(takeFrames(rx).length, 1);
    assert.equal(net.stats.rxFrames, 2);
  });
});

describe("NetDevice: bounded work", () => {
  // Receive buffers that cannot take a packet (malformed chains, or too small for a header)
  // are returned and the next one taken. A driver that keeps the receive queue full of them
  // (refilling it as fast as the device takes them, from another CPU) must not hold the device
  // in that loop for one frame: one pass takes at most a budget's worth.
  it("takes at most a budget of unusable receive buffers for one frame", async () => {
    const r = rig();
    const rx = r.q[0];
    const bad = rx.size - 1;
    rx.writeDescriptor(bad, { addr: 0xffff_0000_0000n, len: 64, flags: 2, next: 0 });
    rx.publish(bad);
    r.driver.kick(0, true);
    const q = r.transport.core.queues[0];
    const pop = q.pop.bind(q);
    let pops = 0;
    let refill = true;
    q.pop = (m) => {
      pops++;
      if (refill && pops < 100_000) rx.publish(bad); // the driver refills at once
      return pop(m);
    };
    inject(r, ethFrame({ dst: new Uint8Array(MAC) }));
    await new Promise((res) => setTimeout(res, 0));
    const first = pops;
    assert.ok(first <= DEFAULT_SERVE_BUDGET.chains + 2, `${first} chains taken in one pass`);
    // The driver stops and gives a real buffer: the frame (or the next one) gets there.
    refill = false;
    rx.takeAllUsed();
    postRx(r, 4);
    inject(r, ethFrame({ dst: new Uint8Array(MAC) }));
    let frames = 0;
    for (let i = 0; i < 20 && frames === 0; i++) {
      await new Promise((res) => setTimeout(res, 0));
      frames += rx.takeAllUsed().filter((u) => u.len > 12).length;
    }
    assert.ok(frames > 0, "a frame arrived once the driver gave real buffers");
    r.net.remove();
  });
});
