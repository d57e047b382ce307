import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  close,
  EFD_CLOEXEC,
  EventFd,
  F_GETFD,
  F_GETFL,
  fcntl,
  FD_CLOEXEC,
  O_NONBLOCK,
  read,
  SysError,
  write,
} from "../../sys/mod.ts";

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe("EventFd", () => {
  it("is non-blocking and close-on-exec", () => {
    const efd = new EventFd();
    try {
      assert.notEqual(fcntl(efd.fd, F_GETFL) & O_NONBLOCK, 0);
      assert.equal(fcntl(efd.fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
      assert.equal(EFD_CLOEXEC, 0o2000000);
    } finally {
      efd.close();
    }
  });

  it("write() adds, read() takes and resets, 0n when empty", () => {
    const efd = new EventFd();
    try {
      assert.equal(efd.read(), 0n);
      efd.write();
      efd.write(41n);
      assert.equal(efd.read(), 42n);
      assert.equal(efd.read(), 0n);
      efd.write(0xfffffffffffffffen);
      assert.throws(() => efd.write(1n), (e: unknown) => {
        assert.ok(e instanceof SysError);
        assert.equal(e.call, "eventfd_write");
        assert.equal(e.code, "EAGAIN");
        return true;
      });
      assert.equal(efd.read(), 0xfffffffffffffffen);
      assert.throws(() => efd.write(0n), RangeError);
    } finally {
      efd.close();
    }
  });

  it("has an initial value and a semaphore mode", () => {
    const efd = new EventFd({ initial: 2, semaphore: true });
    try {
      assert.equal(efd.read(), 1n);
      assert.equal(efd.read(), 1n);
      assert.equal(efd.read(), 0n);
    } finally {
      efd.close();
    }
  });

  it("interoperates with plain read(2)/write(2) of 8 bytes", () => {
    const efd = new EventFd();
    try {
      const buf = new Uint8Array(8);
      new DataView(buf.buffer).setBigUint64(0, 5n, true);
      assert.equal(write(efd.fd, buf), 8);
      assert.equal(efd.read(), 5n);
      efd.write(9n);
      assert.equal(read(efd.fd, buf), 8);
      assert.equal(new DataView(buf.buffer).getBigUint64(0, true), 9n);
    } finally {
      efd.close();
    }
  });

  it("wait() resolves after a write from a timer, without blocking the event loop", async () => {
    const efd = new EventFd();
    try {
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 5);
      setTimeout(() => efd.write(3n), 60);
      const started = performance.now();
      const value = await efd.wait();
      clearInterval(ticker);
      assert.equal(value, 3n);
      assert.ok(performance.now() - started >= 50);
      assert.ok(ticks >= 3, `the event loop ran timers meanwhile (${ticks} ticks)`);
      assert.equal(efd.read(), 0n, "wait() consumed the value");
    } finally {
      efd.close();
    }
  });

  it("wait() returns at once when the counter is already set", async () => {
    const efd = new EventFd({ initial: 7 });
    try {
      assert.equal(await efd.wait(), 7n);
    } finally {
      efd.close();
    }
  });

  it("wait() on an eventfd that gets closed rejects with ECANCELED", async () => {
    const efd = new EventFd();
    const pending = efd.wait();
    const second = efd.wait();
    await delay(20);
    efd.close();
    for (const p of [pending, second]) {
      await assert.rejects(p, (e: unknown) => {
        assert.ok(e instanceof SysError);
        assert.equal(e.code, "ECANCELED");
        return true;
      });
    }
    assert.equal(efd.fd, -1);
    await assert.rejects(efd.wait(), (e: unknown) => e instanceof SysError && e.code === "EBADF");
    efd.close(); // idempotent
  });

  it("wait() can be aborted with a signal", async () => {
    const efd = new EventFd();
    try {
      const controller = new AbortController();
      const pending = efd.wait({ signal: controller.signal });
      setTimeout(() => controller.abort(new Error("enough")), 20);
      await assert.rejects(pending, /enough/);
      // The eventfd still works afterwards.
      setTimeout(() => efd.write(), 10);
      assert.equal(await efd.wait(), 1n);
      const aborted = AbortSignal.abort(new Error("already"));
      efd.write();
      await assert.rejects(efd.wait({ signal: aborted }), /already/);
      assert.equal(efd.read(), 1n, "an aborted wait takes nothing");
    } finally {
      efd.close();
    }
  });

  it("several waits: one takes each value, the others keep waiting", async () => {
    const efd = new EventFd();
    try {
      const results: bigint[] = [];
      const a = efd.wait().then((v) => results.push(v));
      const b = efd.wait().then((v) => results.push(v));
      setTimeout(() => efd.write(1n), 10);
      await Promise.race([a, b]);
      await delay(30);
      assert.equal(results.length, 1);
      efd.write(2n);
      await Promise.all([a, b]);
      assert.deepEqual(results.sort(), [1n, 2n]);
    } finally {
      efd.close();
    }
  });

  it("fromFd() adopts a descriptor and makes it non-blocking", () => {
    const original = new EventFd();
    // A second descriptor for the same eventfd, as a received fd would be.
    const copy = fcntl(original.fd, 1030 /* F_DUPFD_CLOEXEC */);
    const adopted = EventFd.fromFd(copy);
    try {
      assert.equal(adopted.fd, copy);
      adopted.write(4n);
      assert.equal(original.read(), 4n);
      assert.equal(adopted.read(), 0n);
    } finally {
      adopted.close();
      original.close();
    }
    assert.throws(() => close(copy), (e: unknown) => e instanceof SysError && e.code === "EBADF");
    assert.throws(() => EventFd.fromFd(-1), (e: unknown) => e instanceof SysError);
  });
});
