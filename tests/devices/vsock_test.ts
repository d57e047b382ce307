// The vsock device through the MMIO transport and the driver harness: every op, every
// refusal, credit both ways, the TypeScript API and transport resets.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import { VsockDriver, type VsockRxPacket } from "../../testing/vsock_driver.ts";
import { DEFAULT_SERVE_BUDGET, featureBit, TYPE_VSOCK, VirtioError } from "../../devices/device.ts";
import {
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_F_SEQPACKET,
  VIRTIO_VSOCK_F_STREAM,
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SEQ_EOM,
  VIRTIO_VSOCK_SHUTDOWN_BOTH,
  VIRTIO_VSOCK_SHUTDOWN_RCV,
  VIRTIO_VSOCK_SHUTDOWN_SEND,
  VIRTIO_VSOCK_TYPE_SEQPACKET,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_REPLY_QUEUE,
  type VsockConnection,
  VsockConnectionError,
  VsockDevice,
  type VsockHeader,
  vsockHeader,
  type VsockOptions,
} from "../../devices/vsock.ts";

const CID = 3;
const tick = () => new Promise((r) => setTimeout(r, 0));
const ALL = ~0n & 0xffff_ffff_ffff_ffffn;

interface Rig {
  dev: VsockDevice;
  guest: VsockDriver;
  driver: MmioDriver;
  transport: MmioTransport;
  errors: VirtioError[];
}

function rig(options: Partial<VsockOptions> = {}, features = ALL): Rig {
  const errors: VirtioError[] = [];
  const dev = new VsockDevice({ guestCid: CID, onError: (e) => errors.push(e), ...options });
  const mem = GuestMemory.create(8 << 20);
  const transport = new MmioTransport(dev, mem);
  const driver = new MmioDriver(transport, mem);
  const [rx, tx, event] = driver.init({ features });
  const guest = new VsockDriver({
    rx,
    tx,
    event,
    kick: (i) => driver.kick(i, true),
    guestCid: CID,
  });
  return { dev, guest, driver, transport, errors };
}

/** The guest's side of one connection, for tests that play the guest by hand. */
const REQ = { srcPort: 5000, dstPort: 1234, bufAlloc: 65536 };

function only(packets: VsockRxPacket[]): VsockRxPacket {
  assert.equal(packets.length, 1, `one packet, got ${packets.map((p) => p.header.op)}`);
  return packets[0];
}

function rw(packets: VsockRxPacket[]): VsockRxPacket[] {
  return packets.filter((p) => p.header.op === VIRTIO_VSOCK_OP_RW);
}

function ops(packets: VsockRxPacket[]): number[] {
  return packets.map((p) => p.header.op);
}

/** Open a guest connection to a TS listener; returns the host side. */
async function open(
  r: Rig,
  fields: Partial<VsockHeader> = {},
  type = VIRTIO_VSOCK_TYPE_STREAM,
): Promise<VsockConnection> {
  let got: VsockConnection | undefined;
  const port = fields.dstPort ?? REQ.dstPort;
  const l = r.dev.listen(port, (c) => (got = c), {
    type: type === VIRTIO_VSOCK_TYPE_SEQPACKET ? "seqpacket" : "stream",
  });
  r.guest.send({ ...REQ, ...fields, type, op: VIRTIO_VSOCK_OP_REQUEST });
  const resp = only(r.guest.receive());
  assert.equal(resp.header.op, VIRTIO_VSOCK_OP_RESPONSE);
  await tick();
  l.close();
  assert.ok(got !== undefined, "the listener got the connection");
  return got;
}

async function readAll(c: VsockConnection): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of c.readable) parts.push(chunk);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

describe("VsockDevice: configuration and features", () => {
  it("exposes guest_cid as le64 and refuses writes", () => {
    const dev = new VsockDevice({ guestCid: 0x12345678 });
    assert.equal(dev.deviceType(), TYPE_VSOCK);
    const b = new Uint8Array(8);
    dev.readConfig(0, b);
    assert.deepEqual([...b], [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
    assert.throws(() => dev.writeConfig(0, new Uint8Array(8)), VirtioError);
    assert.throws(() => dev.readConfig(4, new Uint8Array(8)), VirtioError);
  });

  it("refuses the reserved CIDs", () => {
    for (const cid of [0, 1, 2, 0xffffffff, 2 ** 32, -1, 3.5]) {
      assert.throws(() => new VsockDevice({ guestCid: cid }), RangeError, String(cid));
    }
  });

  it("offers STREAM and SEQPACKET (SEQPACKET can be left out) and 3 queues", () => {
    const on = new VsockDevice({ guestCid: 3 });
    assert.equal(on.getAvailFeatures(0) & 3, 3);
    assert.equal(on.queueMaxSizes().length, 3);
    const off = new VsockDevice({ guestCid: 3, seqpacket: false });
    assert.equal(off.getAvailFeatures(0) & 3, 1);
  });

  it("activates with rx and tx only (QEMU keeps the event queue)", () => {
    const dev = new VsockDevice({ guestCid: 3 });
    const mem = GuestMemory.create(4 << 20);
    const driver = new MmioDriver(new MmioTransport(dev, mem), mem);
    driver.init({ queues: 2 });
    assert.equal(dev.isActive, true);
  });
});

describe("VsockDevice: connections from the guest", () => {
  it("answers a REQUEST to a TypeScript listener with a RESPONSE carrying our credit", async () => {
    const r = rig({ bufferSize: 100_000 });
    r.guest.postRx(4);
    let got: VsockConnection | undefined;
    r.dev.listen(1234, (c) => (got = c));
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_REQUEST });
    const p = only(r.guest.receive());
    assert.deepEqual(p.header, {
      srcCid: 2,
      srcCidHigh: 0,
      dstCid: CID,
      dstCidHigh: 0,
      srcPort: 1234,
      dstPort: 5000,
      len: 0,
      type: VIRTIO_VSOCK_TYPE_STREAM,
      op: VIRTIO_VSOCK_OP_RESPONSE,
      flags: 0,
      bufAlloc: 100_000,
      fwdCnt: 0,
    });
    assert.equal(p.usedLen, 44);
    await tick();
    assert.equal(got?.guestPort, 5000);
    assert.equal(got?.hostPort, 1234);
    assert.equal(got?.guestCid, CID);
    assert.equal(r.dev.stats.guestConnections, 1);
    assert.equal(r.dev.connectionCount, 1);
  });

  it("refuses a REQUEST nobody listens for, and one of the other socket type", () => {
    const r = rig();
    r.guest.postRx(4);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_REQUEST });
    const p = only(r.guest.receive());
    assert.equal(p.header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(p.header.srcPort, 1234);
    assert.equal(p.header.dstPort, 5000);
    r.dev.listen(1234, () => {});
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_REQUEST, type: VIRTIO_VSOCK_TYPE_SEQPACKET });
    const q = only(r.guest.receive());
    assert.equal(q.header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(q.header.type, VIRTIO_VSOCK_TYPE_SEQPACKET);
    assert.equal(r.dev.stats.resets.noListener, 2);
    assert.equal(r.dev.connectionCount, 0);
  });

  it("delivers guest data to the reader and returns credit as it is read", async () => {
    const r = rig({ bufferSize: 8192 });
    r.guest.postRx(8);
    const c = await open(r);
    const reader = c.readable.getReader();
    const data = new Uint8Array(4096).map((_, i) => i * 7);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, data);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, data.subarray(0, 100));
    // Nothing read yet: the bytes are held, none is counted as forwarded.
    assert.deepEqual(r.guest.receive(), []);
    const a = await reader.read();
    assert.deepEqual(a.value, data);
    // 4096 bytes read = half the buffer: the device tells the guest.
    await tick();
    const upd = only(r.guest.receive());
    assert.equal(upd.header.op, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
    assert.equal(upd.header.fwdCnt, 4096);
    assert.equal(upd.header.bufAlloc, 8192);
    const b = await reader.read();
    assert.equal(b.value?.length, 100);
    assert.equal(r.dev.stats.bytesFromGuest, 4196);
  });

  it("answers CREDIT_REQUEST with CREDIT_UPDATE", async () => {
    const r = rig();
    r.guest.postRx(4);
    await open(r);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(10));
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_CREDIT_REQUEST });
    const p = only(r.guest.receive());
    assert.equal(p.header.op, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
    assert.equal(p.header.fwdCnt, 0); // the 10 bytes are not read yet
  });

  it("resets a guest that sends beyond the credit it was given", async () => {
    const r = rig({ bufferSize: 1000 });
    r.guest.postRx(4);
    const c = await open(r);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(600));
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(401));
    const p = only(r.guest.receive());
    assert.equal(p.header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.resets.creditViolation, 1);
    await assert.rejects(c.readable.getReader().read(), VsockConnectionError);
    assert.equal(r.dev.connectionCount, 0);
  });

  it("guest SHUTDOWN(SEND) ends the reader's stream after the data", async () => {
    const r = rig();
    r.guest.postRx(4);
    const c = await open(r);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new TextEncoder().encode("hello"));
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_SHUTDOWN, flags: VIRTIO_VSOCK_SHUTDOWN_SEND });
    assert.equal(new TextDecoder().decode(await readAll(c)), "hello");
    // The host may still write (half-close).
    const w = c.writable.getWriter();
    await w.write(new TextEncoder().encode("back"));
    const p = only(r.guest.receive());
    assert.equal(p.header.op, VIRTIO_VSOCK_OP_RW);
    assert.equal(new TextDecoder().decode(p.payload), "back");
    // The host closes its side: with the guest done sending too, that is the close: SHUTDOWN
    // both ways, and the guest's RST ends it.
    await w.close();
    await tick();
    const sd = only(r.guest.receive());
    assert.equal(sd.header.op, VIRTIO_VSOCK_OP_SHUTDOWN);
    assert.equal(sd.header.flags, VIRTIO_VSOCK_SHUTDOWN_BOTH);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RST });
    await c.closed;
    assert.equal(r.dev.connectionCount, 0);
    assert.equal(r.dev.stats.connectionsClosed, 1);
  });

  it("guest SHUTDOWN(both) is answered with an RST, held data still reaches the reader", async () => {
    const r = rig();
    r.guest.postRx(4);
    const c = await open(r);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new TextEncoder().encode("last words"));
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_SHUTDOWN, flags: VIRTIO_VSOCK_SHUTDOWN_BOTH });
    const p = only(r.guest.receive());
    assert.equal(p.header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.connectionCount, 0);
    assert.equal(new TextDecoder().decode(await readAll(c)), "last words");
  });

  it("guest SHUTDOWN(RCV) makes host writes fail", async () => {
    const r = rig();
    r.guest.postRx(4);
    const c = await open(r);
    const w = c.writable.getWriter();
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_SHUTDOWN, flags: VIRTIO_VSOCK_SHUTDOWN_RCV });
    await assert.rejects(w.write(new Uint8Array(1)));
  });

  it("guest RST aborts: the reader sees ECONNRESET", async () => {
    const r = rig();
    r.guest.postRx(4);
    const c = await open(r);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RST });
    assert.deepEqual(r.guest.receive(), []); // an RST is never answered
    await assert.rejects(
      c.readable.getReader().read(),
      (e: unknown) => e instanceof VsockConnectionError && e.code === "ECONNRESET",
    );
    assert.equal(r.dev.connectionCount, 0);
    assert.equal(r.dev.stats.connectionsClosed, 1);
  });

  it("ignores SHUTDOWN flag bits past RCV and SEND", async () => {
    const r = rig();
    r.guest.postRx(4);
    const c = await open(r);
    r.guest.send({
      ...REQ,
      op: VIRTIO_VSOCK_OP_SHUTDOWN,
      flags: 0xfffffff0 | VIRTIO_VSOCK_SHUTDOWN_SEND,
    });
    assert.equal((await readAll(c)).length, 0);
    assert.deepEqual(r.guest.receive(), []); // SEND only: not a close
    assert.equal(r.dev.connectionCount, 1);
  });

  it("the host's reset() sends an RST", async () => {
    const r = rig();
    r.guest.postRx(4);
    const c = await open(r);
    c.reset();
    await tick();
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.resets.hostReset, 1);
    await c.closed;
  });
});

describe("VsockDevice: data to the guest and the guest's credit", () => {
  it("splits host writes over rx buffers and never past the guest's buf_alloc", async () => {
    const r = rig();
    r.guest.postRx(16, 1000);
    const c = await open(r, { bufAlloc: 2500 });
    const w = c.writable.getWriter();
    const data = new Uint8Array(6000).map((_, i) => i % 251);
    const done = w.write(data);
    let settled = false;
    done.then(() => (settled = true));
    await tick();
    const all = r.guest.receive();
    // Out of credit: one CREDIT_REQUEST, and the host's write stays pending (nothing buffered).
    assert.deepEqual(ops(all), [5, 5, 5, VIRTIO_VSOCK_OP_CREDIT_REQUEST]);
    const first = rw(all);
    assert.deepEqual(first.map((p) => p.payload.length), [1000, 1000, 500]);
    assert.equal(r.dev.stats.bytesToGuest, 2500);
    await tick();
    assert.deepEqual(ops(r.guest.receive()), []);
    assert.equal(settled, false);
    // The guest consumed 2500 bytes.
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, bufAlloc: 2500, fwdCnt: 2500 });
    await tick();
    const second = rw(r.guest.receive());
    assert.deepEqual(second.map((p) => p.payload.length), [1000, 1000, 500]);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, bufAlloc: 2500, fwdCnt: 5000 });
    await tick();
    const third = rw(r.guest.receive());
    assert.deepEqual(third.map((p) => p.payload.length), [1000]);
    await done;
    const got = new Uint8Array(6000);
    let off = 0;
    for (const p of [...first, ...second, ...third]) {
      got.set(p.payload, off);
      off += p.payload.length;
    }
    assert.deepEqual(got, data);
  });

  it("sends one CREDIT_REQUEST when data waits for credit", async () => {
    const r = rig();
    r.guest.postRx(8, 1000);
    const c = await open(r, { bufAlloc: 100 });
    void c.writable.getWriter().write(new Uint8Array(500));
    await tick();
    assert.deepEqual(ops(r.guest.receive()), [VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_CREDIT_REQUEST]);
    await tick();
    assert.deepEqual(r.guest.receive(), []);
  });

  it("a guest that never reads gets buf_alloc bytes and no more; the host writer waits", async () => {
    const r = rig();
    r.guest.postRx(64, 4096);
    const c = await open(r, { bufAlloc: 65536 });
    const w = c.writable.getWriter();
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 10; i++) writes.push(w.write(new Uint8Array(65536)));
    for (let i = 0; i < 5; i++) await tick();
    assert.equal(r.dev.stats.bytesToGuest, 65536);
    let resolved = 0;
    for (const p of writes) p.then(() => resolved++, () => {});
    await tick();
    assert.equal(resolved, 1);
    c.reset();
  });

  it("resets a guest whose fwd_cnt goes backwards or past what was sent", async () => {
    for (const fwdCnt of [5000, 0xffffffff]) {
      const r = rig();
      r.guest.postRx(8, 1000);
      const c = await open(r);
      await c.writable.getWriter().write(new Uint8Array(1000));
      r.guest.receive();
      r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, bufAlloc: 65536, fwdCnt: 1000 });
      r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, bufAlloc: 65536, fwdCnt });
      const p = only(r.guest.receive());
      assert.equal(p.header.op, VIRTIO_VSOCK_OP_RST, `fwd_cnt ${fwdCnt}`);
      assert.equal(r.dev.stats.resets.badCredit, 1);
    }
  });

  it("accepts a guest whose counters start anywhere (free-running)", async () => {
    const r = rig();
    r.guest.postRx(8, 1000);
    const c = await open(r, { bufAlloc: 1500, fwdCnt: 0xfffffe00 });
    void c.writable.getWriter().write(new Uint8Array(2000));
    await tick();
    assert.deepEqual(rw(r.guest.receive()).map((p) => p.payload.length), [1000, 500]);
    // 1500 bytes consumed: the counter wraps.
    r.guest.send({
      ...REQ,
      op: VIRTIO_VSOCK_OP_CREDIT_UPDATE,
      bufAlloc: 1500,
      fwdCnt: (0xfffffe00 + 1500) >>> 0,
    });
    await tick();
    assert.deepEqual(rw(r.guest.receive()).map((p) => p.payload.length), [500]);
  });

  it("puts the header and the payload in one descriptor too", async () => {
    const r = rig();
    r.guest.postRx(2, 100, "single");
    const c = await open(r);
    await c.writable.getWriter().write(new TextEncoder().encode("one buffer"));
    const p = only(r.guest.receive());
    assert.equal(new TextDecoder().decode(p.payload), "one buffer");
    assert.equal(p.usedLen, 44 + 10);
  });

  it("the host closing its writer sends SHUTDOWN(SEND) after the data", async () => {
    const r = rig();
    r.guest.postRx(8);
    const c = await open(r);
    const w = c.writable.getWriter();
    await w.write(new Uint8Array(10));
    await w.close();
    await tick();
    const ps = r.guest.receive();
    assert.deepEqual(ops(ps), [VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_SHUTDOWN]);
    assert.equal(ps[1].header.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
    // The guest still sends; then it closes and the device answers its SHUTDOWN with an RST.
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(3));
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_SHUTDOWN, flags: VIRTIO_VSOCK_SHUTDOWN_BOTH });
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal((await readAll(c)).length, 3);
  });
});

describe("VsockDevice: connections from the host", () => {
  it("connect() sends a REQUEST from an allocated port and resolves on RESPONSE", async () => {
    const r = rig();
    r.guest.postRx(4);
    const pending = r.dev.connect(7000);
    await tick();
    const req = only(r.guest.receive());
    assert.equal(req.header.op, VIRTIO_VSOCK_OP_REQUEST);
    assert.equal(req.header.dstPort, 7000);
    assert.ok(req.header.srcPort >= 2 ** 30 && req.header.srcPort < 2 ** 31);
    assert.equal(req.header.bufAlloc, 256 << 10);
    r.guest.send({
      srcPort: 7000,
      dstPort: req.header.srcPort,
      op: VIRTIO_VSOCK_OP_RESPONSE,
      bufAlloc: 4096,
    });
    const c = await pending;
    assert.equal(c.hostPort, req.header.srcPort);
    assert.equal(c.guestPort, 7000);
    await c.writable.getWriter().write(new TextEncoder().encode("hi"));
    assert.equal(new TextDecoder().decode(only(r.guest.receive()).payload), "hi");
    assert.equal(r.dev.stats.hostConnections, 1);
  });

  it("connect() rejects with ECONNREFUSED on the guest's RST", async () => {
    const r = rig();
    r.guest.postRx(4);
    const pending = r.dev.connect(7000);
    await tick();
    const req = only(r.guest.receive());
    r.guest.send({ srcPort: 7000, dstPort: req.header.srcPort, op: VIRTIO_VSOCK_OP_RST });
    await assert.rejects(
      pending,
      (e: unknown) => e instanceof VsockConnectionError && e.code === "ECONNREFUSED",
    );
    assert.equal(r.dev.stats.hostConnectionsRefused, 1);
    assert.equal(r.dev.connectionCount, 0);
  });

  it("connect() gives up after connectTimeoutMs, with an RST to the guest", async () => {
    const r = rig({ connectTimeoutMs: 20 });
    r.guest.postRx(4);
    const pending = r.dev.connect(7000);
    await assert.rejects(pending, VsockConnectionError);
    await tick();
    assert.deepEqual(ops(r.guest.receive()), [VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RST]);
    assert.equal(r.dev.stats.resets.connectTimeout, 1);
  });

  it("a SHUTDOWN before the guest's RESPONSE is a protocol error: RST, refused", async () => {
    const r = rig();
    r.guest.postRx(4);
    const pending = r.dev.connect(7000);
    await tick();
    const req = only(r.guest.receive());
    r.guest.send({
      srcPort: 7000,
      dstPort: req.header.srcPort,
      op: VIRTIO_VSOCK_OP_SHUTDOWN,
      flags: VIRTIO_VSOCK_SHUTDOWN_BOTH,
    });
    await assert.rejects(pending, VsockConnectionError);
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.resets.protocol, 1);
    assert.equal(r.dev.stats.hostConnectionsRefused, 1);
  });

  it("connect() refuses at once when the device is not active", async () => {
    const dev = new VsockDevice({ guestCid: 3 });
    await assert.rejects(
      dev.connect(1),
      (e: unknown) => e instanceof VsockConnectionError && e.code === "ECONNREFUSED",
    );
  });

  it("a RESPONSE for a connection that is already established is a protocol error", async () => {
    const r = rig();
    r.guest.postRx(4);
    await open(r);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RESPONSE });
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.resets.protocol, 1);
  });
});

describe("VsockDevice: hostile packets", () => {
  const cases: [string, Partial<VsockHeader>, number, string, "rst" | "drop"][] = [
    ["a spoofed source CID", { srcCid: 9 }, 0, "badSourceCid", "drop"],
    ["reserved CID bits", { dstCidHigh: 1 }, 0, "reservedCidBits", "drop"],
    ["data for another CID", { dstCid: 7, op: VIRTIO_VSOCK_OP_RW }, 0, "badDestination", "drop"],
    ["a request for another CID", { dstCid: 7 }, 0, "badDestination", "rst"],
    ["an unknown type", { type: 5 }, 0, "unknownType", "rst"],
    ["an unknown op", { op: 99 }, 0, "unknownOp", "rst"],
    ["op 0", { op: 0 }, 0, "unknownOp", "rst"],
    ["a length past the buffer", { len: 20 }, 10, "lengthExceedsBuffer", "rst"],
    ["data for no connection", { op: VIRTIO_VSOCK_OP_RW }, 10, "noConnection", "rst"],
    ["a shutdown for no connection", { op: VIRTIO_VSOCK_OP_SHUTDOWN }, 0, "noConnection", "rst"],
    [
      "a credit update for no connection",
      { op: VIRTIO_VSOCK_OP_CREDIT_UPDATE },
      0,
      "noConnection",
      "rst",
    ],
    ["a response for no connection", { op: VIRTIO_VSOCK_OP_RESPONSE }, 0, "noConnection", "rst"],
    ["an RST for no connection", { op: VIRTIO_VSOCK_OP_RST }, 0, "strayRst", "drop"],
  ];
  for (const [name, fields, payload, reason, action] of cases) {
    it(`${action === "rst" ? "answers" : "drops"} ${name}`, () => {
      const r = rig();
      r.guest.postRx(4);
      r.guest.send(
        { ...REQ, op: VIRTIO_VSOCK_OP_REQUEST, len: payload, ...fields },
        new Uint8Array(payload),
      );
      const got = r.guest.receive();
      const stats = r.dev.stats as unknown as Record<string, Record<string, number>>;
      if (action === "drop") {
        assert.deepEqual(got, []);
        assert.equal(stats.dropped[reason], 1);
      } else {
        const p = only(got);
        assert.equal(p.header.op, VIRTIO_VSOCK_OP_RST);
        // The RST goes back where the packet came from.
        assert.equal(p.header.srcCid, fields.dstCid ?? 2);
        assert.equal(p.header.dstCid, CID);
        assert.equal(p.header.srcPort, REQ.dstPort);
        assert.equal(p.header.dstPort, REQ.srcPort);
        assert.equal(p.header.type, fields.type ?? VIRTIO_VSOCK_TYPE_STREAM);
        assert.equal(stats.resets[reason], 1);
      }
      assert.equal(r.dev.connectionCount, 0);
      assert.deepEqual(r.guest.reclaimTx(), [0]);
      assert.deepEqual(r.errors, []);
    });
  }

  it("drops a chain shorter than a header, and ignores writable parts of tx chains", () => {
    const r = rig();
    r.guest.postRx(4);
    r.guest.sendRaw([{ readable: new Uint8Array(43) }]);
    r.guest.sendRaw([{ readable: new Uint8Array(20) }, { writable: 100 }]);
    assert.deepEqual(r.guest.receive(), []);
    assert.equal(r.dev.stats.dropped.shortHeader, 2);
    // A header split over descriptors is read across them.
    const h = vsockHeader({ ...REQ, srcCid: CID, dstCid: 2, type: 1, op: VIRTIO_VSOCK_OP_RW });
    r.guest.sendRaw([{ readable: h.subarray(0, 7) }, { readable: h.subarray(7) }]);
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
  });

  it("refuses seqpacket when the driver did not negotiate it", () => {
    const r = rig({}, ALL & ~featureBit(VIRTIO_VSOCK_F_SEQPACKET));
    r.guest.postRx(4);
    r.dev.listen(1234, () => {}, { type: "seqpacket" });
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_REQUEST, type: VIRTIO_VSOCK_TYPE_SEQPACKET });
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.resets.unknownType, 1);
    // Stream still works without VIRTIO_VSOCK_F_STREAM (implied).
    const s = rig({}, ALL & ~featureBit(VIRTIO_VSOCK_F_STREAM));
    s.guest.postRx(4);
    s.dev.listen(1234, () => {});
    s.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_REQUEST });
    assert.equal(only(s.guest.receive()).header.op, VIRTIO_VSOCK_OP_RESPONSE);
  });

  it("resets on a second REQUEST for a live tuple, a type mismatch, data after SHUTDOWN", async () => {
    const steps: [Partial<VsockHeader>, string][] = [
      [{ op: VIRTIO_VSOCK_OP_REQUEST }, "protocol"],
      [{ op: VIRTIO_VSOCK_OP_RW, type: VIRTIO_VSOCK_TYPE_SEQPACKET }, "typeMismatch"],
    ];
    for (const [fields, reason] of steps) {
      const r = rig();
      r.guest.postRx(4);
      await open(r);
      r.guest.send({ ...REQ, ...fields });
      assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST, reason);
      const stats = r.dev.stats.resets as Record<string, number>;
      assert.equal(stats[reason], 1);
    }
    const r = rig();
    r.guest.postRx(4);
    await open(r);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_SHUTDOWN, flags: VIRTIO_VSOCK_SHUTDOWN_SEND });
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(1));
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.resets.protocol, 1);
  });

  it("caps connections: the one past maxConnections is refused", () => {
    const r = rig({ maxConnections: 3 });
    r.guest.postRx(8);
    r.dev.listen(1234, () => {});
    for (let port = 1; port <= 4; port++) {
      r.guest.send({ ...REQ, srcPort: port, op: VIRTIO_VSOCK_OP_REQUEST });
    }
    assert.deepEqual(ops(r.guest.receive()), [2, 2, 2, 3]);
    assert.equal(r.dev.stats.resets.tooManyConnections, 1);
    assert.equal(r.dev.connectionCount, 3);
  });

  it("returns rx chains too short for a header empty, and uses the next one", () => {
    const r = rig();
    r.guest.postRxRaw([{ writable: 43 }]);
    r.guest.postRxRaw([{ readable: new Uint8Array(100) }]);
    r.guest.postRx(1);
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_REQUEST });
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.dropped.badRxBuffer, 2);
  });

  it("without rx buffers, stops taking tx packets once its reply queue is full", async () => {
    const r = rig();
    const total = VSOCK_REPLY_QUEUE + 40;
    let sent = 0;
    // Flood with packets that each owe an RST, and post no rx buffer.
    for (let i = 0; i < total; i++) {
      r.guest.send({ ...REQ, srcPort: i, op: VIRTIO_VSOCK_OP_RW, len: 0 });
      sent++;
      if (i % 100 === 99) r.guest.reclaimTx();
    }
    r.guest.reclaimTx();
    assert.equal(r.dev.stats.packetsFromGuest, VSOCK_REPLY_QUEUE);
    // rx buffers arrive: the replies drain and the waiting packets are served.
    let answered = 0;
    for (let round = 0; round < 10 && answered < sent; round++) {
      r.guest.topUpRx(128, 64);
      await tick();
      answered += r.guest.receive().length;
      r.guest.reclaimTx();
    }
    assert.equal(answered, sent);
    assert.equal(r.dev.stats.resets.noConnection, sent);
  });

  it("never throws, whatever the tx chain holds", () => {
    const r = rig();
    r.guest.postRx(64);
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0);
    for (let i = 0; i < 500; i++) {
      const h = vsockHeader({
        srcCid: rand() % 4 === 0 ? rand() : CID,
        dstCid: rand() % 4 === 0 ? rand() : 2,
        srcPort: rand() % 4,
        dstPort: rand() % 4,
        len: rand() % 3 === 0 ? rand() : rand() % 64,
        type: rand() % 4,
        op: rand() % 10,
        flags: rand(),
        bufAlloc: rand(),
        fwdCnt: rand() % 2 === 0 ? 0 : rand(),
      });
      r.guest.sendRaw([{ readable: h.subarray(0, 40 + (rand() % 5)) }, {
        readable: new Uint8Array(rand() % 80),
      }]);
      if (i % 32 === 0) {
        r.guest.receive();
        r.guest.topUpRx(64);
      }
    }
    assert.deepEqual(r.errors, []);
    assert.ok(r.dev.connectionCount <= 1024);
  });
});

describe("VsockDevice: seqpacket", () => {
  it("keeps message boundaries from the guest (EOM) and to the guest", async () => {
    const r = rig();
    r.guest.postRx(16, 1000);
    const c = await open(r, {}, VIRTIO_VSOCK_TYPE_SEQPACKET);
    const reader = c.readable.getReader();
    const S = { ...REQ, type: VIRTIO_VSOCK_TYPE_SEQPACKET, op: VIRTIO_VSOCK_OP_RW };
    r.guest.send(S, new Uint8Array([1, 2, 3]));
    r.guest.send({ ...S, flags: VIRTIO_VSOCK_SEQ_EOM }, new Uint8Array([4]));
    r.guest.send({ ...S, flags: VIRTIO_VSOCK_SEQ_EOM }, new Uint8Array([5, 6]));
    assert.deepEqual((await reader.read()).value, new Uint8Array([1, 2, 3, 4]));
    assert.deepEqual((await reader.read()).value, new Uint8Array([5, 6]));
    const w = c.writable.getWriter();
    await w.write(new Uint8Array(2500).fill(9));
    await w.write(new Uint8Array(10).fill(8));
    const ps = r.guest.receive();
    assert.deepEqual(ps.map((p) => [p.payload.length, p.header.flags]), [
      [1000, 0],
      [1000, 0],
      [500, VIRTIO_VSOCK_SEQ_EOM],
      [10, VIRTIO_VSOCK_SEQ_EOM],
    ]);
    assert.ok(ps.every((p) => p.header.type === VIRTIO_VSOCK_TYPE_SEQPACKET));
  });

  it("refuses a host message larger than the guest's whole buffer", async () => {
    const r = rig();
    r.guest.postRx(16, 1000);
    const c = await open(r, { bufAlloc: 2000 }, VIRTIO_VSOCK_TYPE_SEQPACKET);
    await assert.rejects(c.writable.getWriter().write(new Uint8Array(2001)), RangeError);
    await tick();
    assert.equal(only(r.guest.receive()).header.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(r.dev.stats.resets.messageTooLarge, 1);
  });
});

describe("VsockDevice: transport reset", () => {
  it("sends TRANSPORT_RESET after a device reset, and drops the connections", async () => {
    const r = rig();
    r.guest.postRx(4);
    r.guest.postEvents(2);
    assert.deepEqual(r.guest.events(), []);
    const c = await open(r);
    const read = c.readable.getReader().read();
    // The driver resets the device and initialises it again.
    const [rx, tx, event] = r.driver.init();
    await assert.rejects(read, VsockConnectionError);
    assert.equal(r.dev.connectionCount, 0);
    const guest = new VsockDriver({
      rx,
      tx,
      event,
      kick: (i) => r.driver.kick(i, true),
      guestCid: CID,
    });
    guest.postEvents(1);
    assert.deepEqual(guest.events(), [VIRTIO_VSOCK_EVENT_TRANSPORT_RESET]);
    assert.equal(r.dev.stats.transportResets, 1);
    // New connections work.
    guest.postRx(2);
    r.dev.listen(1234, () => {});
    guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_REQUEST });
    assert.equal(only(guest.receive()).header.op, VIRTIO_VSOCK_OP_RESPONSE);
  });

  it("transportReset() drops connections, updates the CID and sends the event", async () => {
    const r = rig();
    r.guest.postRx(4);
    const c = await open(r);
    r.dev.transportReset(77);
    await assert.rejects(c.readable.getReader().read(), VsockConnectionError);
    const cfg = new Uint8Array(8);
    r.dev.readConfig(0, cfg);
    assert.equal(cfg[0], 77);
    assert.equal(r.dev.transportResetPending, true);
    r.guest.postEvents(1, 3); // too short: returned empty, counted
    r.guest.postEvents(1);
    assert.deepEqual(r.guest.events(), [-1, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET]);
    assert.equal(r.dev.stats.dropped.badEventBuffer, 1);
    assert.equal(r.dev.transportResetPending, false);
    // Packets must now come from the new CID.
    r.guest.send({ ...REQ, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(1));
    assert.equal(r.dev.stats.dropped.badSourceCid, 1);
  });

  it("a first activation on fresh rings owes no TRANSPORT_RESET", () => {
    const r = rig();
    r.guest.postEvents(1);
    assert.deepEqual(r.guest.events(), []);
    assert.equal(r.dev.transportResetPending, false);
  });
});

describe("VsockDevice: many connections", () => {
  it("serves 300 concurrent guest connections, each echoing its own bytes", async () => {
    const r = rig({ bufferSize: 4096 });
    r.dev.listen(1234, async (c) => {
      await c.readable.pipeTo(c.writable);
    });
    r.guest.topUpRx(250, 256, "single");
    const N = 300;
    for (let p = 0; p < N; p++) {
      r.guest.send({ ...REQ, srcPort: 10_000 + p, op: VIRTIO_VSOCK_OP_REQUEST });
    }
    const echoed = new Map<number, number>();
    const seen: VsockRxPacket[] = [];
    const pump = async () => {
      for (let i = 0; i < 5; i++) await tick();
      seen.push(...r.guest.receive());
      r.guest.topUpRx(250, 256, "single");
    };
    const responses = () => seen.filter((p) => p.header.op === VIRTIO_VSOCK_OP_RESPONSE).length;
    for (let i = 0; i < 5 && responses() < N; i++) await pump();
    assert.equal(responses(), N);
    seen.length = 0;
    for (let p = 0; p < N; p++) {
      r.guest.send(
        { ...REQ, srcPort: 10_000 + p, op: VIRTIO_VSOCK_OP_RW },
        new Uint8Array(8).fill(p & 0xff),
      );
    }
    for (let round = 0; round < 20 && echoed.size < N; round++) {
      await pump();
      for (const pk of seen.splice(0)) {
        if (pk.header.op !== VIRTIO_VSOCK_OP_RW) continue;
        assert.ok(pk.payload.every((b) => b === ((pk.header.dstPort - 10_000) & 0xff)));
        echoed.set(pk.header.dstPort, (echoed.get(pk.header.dstPort) ?? 0) + pk.payload.length);
      }
    }
    assert.equal(echoed.size, N);
    assert.ok([...echoed.values()].every((n) => n === 8));
    assert.equal(r.dev.connectionCount, N);
    assert.deepEqual(r.errors, []);
  });
});

describe("VsockDevice: bounded work", () => {
  // A TRANSPORT_RESET waiting for an event buffer takes chains from the event queue until one
  // fits. A driver that keeps that queue full of malformed chains (refilling it as fast as the
  // device takes them, from another CPU) must not hold the device in that loop: one pass takes
  // at most a budget's worth, the next kick goes on.
  it("takes at most a budget of malformed event chains in one pass", async () => {
    const r = rig();
    const mem = r.transport.core.memory!;
    const ev = r.driver.queues[2];
    const bad = ev.size - 1;
    // Out of memory: refused and returned empty.
    ev.writeDescriptor(bad, { addr: 0xffff_0000_0000n, len: 8, flags: 2, next: 0 });
    ev.publish(bad);
    const q = r.transport.core.queues[2];
    const pop = q.pop.bind(q);
    let pops = 0;
    let refill = true;
    q.pop = (m) => {
      pops++;
      if (refill && pops < 100_000) ev.publish(bad); // the driver refills at once
      return pop(m);
    };
    try {
      r.dev.transportReset();
      assert.ok(pops <= DEFAULT_SERVE_BUDGET.chains + 1, `${pops} chains taken in one pass`);
      // The driver stops, and gives an event buffer: the reset still reaches it.
      refill = false;
      const head = ev.addChain([{ writable: 8 }]);
      for (let i = 0; i < 20 && r.dev.transportResetPending; i++) await tick();
      assert.equal(r.dev.transportResetPending, false);
      const got = ev.takeAllUsed().find((u) => u.id === head);
      assert.equal(got?.len, 4);
    } finally {
      r.dev.remove();
    }
    void mem;
  });
});
