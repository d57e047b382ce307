import { describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import {
  close,
  EventFd,
  FdWatcher,
  poll,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  POLLOUT,
  recvmsg,
  sendmsg,
  socketpair,
  SysError,
  waitReady,
  watchReadable,
} from "../../sys/mod.ts";

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function deferred<T>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => resolve = r);
  return { promise, resolve };
}

describe("poll()", () => {
  it("reports readiness per entry", () => {
    const a = new EventFd();
    const b = new EventFd();
    try {
      assert.deepEqual(poll([{ fd: a.fd, events: POLLIN }, { fd: b.fd, events: POLLIN }], 0), [
        0,
        0,
      ]);
      b.write();
      assert.deepEqual(poll([{ fd: a.fd, events: POLLIN }, { fd: b.fd, events: POLLIN }], 0), [
        0,
        POLLIN,
      ]);
      assert.equal(poll([{ fd: a.fd, events: POLLOUT }], 10)[0], POLLOUT);
      assert.deepEqual(poll([], 0), []);
    } finally {
      a.close();
      b.close();
    }
  });

  it("times out and reports POLLNVAL and POLLHUP", () => {
    const efd = new EventFd();
    const fd = efd.fd;
    const started = performance.now();
    assert.deepEqual(poll([{ fd, events: POLLIN }], 30), [0]);
    assert.ok(performance.now() - started >= 25);
    efd.close();
    assert.equal(poll([{ fd, events: POLLIN }], 0)[0], POLLNVAL);
    const [s1, s2] = socketpair();
    close(s1);
    assert.notEqual(poll([{ fd: s2, events: POLLIN }], 0)[0] & POLLHUP, 0);
    close(s2);
  });
});

describe("FdWatcher", () => {
  it("dispatches callbacks on the JS thread for each ready descriptor", async () => {
    const watcher = new FdWatcher();
    const efds = [new EventFd(), new EventFd(), new EventFd()];
    try {
      const seen: [number, bigint][] = [];
      let arrived = deferred<void>();
      efds.forEach((efd, i) => {
        watcher.watch(efd.fd, (revents) => {
          assert.equal(revents & POLLIN, POLLIN);
          seen.push([i, efd.read()]);
          arrived.resolve();
        });
      });
      assert.equal(watcher.size, 3);
      for (const [i, value] of [[2, 30n], [0, 10n], [1, 20n]] as const) {
        arrived = deferred<void>();
        setTimeout(() => efds[i].write(value), 5);
        await arrived.promise;
      }
      assert.deepEqual(seen, [[2, 30n], [0, 10n], [1, 20n]]);
      // Two made ready together are both dispatched (in one round or two).
      const both = deferred<void>();
      arrived = { promise: both.promise, resolve: () => seen.length === 5 && both.resolve() };
      efds[1].write(2n);
      efds[0].write(1n);
      await both.promise;
      assert.deepEqual(seen.slice(3).sort(), [[0, 1n], [1, 2n]]);
    } finally {
      await watcher.stop();
      for (const efd of efds) efd.close();
    }
  });

  it("is level-triggered and calls back again for new events", async () => {
    const watcher = new FdWatcher();
    const efd = new EventFd();
    try {
      let calls = 0;
      const once = deferred<void>();
      const twice = deferred<void>();
      watcher.watch(efd.fd, () => {
        calls++;
        efd.read();
        if (calls === 1) once.resolve();
        if (calls === 2) twice.resolve();
      });
      efd.write();
      await once.promise;
      await delay(20);
      assert.equal(calls, 1, "no second call once the eventfd was read");
      efd.write();
      await twice.promise;
      assert.equal(calls, 2);
    } finally {
      await watcher.stop();
      efd.close();
    }
  });

  it("closing a watch stops its callbacks; watches can be added while polling", async () => {
    const watcher = new FdWatcher();
    const a = new EventFd();
    const b = new EventFd();
    try {
      let aCalls = 0;
      const watchA = watcher.watch(a.fd, () => {
        aCalls++;
        a.read();
      });
      await delay(10); // the watcher is now blocked in poll(2) on a
      const gotB = deferred<number>();
      watcher.watch(b.fd, (revents) => {
        b.read();
        gotB.resolve(revents);
      });
      b.write();
      assert.equal(await gotB.promise, POLLIN);
      watchA.close();
      assert.equal(watchA.active, false);
      a.write();
      await delay(30);
      assert.equal(aCalls, 0);
      assert.equal(watcher.size, 1);
    } finally {
      await watcher.stop();
      a.close();
      b.close();
    }
  });

  it("reports POLLNVAL once for a descriptor closed while watched", async () => {
    const watcher = new FdWatcher();
    const efd = new EventFd();
    try {
      const events: number[] = [];
      const got = deferred<void>();
      const watch = watcher.watch(efd.fd, (revents) => {
        events.push(revents);
        got.resolve();
      });
      await delay(10);
      // Made before the close so that it cannot reuse the closed descriptor number.
      const other = new EventFd();
      efd.close();
      // Closing a descriptor does not wake poll(2) in another thread; another change does.
      const otherWatch = watcher.watch(other.fd, () => {});
      await got.promise;
      await delay(20);
      assert.deepEqual(events, [POLLNVAL]);
      assert.equal(watch.active, false);
      otherWatch.close();
      other.close();
    } finally {
      await watcher.stop();
    }
  });

  it("does not spin when idle, also after the last watch was closed and a new one made", async () => {
    const watcher = new FdWatcher();
    const efd = new EventFd();
    try {
      const first = watcher.watch(efd.fd, () => {});
      await delay(10);
      first.close(); // wakes the poll; the loop ends with nothing to watch
      await delay(10);
      let calls = 0;
      watcher.watch(efd.fd, () => calls++);
      await delay(10);
      const cpu = process.cpuUsage();
      await delay(200);
      const used = process.cpuUsage(cpu);
      const ms = (used.user + used.system) / 1000;
      assert.ok(ms < 60, `used ${ms} ms of CPU in 200 ms of idle waiting`);
      assert.equal(calls, 0);
    } finally {
      await watcher.stop();
      efd.close();
    }
  });

  it("routes callback exceptions to onError and keeps going", async () => {
    const errors: unknown[] = [];
    const watcher = new FdWatcher({ onError: (e) => errors.push(e) });
    const efd = new EventFd();
    try {
      let calls = 0;
      const first = deferred<void>();
      const second = deferred<void>();
      watcher.watch(efd.fd, () => {
        calls++;
        efd.read();
        if (calls === 1) {
          first.resolve();
          throw new Error("boom");
        }
        second.resolve();
      });
      efd.write();
      await first.promise;
      efd.write();
      await second.promise;
      assert.equal(errors.length, 1);
      assert.match(String(errors[0]), /boom/);
    } finally {
      await watcher.stop();
      efd.close();
    }
  });

  it("stop() settles with a poll pending and refuses new watches", async () => {
    const watcher = new FdWatcher();
    const efd = new EventFd();
    const watch = watcher.watch(efd.fd, () => {});
    await delay(10);
    await watcher.stop();
    assert.equal(watch.active, false);
    assert.equal(watcher.size, 0);
    assert.throws(() => watcher.watch(efd.fd, () => {}), /stopped/);
    await watcher.stop(); // idempotent
    efd.close();
  });

  it("watches sockets for readability and hang-up", async () => {
    const watcher = new FdWatcher();
    const [a, b] = socketpair();
    try {
      const received: number[] = [];
      const hungUp = deferred<void>();
      const buf = new Uint8Array(16);
      const watch = watcher.watch(b, (revents) => {
        const got = recvmsg(b, buf);
        if (got.bytes > 0) received.push(...buf.subarray(0, got.bytes));
        if (got.bytes === 0 || (revents & POLLHUP) !== 0) {
          watch.close();
          hungUp.resolve();
        }
      });
      sendmsg(a, new Uint8Array([1, 2]));
      await delay(20);
      sendmsg(a, new Uint8Array([3]));
      await delay(20);
      close(a);
      await hungUp.promise;
      assert.deepEqual(received, [1, 2, 3]);
    } finally {
      await watcher.stop();
      close(b);
    }
  });
});

describe("watchReadable() and waitReady()", () => {
  it("watchReadable() uses the shared watcher", async () => {
    const efd = new EventFd();
    const got = deferred<bigint>();
    const watch = watchReadable(efd.fd, () => got.resolve(efd.read()));
    setTimeout(() => efd.write(8n), 10);
    assert.equal(await got.promise, 8n);
    watch.close();
    efd.close();
  });

  it("waitReady() resolves with revents, rejects on abort and on a bad fd", async () => {
    const efd = new EventFd();
    setTimeout(() => efd.write(), 10);
    assert.equal(await waitReady(efd.fd), POLLIN);
    efd.read();
    const controller = new AbortController();
    const pending = waitReady(efd.fd, POLLIN, { signal: controller.signal });
    controller.abort(new Error("stop"));
    await assert.rejects(pending, /stop/);
    const fd = efd.fd;
    efd.close();
    await assert.rejects(
      waitReady(fd),
      (e: unknown) => e instanceof SysError && e.code === "EBADF",
    );
  });
});
