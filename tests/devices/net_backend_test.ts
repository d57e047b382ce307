// The network backends: the Unix datagram socket (with and without the virtio_net_hdr), the
// loopback and the tap's arguments and offload flags; and two devices wired together through
// sockets, driven from the guest side.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  bind,
  close,
  connect,
  recvDatagram,
  sendmsg,
  setNonBlocking,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  socket,
} from "../../sys/mod.ts";
import {
  LoopbackNetBackend,
  type NetBackendEvents,
  NetDevice,
  SocketNetBackend,
  TapNetBackend,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_TSO_ECN,
  TUN_F_UFO,
  tunOffloadFlags,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
} from "../../devices/net.ts";
import { MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import {
  concatBytes,
  ethFrame,
  ipv4Frame,
  netHeader,
  takeFrames,
} from "../../testing/net_driver.ts";

let dir = "";
before(() => {
  dir = mkdtempSync(join(tmpdir(), "vt-net-backend-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const T = { timeout: 20000 };
const path = (name: string) => join(dir, name);

/** Events that resolve promises, for waiting on a backend's readiness. */
function events() {
  let readable = () => {};
  let writable = () => {};
  const ev: NetBackendEvents & {
    nextReadable(): Promise<void>;
    nextWritable(): Promise<void>;
  } = {
    readable: () => readable(),
    writable: () => writable(),
    nextReadable: () => new Promise<void>((r) => (readable = r)),
    nextWritable: () => new Promise<void>((r) => (writable = r)),
  };
  return ev;
}

const frame = (n = 100, v = 7) => ethFrame({ payload: new Uint8Array(n).fill(v) });

describe("SocketNetBackend", T, () => {
  it("carries header and frame in one datagram between two backends", async () => {
    const a = new SocketNetBackend({ bind: path("a1"), peer: path("b1") });
    const b = new SocketNetBackend({ bind: path("b1"), peer: path("a1") });
    try {
      const ev = events();
      b.start(ev);
      const got = ev.nextReadable();
      const hdr = netHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 16 });
      const f = frame();
      // a connected lazily: b was not there when a was made.
      assert.equal(a.send(0, [hdr, f.subarray(0, 10), f.subarray(10)]), "sent");
      await got;
      const buf = new Uint8Array(70000);
      const n = b.receive(0, buf);
      assert.deepEqual(buf.subarray(0, n), concatBytes(hdr, f));
      assert.equal(b.receive(0, buf), -1);
      assert.ok(a.offloads.tso4 && a.offloads.csum);
    } finally {
      a.close();
      b.close();
    }
  });

  it("without the header sends bare frames and reports no offloads", () => {
    const peer = socket(1, SOCK_DGRAM | SOCK_CLOEXEC);
    bind(peer, path("plain"));
    setNonBlocking(peer);
    const raw = new SocketNetBackend({ bind: path("raw"), peer: path("plain"), vnetHdr: false });
    try {
      assert.deepEqual(raw.offloads, {
        csum: false,
        tso4: false,
        tso6: false,
        ecn: false,
        ufo: false,
      });
      const f = frame(60, 3);
      assert.equal(raw.send(0, [netHeader(), f]), "sent");
      const wire = new Uint8Array(2000);
      assert.equal(recvDatagram(peer, wire), f.length);
      assert.deepEqual(wire.subarray(0, f.length), f);
      // A bare frame from the peer arrives with a zero header in front.
      connect(peer, path("raw"));
      sendmsg(peer, f);
      const buf = new Uint8Array(70000).fill(0xee);
      assert.equal(raw.receive(0, buf), 12 + f.length);
      assert.deepEqual(buf.subarray(0, 12 + f.length), concatBytes(new Uint8Array(12), f));
      // Once connected, the backend hears only its peer.
      const stranger = socket(1, SOCK_DGRAM | SOCK_CLOEXEC);
      try {
        assert.throws(() => connect(stranger, path("raw")), /EPERM/);
      } finally {
        close(stranger);
      }
    } finally {
      raw.close();
      close(peer);
    }
  });

  it("drops frames while no peer is there and connects once it is", () => {
    const a = new SocketNetBackend({ bind: path("a2"), peer: path("b2") });
    try {
      assert.equal(a.connected, false);
      assert.equal(a.send(0, [netHeader(), frame()]), "dropped");
      assert.equal(a.noPeer, 1);
      const b = new SocketNetBackend({ bind: path("b2"), peer: path("a2") });
      try {
        assert.equal(a.send(0, [netHeader(), frame()]), "sent");
        assert.ok(a.connected);
        const buf = new Uint8Array(70000);
        assert.ok(b.receive(0, buf) > 0);
      } finally {
        b.close();
      }
      // The peer went away: dropped again, and connected to the next one.
      assert.equal(a.send(0, [netHeader(), frame()]), "dropped");
      assert.equal(a.noPeer, 2);
      const b2 = new SocketNetBackend({ bind: path("b2"), peer: path("a2") });
      try {
        assert.equal(a.send(0, [netHeader(), frame()]), "sent");
      } finally {
        b2.close();
      }
    } finally {
      a.close();
    }
  });

  it("answers full when the peer does not read, then reports writable once it did", async () => {
    const a = new SocketNetBackend({ bind: path("a3"), peer: path("b3") });
    const b = new SocketNetBackend({ bind: path("b3"), peer: path("a3") });
    try {
      const ev = events();
      a.start(ev);
      const big = [netHeader(), new Uint8Array(60000)];
      let sent = 0;
      while (a.send(0, big) === "sent") if (++sent > 10000) break;
      assert.ok(sent > 0 && sent < 10000, `${sent} frames before full`);
      const writable = ev.nextWritable();
      const buf = new Uint8Array(70000);
      while (b.receive(0, buf) > 0) { /* drain */ }
      await writable;
      assert.equal(a.send(0, big), "sent");
    } finally {
      a.close();
      b.close();
    }
  });

  it("reports a datagram longer than the buffer with its real length", () => {
    const a = new SocketNetBackend({ bind: path("a4"), peer: path("b4") });
    const b = new SocketNetBackend({ bind: path("b4"), peer: path("a4") });
    try {
      a.send(0, [netHeader(), new Uint8Array(5000)]);
      assert.equal(b.receive(0, new Uint8Array(100)), 5012);
    } finally {
      a.close();
      b.close();
    }
  });

  it("replaces a stale socket file but refuses an address in use", () => {
    const a = new SocketNetBackend({ bind: path("a5"), peer: path("b5") });
    a.close();
    const again = new SocketNetBackend({ bind: path("a5"), peer: path("b5") });
    try {
      const holder = socket(1, SOCK_DGRAM | SOCK_CLOEXEC);
      try {
        bind(holder, "\0vt-net-test-held");
        assert.throws(() => new SocketNetBackend({ bind: "\0vt-net-test-held", peer: path("x") }));
      } finally {
        close(holder);
      }
    } finally {
      again.close();
    }
  });
});

describe("two devices wired through sockets", T, () => {
  it("a frame the first driver sends reaches the second driver, offload header and all", async () => {
    const mk = (me: string, peer: string) => {
      const backend = new SocketNetBackend({ bind: path(me), peer: path(peer) });
      const net = new NetDevice({
        backend,
        mac: me === "ga" ? "02:00:00:00:00:0a" : "02:00:00:00:00:0b",
      });
      const mem = GuestMemory.create(16 << 20);
      const driver = new MmioDriver(new MmioTransport(net, mem), mem);
      const q = driver.init({ queueSize: 64 });
      return { backend, net, driver, q };
    };
    const a = mk("ga", "gb");
    const b = mk("gb", "ga");
    try {
      for (let i = 0; i < 40; i++) b.q[0].addChain([{ writable: 4096 }]);
      b.driver.kick(0);
      const { frame: f, csumStart, csumOffset } = ipv4Frame({
        dst: [2, 0, 0, 0, 0, 0x0b],
        data: new Uint8Array(20000).map((_, i) => i),
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
      a.q[1].addChain([{ readable: concatBytes(netHeader(h), f) }]);
      a.driver.kick(1);
      assert.equal(a.net.stats.txFrames, 1);
      const end = Date.now() + 5000;
      while (b.net.stats.rxFrames === 0 && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 5));
      }
      const [got] = takeFrames(b.q[0]);
      assert.deepEqual(got.frame, f);
      assert.equal(got.header.gsoType, VIRTIO_NET_HDR_GSO_TCPV4);
      assert.equal(got.header.gsoSize, 1448);
    } finally {
      a.net.remove();
      b.net.remove();
    }
  });
});

describe("LoopbackNetBackend", () => {
  it("sends every frame back on its queue, and is full at capacity", async () => {
    const lo = new LoopbackNetBackend({ capacity: 2, queuePairs: 2 });
    const ev = events();
    lo.start(ev);
    const readable = ev.nextReadable();
    assert.equal(lo.send(1, [netHeader(), frame(10, 1)]), "sent");
    assert.equal(lo.send(1, [netHeader(), frame(20, 2)]), "sent");
    assert.equal(lo.send(1, [netHeader(), frame(30, 3)]), "full");
    await readable;
    const buf = new Uint8Array(70000);
    assert.equal(lo.receive(0, buf), -1);
    const writable = ev.nextWritable();
    assert.equal(lo.receive(1, buf), 12 + 14 + 10);
    await writable;
    assert.equal(lo.receive(1, buf), 12 + 14 + 20);
    assert.equal(buf[12 + 14], 2);
    assert.equal(lo.receive(1, buf), -1);
    lo.close();
  });

  it("wires a device to itself: what the driver sends, it receives", async () => {
    const net = new NetDevice({ backend: new LoopbackNetBackend(), mac: "02:00:00:00:00:01" });
    const mem = GuestMemory.create(16 << 20);
    const driver = new MmioDriver(new MmioTransport(net, mem), mem);
    const q = driver.init({ queueSize: 64 });
    for (let i = 0; i < 8; i++) q[0].addChain([{ writable: 2048 }]);
    driver.kick(0);
    const f = frame(500, 9);
    q[1].addChain([{ readable: concatBytes(netHeader(), f) }]);
    driver.kick(1);
    await new Promise((r) => setTimeout(r, 0));
    const [got] = takeFrames(q[0]);
    assert.deepEqual(got.frame, f);
    net.remove();
  });
});

describe("TapNetBackend", () => {
  it("refuses bad names and queue counts before touching the system", () => {
    for (const name of ["", "x".repeat(16), "a/b", "a b", "a:b"]) {
      assert.throws(() => new TapNetBackend({ name }), RangeError, name);
    }
    assert.throws(() => new TapNetBackend({ name: "vt0", queues: 0 }), RangeError);
    assert.throws(() => new TapNetBackend({ name: "vt0", queues: 257 }), RangeError);
  });

  it("says when there is no clone device", () => {
    assert.throws(
      () => new TapNetBackend({ name: "vt-none0", tunPath: join(dir, "no-tun") }),
      /no .*no-tun \(is the tun module loaded\?\)/,
    );
  });

  it("maps the driver's offloads to TUNSETOFFLOAD flags, segmentation only with checksums", () => {
    const all = { csum: true, tso4: true, tso6: true, ecn: true, ufo: true };
    assert.equal(
      tunOffloadFlags(all),
      TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO,
    );
    assert.equal(tunOffloadFlags({ ...all, csum: false }), 0);
    assert.equal(tunOffloadFlags({ ...all, tso4: false, tso6: false }), TUN_F_CSUM | TUN_F_UFO);
  });
});
