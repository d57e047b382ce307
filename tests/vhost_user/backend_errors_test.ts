import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  configPayload,
  memTablePayload,
  type VhostUserFrontend,
  vringAddrPayload,
} from "../../testing/vhost_user_frontend.ts";
import {
  MAX_PAYLOAD,
  Request,
  u64Payload,
  VhostUserError,
  type VhostUserErrorCode,
  vringStatePayload,
} from "../../vhost_user/protocol.ts";
import { RngDevice } from "../../devices/rng.ts";
import { EventFd } from "../../sys/mod.ts";
import { readEntropy, T, until, withBackend } from "./_harness.ts";

/**
 * Connect, let `act` misbehave, and check that the backend drops this connection with
 * `code`, keeps running, and serves the next frontend.
 */
async function expectDropped(
  code: VhostUserErrorCode,
  act: (fe: VhostUserFrontend) => Promise<unknown>,
  pattern?: RegExp,
): Promise<void> {
  const rng = new RngDevice();
  await withBackend(rng, async (h) => {
    const fe = await h.connect();
    try {
      await act(fe);
    } catch (err) {
      // A request waiting for an answer sees the connection close.
      assert.ok(err instanceof VhostUserError, String(err));
      assert.match(err.message, /closed the connection/);
    }
    assert.equal(await fe.waitDisconnect(5000), true, "the backend kept the connection");
    await fe.close();
    assert.equal(h.errors.length, 1, h.errors.map((e) => e.message).join("; "));
    const err = h.errors[0];
    assert.ok(err instanceof VhostUserError);
    assert.equal(err.code, code, err.message);
    if (pattern !== undefined) assert.match(err.message, pattern);
    await until(() => !h.backend.connected, "the backend to drop the connection");
    assert.equal(h.backend.active, false);
    const next = await h.connect();
    await next.start();
    await readEntropy(next, [64, 512]);
    assert.equal(h.errors.length, 1);
    assert.equal(h.backend.connections, 2);
  });
}

describe("VhostUserBackend drops a misbehaving frontend and serves the next", () => {
  it("a header with a bad version", T, async () => {
    await expectDropped(
      "Malformed",
      (fe) => fe.request(Request.GET_FEATURES, undefined, { flags: 0x2, expectReply: false }),
      /version/,
    );
  });

  it("an oversized payload", T, async () => {
    await expectDropped(
      "Malformed",
      (fe) => fe.request(Request.SET_FEATURES, new Uint8Array(MAX_PAYLOAD + 8)),
      /payload of/,
    );
  });

  it("a payload shorter than the request needs", T, async () => {
    await expectDropped(
      "Malformed",
      (fe) => fe.request(Request.SET_FEATURES, new Uint8Array(4)),
      /need 8/,
    );
  });

  it("an unknown request", T, async () => {
    await expectDropped("Unsupported", (fe) => fe.request(99), /UNKNOWN\(99\)/);
  });

  it("a request the backend does not implement (SET_LOG_BASE)", T, async () => {
    await expectDropped("Unsupported", async (fe) => {
      await fe.setOwner();
      await fe.request(Request.SET_LOG_BASE, u64Payload(0n));
    });
  });

  it("SET_MEM_TABLE before SET_OWNER", T, async () => {
    await expectDropped("OutOfOrder", (fe) => fe.setMemTable(), /SET_OWNER/);
  });

  it("SET_VRING_ADDR before SET_MEM_TABLE", T, async () => {
    await expectDropped("OutOfOrder", async (fe) => {
      await fe.setOwner();
      await fe.request(
        Request.SET_VRING_ADDR,
        vringAddrPayload({
          index: 0,
          flags: 0,
          desc: fe.userAddr(0x10000),
          used: fe.userAddr(0x12000),
          avail: fe.userAddr(0x11000),
          log: 0n,
        }),
      );
    }, /before SET_MEM_TABLE/);
  });

  it("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES acked", T, async () => {
    await expectDropped("OutOfOrder", async (fe) => {
      await fe.setOwner();
      await fe.request(Request.SET_VRING_ENABLE, vringStatePayload(0, 1));
    });
  });

  it("a ring index out of range", T, async () => {
    await expectDropped("InvalidValue", async (fe) => {
      await fe.setOwner();
      await fe.request(Request.SET_VRING_NUM, vringStatePayload(7, 256));
    }, /no vring 7/);
  });

  it("a kick fd for a ring index out of range", T, async () => {
    const efd = new EventFd();
    try {
      await expectDropped("InvalidValue", async (fe) => {
        await fe.setOwner();
        await fe.request(Request.SET_VRING_KICK, u64Payload(5n), { fds: [efd.fd] });
      });
    } finally {
      efd.close();
    }
  });

  it("a vring size that is not a power of two", T, async () => {
    await expectDropped("InvalidValue", async (fe) => {
      await fe.setOwner();
      await fe.request(Request.SET_VRING_NUM, vringStatePayload(0, 100));
    }, /size 100/);
  });

  it("a vring size above the device's maximum", T, async () => {
    await expectDropped("InvalidValue", async (fe) => {
      await fe.setOwner();
      await fe.request(Request.SET_VRING_NUM, vringStatePayload(0, 512));
    });
  });

  it("features the backend never offered", T, async () => {
    await expectDropped("InvalidValue", async (fe) => {
      await fe.setOwner();
      await fe.setFeatures(1n << 63n);
    }, /unoffered features/);
  });

  it("protocol features the backend never offered", T, async () => {
    await expectDropped("InvalidValue", async (fe) => {
      await fe.setOwner();
      await fe.setProtocolFeatures(1n << 40n);
    }, /unoffered protocol features/);
  });

  it("SET_MEM_TABLE with fewer descriptors than regions", T, async () => {
    await expectDropped("Malformed", async (fe) => {
      await fe.setOwner();
      const region = { guestAddr: 0, size: 0x10000, userAddr: fe.userAddr(0), mmapOffset: 0 };
      await fe.request(Request.SET_MEM_TABLE, memTablePayload([region]));
    }, /1 regions but 0 fds/);
  });

  it("SET_MEM_TABLE with more descriptors than regions", T, async () => {
    const a = new EventFd(), b = new EventFd();
    try {
      await expectDropped("Malformed", async (fe) => {
        await fe.setOwner();
        const region = { guestAddr: 0, size: 0x10000, userAddr: fe.userAddr(0), mmapOffset: 0 };
        await fe.request(Request.SET_MEM_TABLE, memTablePayload([region]), {
          fds: [a.fd, b.fd],
        });
      }, /1 regions but 2 fds/);
    } finally {
      a.close();
      b.close();
    }
  });

  it("a ring address in no memory region", T, async () => {
    await expectDropped("InvalidValue", async (fe) => {
      await fe.start({ queues: 0 });
      const outside = fe.userAddr(fe.memory.totalSize + 0x1000);
      await fe.request(
        Request.SET_VRING_ADDR,
        vringAddrPayload({
          index: 0,
          flags: 0,
          desc: outside,
          used: fe.userAddr(0x12000),
          avail: fe.userAddr(0x11000),
          log: 0n,
        }),
      );
    }, /in no memory region/);
  });

  it("a ring address given as a guest address instead of a frontend address", T, async () => {
    await expectDropped("InvalidValue", async (fe) => {
      await fe.start({ queues: 0 });
      await fe.request(
        Request.SET_VRING_ADDR,
        vringAddrPayload({
          index: 0,
          flags: 0,
          desc: 0x10000n,
          used: 0x12000n,
          avail: 0x11000n,
          log: 0n,
        }),
      );
    }, /in no memory region/);
  });

  it("GET_CONFIG with a size that does not match the payload", T, async () => {
    await expectDropped("Malformed", async (fe) => {
      await fe.start();
      const payload = configPayload(0, new Uint8Array(4));
      new DataView(payload.buffer).setUint32(4, 8, true);
      await fe.request(Request.GET_CONFIG, payload);
    });
  });
});
