// A vring's kick, call and err fds must be eventfds. A kick fd that is something else (a socket
// whose peer closed, a pipe, a regular file) stays readable, and the backend used to serve the
// ring tens of thousands of times a second; a semaphore eventfd holding a huge count does the
// same. They are refused with a message naming the ring and the fd type, and the next frontend
// is served.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { Request, u64Payload, VhostUserError } from "../../vhost_user/protocol.ts";
import { RngDevice } from "../../devices/rng.ts";
import {
  close,
  EventFd,
  memfdCreate,
  O_CLOEXEC,
  O_NONBLOCK,
  pipe,
  pwrite,
  socketpair,
} from "../../sys/mod.ts";
import { delay, readEntropy, T, until, withBackend } from "./_harness.ts";

/** An rng device that counts how often a ring is served. */
class CountingRng extends RngDevice {
  served = 0;
  override processQueue(index: number): boolean {
    this.served++;
    return super.processQueue(index);
  }
}

/** A descriptor that is not an eventfd, and what the backend should call it. */
interface BadFd {
  name: string;
  kind: RegExp;
  make(): { fd: number; release(): void };
}

const BAD_FDS: BadFd[] = [
  {
    name: "a socket whose peer closed",
    kind: /is a socket, not an eventfd/,
    make() {
      const [a, b] = socketpair();
      close(b);
      return { fd: a, release: () => close(a) };
    },
  },
  {
    name: "a pipe whose writer closed",
    kind: /is a pipe, not an eventfd/,
    make() {
      const [r, w] = pipe(O_CLOEXEC | O_NONBLOCK);
      close(w);
      return { fd: r, release: () => close(r) };
    },
  },
  {
    name: "a regular file",
    kind: /is a regular file, not an eventfd/,
    make() {
      const fd = memfdCreate("kick");
      pwrite(fd, new Uint8Array(4096).fill(1), 0);
      return { fd, release: () => close(fd) };
    },
  },
  {
    name: "a semaphore eventfd holding a huge count",
    kind: /kick fd is an eventfd in semaphore mode|still readable after/,
    make() {
      const efd = new EventFd({ semaphore: true });
      efd.write(0xffff_ffff_ffff_fffen);
      return { fd: efd.fd, release: () => efd.close() };
    },
  },
];

/**
 * Start ring 0 properly, send `fd` as the vring fd of `request`, and check what the backend
 * reports and how often it serves the ring in the 200 ms after.
 */
async function sendBadFd(
  request: number,
  bad: BadFd,
  expect: RegExp,
): Promise<void> {
  const rng = new CountingRng();
  await withBackend(rng, async (h) => {
    const fe: VhostUserFrontend = await h.connect();
    await fe.start();
    await readEntropy(fe, [64]);
    const { fd, release } = bad.make();
    try {
      const before = rng.served;
      try {
        await fe.request(request, u64Payload(0n), { fds: [fd], needReply: true });
      } catch (err) {
        assert.ok(err instanceof VhostUserError, String(err));
      }
      await delay(200);
      const served = rng.served - before;
      // Not a timing bound: a ring served in a loop is served thousands of times here.
      assert.ok(served <= 4, `the ring was served ${served} times in 200 ms`);
      assert.ok(h.errors.length >= 1, "nothing was reported");
      assert.ok(h.errors.length <= 2, h.errors.map((e) => e.message).join("; "));
      const err = h.errors[0];
      assert.ok(err instanceof VhostUserError, String(err));
      assert.match(err.message, expect);
      assert.match(err.message, bad.kind);
    } finally {
      release();
      await fe.close();
    }
    await until(() => !h.backend.connected, "the backend to drop the connection");
    const next = await h.connect();
    await next.start();
    await readEntropy(next, [64, 256]);
  });
}

describe("VhostUserBackend refuses vring fds that are not eventfds", () => {
  for (const bad of BAD_FDS) {
    it(`kick fd: ${bad.name}`, T, async () => {
      await sendBadFd(Request.SET_VRING_KICK, bad, /vring 0 kick fd/);
    });
  }

  for (const bad of BAD_FDS.slice(0, 3)) {
    it(`call fd: ${bad.name}`, T, async () => {
      await sendBadFd(Request.SET_VRING_CALL, bad, /SET_VRING_CALL.*vring 0 call fd/);
    });
    it(`err fd: ${bad.name}`, T, async () => {
      await sendBadFd(Request.SET_VRING_ERR, bad, /SET_VRING_ERR.*vring 0 err fd/);
    });
  }
});
