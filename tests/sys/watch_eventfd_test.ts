// watchEventFd: an eventfd another party controls cannot make its callback run in a loop. The
// bad descriptors (a pipe or socket that hung up, a file that is always readable, a semaphore
// eventfd holding a huge count) are wrapped with EventFd.fromFd, as a vhost-user backend once
// did with whatever the frontend sent. Each test counts callbacks over a while: a permanently
// ready descriptor must cost one report, not thousands of calls.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  close,
  EventFd,
  EVENTFD_MAX_DRAIN,
  eventFdSemaphore,
  fdKind,
  FdWatcher,
  memfdCreate,
  O_CLOEXEC,
  O_NONBLOCK,
  pipe,
  pwrite,
  socketpair,
  watchEventFd,
  write,
} from "../../sys/mod.ts";

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Counted {
  signals: bigint[];
  broken: string[];
  stop(): Promise<void>;
  watcher: FdWatcher;
}

/** Watch `efd` with a watcher of its own, recording what the callbacks see. */
function count(efd: EventFd): Counted {
  const watcher = new FdWatcher({ onError: (e) => assert.fail(String(e)) });
  const signals: bigint[] = [];
  const broken: string[] = [];
  watchEventFd(efd, {
    watcher,
    onSignal: (value) => signals.push(value),
    onBroken: (reason) => broken.push(reason),
  });
  return { signals, broken, watcher, stop: () => watcher.stop() };
}

describe("watchEventFd()", () => {
  it("calls back once per wake-up with the whole count", async () => {
    const efd = new EventFd();
    const c = count(efd);
    try {
      efd.write(3n);
      efd.write(4n);
      for (let i = 0; i < 200 && c.signals.length === 0; i++) await delay(5);
      assert.deepEqual(c.signals, [7n]);
      efd.write(1n);
      for (let i = 0; i < 200 && c.signals.length === 1; i++) await delay(5);
      assert.deepEqual(c.signals, [7n, 1n]);
      await delay(50);
      assert.deepEqual(c.signals, [7n, 1n], "no call without a write");
      assert.deepEqual(c.broken, []);
      assert.equal(c.watcher.size, 1);
    } finally {
      await c.stop();
      efd.close();
    }
  });

  it("stops at POLLHUP from a pipe whose writer closed", async () => {
    const [r, w] = pipe(O_CLOEXEC | O_NONBLOCK);
    close(w);
    const efd = EventFd.fromFd(r);
    const c = count(efd);
    try {
      await delay(200);
      assert.deepEqual(c.broken, ["poll reported POLLHUP"]);
      assert.deepEqual(c.signals, []);
      assert.equal(c.watcher.size, 0, "the watch is closed");
    } finally {
      await c.stop();
      efd.close();
    }
  });

  it("stops at POLLHUP from a socket whose peer closed", async () => {
    const [a, b] = socketpair();
    close(b);
    const efd = EventFd.fromFd(a);
    const c = count(efd);
    try {
      await delay(200);
      assert.equal(c.broken.length, 1, c.broken.join("; "));
      assert.match(c.broken[0], /POLLHUP/);
      assert.deepEqual(c.signals, []);
      assert.equal(c.watcher.size, 0);
    } finally {
      await c.stop();
      efd.close();
    }
  });

  it("stops when a read fails: a short file is always readable, then at end of file", async () => {
    const fd = memfdCreate("not-an-eventfd");
    pwrite(fd, new Uint8Array(16).fill(1), 0);
    const efd = EventFd.fromFd(fd);
    const c = count(efd);
    try {
      await delay(200);
      assert.equal(c.broken.length, 1, c.broken.join("; "));
      assert.match(c.broken[0], /^read failed: .*not an eventfd: read returned 0 bytes/);
      assert.deepEqual(c.signals, []);
      assert.equal(c.watcher.size, 0);
    } finally {
      await c.stop();
      efd.close();
    }
  });

  it("stops when reads never drain it: a semaphore eventfd with a huge count", async () => {
    const efd = new EventFd({ semaphore: true });
    efd.write(0xffff_ffff_ffff_fffen);
    const c = count(efd);
    try {
      await delay(200);
      assert.equal(c.broken.length, 1, c.broken.join("; "));
      assert.match(c.broken[0], new RegExp(`still readable after ${EVENTFD_MAX_DRAIN} reads`));
      assert.deepEqual(c.signals, []);
      assert.equal(c.watcher.size, 0);
    } finally {
      await c.stop();
      efd.close();
    }
  });

  it("drains a semaphore eventfd holding a small count in one call", async () => {
    const efd = new EventFd({ semaphore: true });
    efd.write(5n);
    const c = count(efd);
    try {
      for (let i = 0; i < 200 && c.signals.length === 0; i++) await delay(5);
      await delay(50);
      assert.deepEqual(c.signals, [5n]);
      assert.deepEqual(c.broken, []);
    } finally {
      await c.stop();
      efd.close();
    }
  });
});

describe("EventFd.read() of something that is not an eventfd", () => {
  it("throws TypeError at end of file instead of reading a stale errno", () => {
    const [r, w] = pipe();
    write(w, new Uint8Array(3));
    close(w);
    const efd = EventFd.fromFd(r);
    try {
      assert.throws(() => efd.read(), /not an eventfd: read returned 3 bytes/);
      assert.throws(() => efd.read(), /not an eventfd: read returned 0 bytes/);
    } finally {
      efd.close();
    }
  });
});

describe("pipe() and eventFdSemaphore()", () => {
  it("pipe() gives a read end and a write end", () => {
    const [r, w] = pipe();
    try {
      assert.equal(fdKind(r), "pipe");
      assert.equal(fdKind(w), "pipe");
    } finally {
      close(r);
      close(w);
    }
  });

  it("eventFdSemaphore() tells semaphore mode, when the kernel says", () => {
    const plain = new EventFd(), semaphore = new EventFd({ semaphore: true });
    const [a, b] = socketpair();
    try {
      const s = eventFdSemaphore(semaphore.fd);
      if (s !== undefined) {
        assert.equal(s, true);
        assert.equal(eventFdSemaphore(plain.fd), false);
      }
      assert.equal(eventFdSemaphore(a), undefined, "a socket has no eventfd line");
    } finally {
      plain.close();
      semaphore.close();
      close(a);
      close(b);
    }
  });
});
