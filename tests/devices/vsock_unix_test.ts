// The vsock device's hybrid Unix-socket host side with real sockets: guest connections to
// `<uds>_<port>` (stream through node:net, seqpacket through sys/), host connections through
// `CONNECT <port>\n` on the device's socket, half-close, hang-up, and a guest that never reads.

import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import { VsockDriver, type VsockRxPacket } from "../../testing/vsock_driver.ts";
import type { VirtioError } from "../../devices/device.ts";
import {
  parseConnectLine,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SEQ_EOM,
  VIRTIO_VSOCK_SHUTDOWN_BOTH,
  VIRTIO_VSOCK_SHUTDOWN_SEND,
  VIRTIO_VSOCK_TYPE_SEQPACKET,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_HEADER_SIZE,
  VsockDevice,
  vsockHeader,
  type VsockOptions,
} from "../../devices/vsock.ts";
import {
  accept,
  AF_UNIX,
  bind,
  close,
  listen,
  POLLIN,
  recvmsg,
  sendmsg,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  socket,
  waitReady,
} from "../../sys/mod.ts";

const CID = 3;
const dir = mkdtempSync(join(tmpdir(), "vt-vsock-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

interface Rig {
  dev: VsockDevice;
  guest: VsockDriver;
  uds: string;
  errors: VirtioError[];
  packets: VsockRxPacket[];
  /** Wait for a packet matching `pred`, taking every packet seen into `packets`. */
  expect(what: string, pred: (p: VsockRxPacket) => boolean): Promise<VsockRxPacket>;
}

function rig(options: Partial<VsockOptions> = {}): Rig {
  const uds = join(dir, `v${n++}.sock`);
  const errors: VirtioError[] = [];
  const dev = new VsockDevice({
    guestCid: CID,
    udsPath: uds,
    onError: (e) => errors.push(e),
    ...options,
  });
  const mem = GuestMemory.create(8 << 20);
  const driver = new MmioDriver(new MmioTransport(dev, mem), mem);
  const [rx, tx, event] = driver.init();
  const guest = new VsockDriver({
    rx,
    tx,
    event,
    kick: (i) => driver.kick(i, true),
    guestCid: CID,
  });
  guest.postRx(64);
  const packets: VsockRxPacket[] = [];
  return {
    dev,
    guest,
    uds,
    errors,
    packets,
    async expect(what, pred) {
      let found: VsockRxPacket | undefined;
      await until(what, () => {
        packets.push(...guest.receive());
        guest.topUpRx(64);
        const i = packets.findIndex(pred);
        if (i >= 0) found = packets.splice(i, 1)[0];
        return found !== undefined;
      });
      return found!;
    },
  };
}

function streamServer(path: string): Promise<{ server: net.Server; conns: net.Socket[] }> {
  const conns: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => conns.push(s));
  return new Promise((resolve) => server.listen(path, () => resolve({ server, conns })));
}

function collect(s: net.Socket): { bytes: () => Uint8Array; ended: () => boolean } {
  const parts: Uint8Array[] = [];
  let ended = false;
  s.on("data", (d: Uint8Array) => parts.push(new Uint8Array(d)));
  s.on("end", () => (ended = true));
  return {
    bytes: () => {
      const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) {
        out.set(p, o);
        o += p.length;
      }
      return out;
    },
    ended: () => ended,
  };
}

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

describe("CONNECT line", () => {
  it("parses the port, case-insensitively, and refuses anything else", () => {
    assert.equal(parseConnectLine("CONNECT 1234"), 1234);
    assert.equal(parseConnectLine("connect 0"), 0);
    assert.equal(parseConnectLine("Connect\t4294967295\r"), 4294967295);
    for (
      const bad of ["CONNECT", "CONNECT 4294967296", "CONNECT -1", "CONNECT 12a", "LISTEN 1", ""]
    ) {
      assert.equal(parseConnectLine(bad), undefined, bad);
    }
  });
});

describe("vsock Unix muxer: guest to host", () => {
  it("connects a guest to <uds>_<port>, both ways, with half-close from the host", async () => {
    const r = rig();
    const { server, conns } = await streamServer(`${r.uds}_5000`);
    try {
      const S = { srcPort: 777, dstPort: 5000, bufAlloc: 65536 };
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_REQUEST });
      await r.expect("RESPONSE", (p) => p.header.op === VIRTIO_VSOCK_OP_RESPONSE);
      await until("the accept", () => conns.length === 1);
      const host = conns[0];
      const got = collect(host);
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW }, text("ping"));
      await until("ping", () => str(got.bytes()) === "ping");
      host.write("pong");
      const pong = await r.expect("pong", (p) => p.header.op === VIRTIO_VSOCK_OP_RW);
      assert.equal(str(pong.payload), "pong");
      // The host shuts down its writing side only: the guest reads end of stream and may
      // still send.
      host.end();
      const sd = await r.expect("SHUTDOWN", (p) => p.header.op === VIRTIO_VSOCK_OP_SHUTDOWN);
      assert.equal(sd.header.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW }, text("!"));
      await until("!", () => str(got.bytes()) === "ping!");
      // The guest closes: SHUTDOWN(both), answered with an RST; the host reads end of stream.
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_SHUTDOWN, flags: VIRTIO_VSOCK_SHUTDOWN_BOTH });
      await r.expect("RST", (p) => p.header.op === VIRTIO_VSOCK_OP_RST);
      await until("end", () => got.ended());
      assert.equal(r.dev.connectionCount, 0);
      assert.deepEqual(r.errors, []);
    } finally {
      server.close();
      r.dev.remove();
    }
  });

  it("resets a guest request when nothing listens, or a listener of the other type", async () => {
    const r = rig();
    const { server } = await streamServer(`${r.uds}_5001`);
    try {
      r.guest.send({ srcPort: 1, dstPort: 4999, op: VIRTIO_VSOCK_OP_REQUEST });
      await r.expect("RST", (p) => p.header.op === VIRTIO_VSOCK_OP_RST);
      r.guest.send({
        srcPort: 2,
        dstPort: 5001,
        op: VIRTIO_VSOCK_OP_REQUEST,
        type: VIRTIO_VSOCK_TYPE_SEQPACKET,
      });
      await r.expect("RST", (p) => p.header.op === VIRTIO_VSOCK_OP_RST);
      assert.equal(r.dev.stats.resets.noListener, 2);
    } finally {
      server.close();
      r.dev.remove();
    }
  });

  it("a host that hangs up mid-stream: SHUTDOWN(both), then an RST when the guest is silent", async () => {
    const r = rig({ closeTimeoutMs: 50 });
    const { server, conns } = await streamServer(`${r.uds}_5002`);
    try {
      const S = { srcPort: 778, dstPort: 5002, bufAlloc: 65536 };
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_REQUEST });
      await r.expect("RESPONSE", (p) => p.header.op === VIRTIO_VSOCK_OP_RESPONSE);
      await until("the accept", () => conns.length === 1);
      conns[0].write("partial");
      conns[0].destroy();
      const data = await r.expect("data", (p) => p.header.op === VIRTIO_VSOCK_OP_RW);
      assert.equal(str(data.payload), "partial");
      const sd = await r.expect("SHUTDOWN", (p) => p.header.op === VIRTIO_VSOCK_OP_SHUTDOWN);
      assert.equal(sd.header.flags, VIRTIO_VSOCK_SHUTDOWN_BOTH);
      await r.expect("RST", (p) => p.header.op === VIRTIO_VSOCK_OP_RST);
      assert.equal(r.dev.stats.resets.closeTimeout, 1);
      assert.equal(r.dev.connectionCount, 0);
    } finally {
      server.close();
      r.dev.remove();
    }
  });

  it("holds guest data a slow host has no room for, and delivers all of it in order", async () => {
    const r = rig();
    const { server, conns } = await streamServer(`${r.uds}_5003`);
    try {
      const S = { srcPort: 779, dstPort: 5003, bufAlloc: 65536 };
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_REQUEST });
      await r.expect("RESPONSE", (p) => p.header.op === VIRTIO_VSOCK_OP_RESPONSE);
      await until("the accept", () => conns.length === 1);
      const host = conns[0];
      host.pause();
      // 256 KiB (our whole buf_alloc) in 64 KiB packets, more than the socket buffer holds.
      const data = new Uint8Array(256 << 10).map((_, i) => (i * 31) ^ (i >> 8));
      for (let off = 0; off < data.length; off += 65536) {
        r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW }, data.subarray(off, off + 65536));
      }
      const got = collect(host);
      host.resume();
      await until("all bytes", () => got.bytes().length === data.length);
      assert.deepEqual(got.bytes(), data);
      // The credit came back to the guest.
      const upd = await r.expect(
        "credit",
        (p) => p.header.op === VIRTIO_VSOCK_OP_CREDIT_UPDATE && p.header.fwdCnt === data.length,
      );
      assert.equal(upd.header.bufAlloc, 256 << 10);
      assert.equal(r.dev.stats.resets.creditViolation, 0);
    } finally {
      server.close();
      r.dev.remove();
    }
  });

  it("keeps seqpacket message boundaries both ways through a SOCK_SEQPACKET listener", async () => {
    const r = rig();
    const path = `${r.uds}_6000`;
    const lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK);
    bind(lfd, path);
    listen(lfd, 4);
    let fd = -1;
    try {
      const S = { srcPort: 780, dstPort: 6000, bufAlloc: 65536, type: VIRTIO_VSOCK_TYPE_SEQPACKET };
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_REQUEST });
      await r.expect("RESPONSE", (p) => p.header.op === VIRTIO_VSOCK_OP_RESPONSE);
      fd = accept(lfd, SOCK_CLOEXEC | SOCK_NONBLOCK);
      // One message in two packets, then one in one.
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW }, text("hel"));
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW, flags: VIRTIO_VSOCK_SEQ_EOM }, text("lo"));
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW, flags: VIRTIO_VSOCK_SEQ_EOM }, text("x"));
      const buf = new Uint8Array(100);
      await waitReady(fd, POLLIN);
      assert.equal(str(buf.subarray(0, recvmsg(fd, buf).bytes)), "hello");
      await waitReady(fd, POLLIN);
      assert.equal(str(buf.subarray(0, recvmsg(fd, buf).bytes)), "x");
      // From the host: a message longer than an rx buffer, then a short one.
      sendmsg(fd, new Uint8Array(6000).fill(1));
      sendmsg(fd, text("end"));
      const seen: [number, number][] = [];
      while (seen.length < 3) {
        const p = await r.expect("RW", (q) => q.header.op === VIRTIO_VSOCK_OP_RW);
        seen.push([p.payload.length, p.header.flags]);
      }
      assert.deepEqual(seen, [[4096, 0], [1904, VIRTIO_VSOCK_SEQ_EOM], [3, VIRTIO_VSOCK_SEQ_EOM]]);
    } finally {
      if (fd >= 0) close(fd);
      close(lfd);
      r.dev.remove();
    }
  });
});

describe("vsock Unix muxer: host to guest", () => {
  it("CONNECT <port> reaches the guest; OK <host-port> once it accepts; bytes both ways", async () => {
    const r = rig();
    const client = net.connect(r.uds);
    const got = collect(client);
    try {
      // Bytes written right after the line are the connection's first bytes.
      client.write("CONNECT 1234\nearly");
      const req = await r.expect("REQUEST", (p) => p.header.op === VIRTIO_VSOCK_OP_REQUEST);
      assert.equal(req.header.dstPort, 1234);
      const hostPort = req.header.srcPort;
      const S = { srcPort: 1234, dstPort: hostPort, bufAlloc: 65536 };
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RESPONSE });
      await until("OK", () => str(got.bytes()) === `OK ${hostPort}\n`);
      const early = await r.expect("early", (p) => p.header.op === VIRTIO_VSOCK_OP_RW);
      assert.equal(str(early.payload), "early");
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW }, text("hi host"));
      await until("data", () => str(got.bytes()) === `OK ${hostPort}\nhi host`);
      assert.equal(r.dev.stats.hostConnections, 1);
    } finally {
      client.destroy();
      r.dev.remove();
    }
  });

  it("closes the host socket when the guest refuses, or the line is malformed", async () => {
    const r = rig();
    try {
      const a = net.connect(r.uds);
      const closedA = new Promise((res) => a.on("close", res));
      a.on("error", () => {});
      a.write("CONNECT 99\n");
      const req = await r.expect("REQUEST", (p) => p.header.op === VIRTIO_VSOCK_OP_REQUEST);
      r.guest.send({ srcPort: 99, dstPort: req.header.srcPort, op: VIRTIO_VSOCK_OP_RST });
      await closedA;
      const b = net.connect(r.uds);
      const gotB = collect(b);
      const closedB = new Promise((res) => b.on("close", res));
      b.on("error", () => {});
      b.write("HELLO\n");
      await closedB;
      assert.equal(gotB.bytes().length, 0);
      assert.equal(r.dev.stats.hostConnectionsRefused, 1);
      assert.equal(r.dev.connectionCount, 0);
    } finally {
      r.dev.remove();
    }
  });

  it("a guest that never reads: the device takes only its credit from the host socket", async () => {
    const r = rig();
    const client = net.connect(r.uds);
    try {
      client.write("CONNECT 1234\n");
      const req = await r.expect("REQUEST", (p) => p.header.op === VIRTIO_VSOCK_OP_REQUEST);
      const S = { srcPort: 1234, dstPort: req.header.srcPort, bufAlloc: 32768 };
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_RESPONSE });
      // The host program writes 8 MiB as fast as it may.
      const chunk = new Uint8Array(1 << 20);
      for (let i = 0; i < 8; i++) client.write(chunk);
      await until("credit spent", () => r.dev.stats.bytesToGuest >= 32768);
      await sleep(200);
      r.guest.receive();
      assert.equal(r.dev.stats.bytesToGuest, 32768);
      // The rest waits on the host's side of the socket, not in the device.
      assert.ok(client.writableLength > 4 << 20, `host still holds ${client.writableLength}`);
      // Credit returns: the device reads on.
      r.guest.send({ ...S, op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, fwdCnt: 32768 });
      await until("more", () => r.dev.stats.bytesToGuest === 65536);
    } finally {
      client.destroy();
      r.dev.remove();
    }
  });
});

describe("vsock Unix muxer: packed rings", () => {
  // The device fills several receive buffers with one read of the host socket and gives back
  // those the read did not reach. A packed ring can undo only its last pop: giving them back
  // pop by pop lost the ones in the middle (never used, never returned), and the ring ran dry.
  it("gives back every receive buffer a batch did not fill", async () => {
    const uds = join(dir, `v${n++}.sock`);
    const errors: VirtioError[] = [];
    const dev = new VsockDevice({ guestCid: CID, udsPath: uds, onError: (e) => errors.push(e) });
    const mem = GuestMemory.create(8 << 20);
    const driver = new MmioDriver(new MmioTransport(dev, mem), mem);
    const [rx, tx] = driver.initPacked({ queueSize: 16 });
    const { server, conns } = await streamServer(`${uds}_5000`);
    const BUFFERS = 8;
    const post = () => {
      rx.addChain([{ writable: VSOCK_HEADER_SIZE + 4096 }]);
      driver.kick(0, true);
    };
    try {
      tx.addChain([{
        readable: vsockHeader({
          srcCid: CID,
          dstCid: 2,
          srcPort: 777,
          dstPort: 5000,
          type: VIRTIO_VSOCK_TYPE_STREAM,
          op: VIRTIO_VSOCK_OP_REQUEST,
          bufAlloc: 65536,
        }),
      }]);
      driver.kick(1, true);
      for (let i = 0; i < BUFFERS; i++) post();
      let response = 0;
      await until("RESPONSE", () => {
        for (const u of rx.takeAllUsed()) {
          if (u.len === VSOCK_HEADER_SIZE) response++;
          post();
        }
        return response === 1;
      });
      await until("the accept", () => conns.length === 1);
      // A few bytes: the device takes a batch of buffers for them and fills one.
      for (let round = 0; round < 3; round++) {
        conns[0].write(new Uint8Array(10).fill(round + 1));
        let got: { len: number; written: Uint8Array } | undefined;
        await until(`the bytes of round ${round}`, () => {
          got = rx.takeUsed() ?? undefined;
          return got !== undefined;
        }, 2000);
        assert.equal(got!.len, VSOCK_HEADER_SIZE + 10, `round ${round}`);
        assert.equal(got!.written[VSOCK_HEADER_SIZE], round + 1);
        post();
      }
      // Every buffer the driver made available is still the device's to fill: a burst of
      // BUFFERS buffers' worth arrives whole, with no buffer added.
      conns[0].write(new Uint8Array(4096 * BUFFERS).fill(0xab));
      let bytes = 0;
      let packets = 0;
      await until(`${4096 * BUFFERS} bytes in ${BUFFERS} buffers (got ${bytes})`, () => {
        for (const u of rx.takeAllUsed()) {
          bytes += u.len - VSOCK_HEADER_SIZE;
          packets++;
        }
        return bytes === 4096 * BUFFERS;
      }, 2000);
      assert.equal(packets, BUFFERS);
      assert.deepEqual(errors, []);
    } finally {
      server.close();
      dev.remove();
    }
  });
});
