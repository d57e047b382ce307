// Poll mode (`pollUs` / `--poll-us`): after serving a kick the backend keeps checking the
// rings, so a buffer the driver adds right after a completion is served without any kick.
// The backend runs as the CLI in its own process: in one process the polling backend would
// hold the very event loop the test needs to add the buffer.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBackend } from "../../launcher/backends.ts";
import { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { MAX_POLL_US, VhostUserBackend } from "../../vhost_user/backend.ts";
import { RngDevice } from "../../devices/rng.ts";
import { delay, T } from "./_harness.ts";
import { featureBit } from "../../devices/device.ts";
import { VIRTIO_F_EVENT_IDX } from "../../queue/split.ts";

let dir = "";
before(() => {
  dir = mkdtempSync(join(tmpdir(), "vt-poll-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * `attempts` times: serve one kicked request, then add a second one without kicking and
 * see whether it is served within `waitMs`; kick it afterwards if not.
 * @returns How many unkicked requests were served.
 */
async function unkickedServed(
  pollUs: number,
  attempts: number,
  waitMs: number,
  eventIdx: boolean,
): Promise<number> {
  const socket = join(dir, `rng-${pollUs}.sock`);
  const backend = await startBackend([
    ...["--socket", socket, "--device", "rng", "--poll-us", String(pollUs)],
  ]);
  try {
    const fe = await VhostUserFrontend.connect(socket);
    try {
      const all = await fe.getFeatures();
      await fe.start({ features: eventIdx ? all : all & ~featureBit(VIRTIO_F_EVENT_IDX) });
      const { driver } = fe.ring(0);
      let served = 0;
      const call = fe.ring(0).call;
      for (let i = 0; i < attempts; i++) {
        call.read(); // no stale signal: the next one is this request's
        driver.addChain([{ writable: 16 }]);
        fe.kick(0, { force: true });
        // Go on only once the backend signalled: the used index alone can be seen while the
        // backend is still in its serving loop, which may then pick up the next buffer.
        assert.ok(await fe.waitCall(0, 5000), "no call");
        assert.equal(driver.pendingUsed(), 1);
        assert.equal(driver.takeUsed()?.len, 16);
        // The second request: no kick at all.
        driver.addChain([{ writable: 16 }]);
        const end = Date.now() + waitMs;
        while (driver.pendingUsed() === 0 && Date.now() < end) await delay(1);
        if (driver.pendingUsed() > 0) {
          served++;
          // Its call follows the used index: take it now, or the next request would take it
          // for its own.
          await fe.waitCall(0, 1000);
        } else {
          fe.kick(0, { force: true });
          let called = false;
          while (driver.pendingUsed() === 0) {
            assert.ok(await fe.waitCall(0, 5000), "no call");
            called = true;
          }
          // The call can come after the used index (see above): take it now, or the next
          // request would take it for its own while the backend is still serving.
          if (!called) await fe.waitCall(0, 1000);
        }
        assert.equal(driver.takeUsed()?.len, 16);
      }
      return served;
    } finally {
      await fe.close();
    }
  } finally {
    await backend.stop();
  }
}

describe("vhost-user poll mode", () => {
  for (const eventIdx of [false, true]) {
    it(
      `serves buffers added right after a completion without a kick (EVENT_IDX ${
        eventIdx ? "on" : "off"
      })`,
      T,
      async () => {
        const served = await unkickedServed(MAX_POLL_US, 30, 50, eventIdx);
        // The driver has a millisecond after each completion; a loaded machine may miss some
        // (here 26–29 of 30 are served), while without poll mode none ever is.
        assert.ok(served >= 5, `only ${served} of 30 unkicked requests were served`);
      },
    );
  }

  it("without poll mode an unkicked buffer waits for its kick", T, async () => {
    // EVENT_IDX off: the backend then notifies only once its serving loop is over, so the
    // second buffer cannot race into that loop. (With EVENT_IDX it notifies as soon as the
    // first buffer is used and may legitimately pick up a buffer added meanwhile.)
    assert.equal(await unkickedServed(0, 10, 30, false), 0);
  });

  it("rejects a window out of range", () => {
    const opts = (pollUs: number) => ({ socketPath: join(dir, "x.sock"), pollUs });
    assert.throws(() => new VhostUserBackend(new RngDevice(), opts(-1)), RangeError);
    assert.throws(() => new VhostUserBackend(new RngDevice(), opts(MAX_POLL_US + 1)), RangeError);
    assert.throws(() => new VhostUserBackend(new RngDevice(), opts(NaN)), RangeError);
  });
});
