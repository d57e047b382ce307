// The vsock device as a vhost-user backend process (vhost_user/main.ts --device vsock), driven
// by the TypeScript frontend with all three rings: GET_CONFIG carries the CID, bytes flow
// through the Unix muxer, and a frontend that comes back (to the same backend, or to a
// restarted one, keeping its rings) gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event ring
// and can open new connections.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BackendProcess, startBackend } from "../../launcher/backends.ts";
import { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { VsockDriver, type VsockRxPacket } from "../../testing/vsock_driver.ts";
import {
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
} from "../../devices/vsock.ts";
import { T } from "./_harness.ts";

const CID = 42;
let dir = "";
let server: net.Server;
const received: string[] = [];

async function setUp(): Promise<void> {
  dir = mkdtempSync(join(tmpdir(), "vt-vsock-vu-"));
  // A host service on vsock port 5000: records what each connection sent, answers "ack".
  server = net.createServer({ allowHalfOpen: true }, (s) => {
    let text = "";
    // A connection the backend dropped (killed mid-test) ends with EPIPE on the answer.
    s.on("error", () => {});
    s.on("data", (d) => (text += String(d)));
    s.on("end", () => {
      received.push(text);
      s.end("ack");
    });
  });
  await new Promise<void>((r) => server.listen(join(dir, "v.uds_5000"), () => r()));
}

function tearDown(): void {
  server.close();
  rmSync(dir, { recursive: true, force: true });
}

function backend(): Promise<BackendProcess> {
  return startBackend([
    ...["--socket", join(dir, "v.sock"), "--device", "vsock"],
    ...["--guest-cid", String(CID), "--uds-path", join(dir, "v.uds")],
  ]);
}

function driver(fe: VhostUserFrontend): VsockDriver {
  return new VsockDriver({
    rx: fe.ring(0).driver,
    tx: fe.ring(1).driver,
    event: fe.ring(2).driver,
    kick: (i) => fe.kick(i, { force: true }),
    guestCid: CID,
  });
}

/** Wait for rx packets until `pred` holds for one; returns it. */
async function expectPacket(
  fe: VsockDriver,
  frontend: VhostUserFrontend,
  pred: (p: VsockRxPacket) => boolean,
): Promise<VsockRxPacket> {
  const seen: VsockRxPacket[] = [];
  for (let i = 0; i < 100; i++) {
    seen.push(...fe.receive());
    fe.topUpRx(32);
    const hit = seen.find(pred);
    if (hit !== undefined) return hit;
    await frontend.waitCall(0, 100);
  }
  throw new Error(`no such packet; saw ops ${seen.map((p) => p.header.op)}`);
}

async function expectEvent(guest: VsockDriver, frontend: VhostUserFrontend): Promise<number[]> {
  for (let i = 0; i < 100; i++) {
    const ev = guest.events();
    if (ev.length > 0) return ev;
    await frontend.waitCall(2, 100);
  }
  return [];
}

/** One guest connection to host port 5000: request, data, half-close, the host's "ack". */
async function roundTrip(
  guest: VsockDriver,
  fe: VhostUserFrontend,
  port: number,
  text: string,
): Promise<void> {
  const S = { srcPort: port, dstPort: 5000, bufAlloc: 65536 };
  guest.send({ ...S, op: VIRTIO_VSOCK_OP_REQUEST });
  await expectPacket(guest, fe, (p) => p.header.op === VIRTIO_VSOCK_OP_RESPONSE);
  guest.send({ ...S, op: VIRTIO_VSOCK_OP_RW }, new TextEncoder().encode(text));
  guest.send({ ...S, op: 4, /* SHUTDOWN */ flags: 2 /* SEND */ });
  const ack = await expectPacket(guest, fe, (p) => p.header.op === VIRTIO_VSOCK_OP_RW);
  assert.equal(new TextDecoder().decode(ack.payload), "ack");
  assert.equal(received.at(-1), text);
}

describe("vsock vhost-user backend", () => {
  before(setUp);
  after(tearDown);

  it("offers the CID through GET_CONFIG and three queues", T, async () => {
    const b = await backend();
    try {
      const fe = await VhostUserFrontend.connect(join(dir, "v.sock"));
      try {
        const r = await fe.start();
        assert.equal(r.queueNum, 3);
        const cfg = await fe.getConfig(0, 8);
        assert.equal(new DataView(cfg.buffer, cfg.byteOffset).getBigUint64(0, true), BigInt(CID));
      } finally {
        await fe.close();
      }
    } finally {
      await b.stop();
    }
  });

  it("a frontend that reconnects gets TRANSPORT_RESET, then new connections work", T, async () => {
    const b = await backend();
    try {
      const first = await VhostUserFrontend.connect(join(dir, "v.sock"));
      const g1 = (await first.start(), driver(first));
      g1.postEvents(2);
      g1.postRx(16);
      await roundTrip(g1, first, 100, "before");
      // A first driver gets no event.
      assert.deepEqual(g1.events(), []);
      await first.close();
      const second = await VhostUserFrontend.connect(join(dir, "v.sock"));
      try {
        await second.start();
        const g2 = driver(second);
        g2.postEvents(2);
        assert.deepEqual(await expectEvent(g2, second), [VIRTIO_VSOCK_EVENT_TRANSPORT_RESET]);
        g2.postRx(16);
        await roundTrip(g2, second, 100, "after reconnect");
      } finally {
        await second.close();
      }
    } finally {
      await b.stop();
    }
  });

  it(
    "a restarted backend, its frontend back with the same rings: TRANSPORT_RESET, old connections reset, new ones work",
    T,
    async () => {
      let b = await backend();
      const fe = await VhostUserFrontend.connect(join(dir, "v.sock"));
      try {
        await fe.start();
        const guest = driver(fe);
        guest.postEvents(2);
        guest.postRx(16);
        await roundTrip(guest, fe, 200, "first life");
        // A connection left open across the restart.
        const OPEN = { srcPort: 201, dstPort: 5000, bufAlloc: 65536 };
        guest.send({ ...OPEN, op: VIRTIO_VSOCK_OP_REQUEST });
        await expectPacket(guest, fe, (p) => p.header.op === VIRTIO_VSOCK_OP_RESPONSE);
        // The backend process dies and a new one takes its socket.
        await b.stop();
        b = await backend();
        await fe.reconnect(join(dir, "v.sock"));
        await fe.start({ resume: true });
        assert.deepEqual(await expectEvent(guest, fe), [VIRTIO_VSOCK_EVENT_TRANSPORT_RESET]);
        // The new backend knows nothing of the old connection: its data is answered with RST.
        guest.send({ ...OPEN, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(3));
        const rst = await expectPacket(guest, fe, (p) => p.header.op === VIRTIO_VSOCK_OP_RST);
        assert.equal(rst.header.dstPort, 201);
        await roundTrip(guest, fe, 202, "second life");
      } finally {
        await fe.close();
        await b.stop();
      }
    },
  );
});
