import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  accept,
  AF_UNIX,
  bind,
  close,
  connect,
  EventFd,
  F_GETFD,
  fcntl,
  FD_CLOEXEC,
  FdWatcher,
  ftruncate,
  listen,
  memfdCreate,
  mmapFd,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  POLLIN,
  recvExact,
  recvmsg,
  sendAll,
  sendmsg,
  setNonBlocking,
  SHUT_WR,
  shutdown,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  SOCK_STREAM,
  socket,
  socketpair,
  SysError,
  waitReady,
} from "../../sys/mod.ts";

let dir = "";
before(() => {
  dir = mkdtempSync(join(tmpdir(), "virtio-ts-sock-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function code(e: unknown): string {
  return e instanceof SysError ? e.code : String(e);
}

describe("socketpair() with sendmsg()/recvmsg()", () => {
  it("moves bytes both ways", () => {
    const [a, b] = socketpair();
    try {
      assert.equal(sendmsg(a, new Uint8Array([1, 2, 3])), 3);
      const buf = new Uint8Array(8);
      const got = recvmsg(b, buf);
      assert.deepEqual(got, { bytes: 3, fds: [], fdsTruncated: false });
      assert.deepEqual([...buf.subarray(0, 3)], [1, 2, 3]);
      sendmsg(b, new Uint8Array([9]));
      assert.equal(recvmsg(a, buf).bytes, 1);
      assert.equal(buf[0], 9);
    } finally {
      close(a);
      close(b);
    }
  });

  it("passes a memfd and an eventfd that work on the receiving side (SCM_RIGHTS)", async () => {
    const [a, b] = socketpair();
    const memfd = memfdCreate("passed");
    ftruncate(memfd, 4096);
    const kick = new EventFd();
    try {
      assert.equal(sendmsg(a, new Uint8Array([0x42]), [memfd, kick.fd]), 1);
      const buf = new Uint8Array(4);
      const got = recvmsg(b, buf, 4);
      assert.equal(got.bytes, 1);
      assert.equal(buf[0], 0x42);
      assert.equal(got.fdsTruncated, false);
      assert.equal(got.fds.length, 2);
      const [memCopy, kickCopy] = got.fds;
      assert.notEqual(memCopy, memfd);
      assert.notEqual(kickCopy, kick.fd);
      for (const fd of got.fds) {
        assert.equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC, "MSG_CMSG_CLOEXEC");
      }

      // The received memfd maps the same memory.
      const mine = mmapFd(memfd, 4096);
      const theirs = mmapFd(memCopy, 4096);
      new DataView(mine.buffer).setUint32(128, 0xa5a5a5a5, true);
      assert.equal(new DataView(theirs.buffer).getUint32(128, true), 0xa5a5a5a5);
      mine.unmap();
      theirs.unmap();

      // The received eventfd signals the original, both ways.
      const remote = EventFd.fromFd(kickCopy);
      remote.write(6n);
      assert.equal(kick.read(), 6n);
      setTimeout(() => kick.write(2n), 10);
      assert.equal(await remote.wait(), 2n);
      remote.close();
      close(memCopy);
    } finally {
      kick.close();
      close(memfd);
      close(a);
      close(b);
    }
  });

  it("reports MSG_CTRUNC as fdsTruncated when more descriptors come than allowed", () => {
    const [a, b] = socketpair();
    const fds = [memfdCreate("x"), memfdCreate("y"), memfdCreate("z")];
    try {
      sendmsg(a, new Uint8Array([1]), fds);
      const got = recvmsg(b, new Uint8Array(4), 1);
      assert.equal(got.bytes, 1);
      assert.equal(got.fdsTruncated, true);
      assert.ok(got.fds.length <= 1);
      for (const fd of got.fds) close(fd);
      // Descriptors sent when none are accepted are all dropped.
      sendmsg(a, new Uint8Array([2]), fds);
      const none = recvmsg(b, new Uint8Array(4));
      assert.deepEqual(none, { bytes: 1, fds: [], fdsTruncated: true });
      // MSG_CMSG_CLOEXEC alone in msg_flags is not truncation.
      sendmsg(a, new Uint8Array([3]), [fds[0]]);
      const one = recvmsg(b, new Uint8Array(4), 1, MSG_CMSG_CLOEXEC);
      assert.equal(one.fdsTruncated, false);
      assert.equal(one.fds.length, 1);
      close(one.fds[0]);
    } finally {
      for (const fd of fds) close(fd);
      close(a);
      close(b);
    }
  });

  it("passes many descriptors in one message", () => {
    const [a, b] = socketpair();
    const sent = Array.from({ length: 40 }, () => new EventFd());
    try {
      sendmsg(a, new Uint8Array([7]), sent.map((e) => e.fd));
      const got = recvmsg(b, new Uint8Array(1), 64);
      assert.equal(got.fds.length, 40);
      got.fds.forEach((fd, i) => {
        const copy = EventFd.fromFd(fd);
        copy.write(BigInt(i + 1));
        assert.equal(sent[i].read(), BigInt(i + 1));
        copy.close();
      });
    } finally {
      for (const e of sent) e.close();
      close(a);
      close(b);
    }
  });

  it("recvmsg() returns 0 bytes when the peer closed; sendmsg() gets EPIPE, not SIGPIPE", () => {
    const [a, b] = socketpair();
    close(a);
    assert.equal(recvmsg(b, new Uint8Array(4)).bytes, 0);
    assert.throws(() => sendmsg(b, new Uint8Array([1])), (e: unknown) => code(e) === "EPIPE");
    close(b);
  });

  it("non-blocking sockets fail with EAGAIN, and waitReady() waits for data", async () => {
    const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK);
    try {
      assert.throws(() => recvmsg(b, new Uint8Array(4)), (e: unknown) => {
        assert.ok(e instanceof SysError);
        assert.equal(e.call, "recvmsg");
        assert.equal(e.code, "EAGAIN");
        return true;
      });
      setTimeout(() => sendmsg(a, new Uint8Array([5, 6])), 15);
      assert.equal(await waitReady(b, POLLIN), POLLIN);
      assert.equal(recvmsg(b, new Uint8Array(4)).bytes, 2);
    } finally {
      close(a);
      close(b);
    }
  });

  it("MSG_DONTWAIT makes one call non-blocking", () => {
    const [a, b] = socketpair();
    try {
      assert.throws(() => recvmsg(b, new Uint8Array(4), 0, MSG_DONTWAIT), /EAGAIN/);
    } finally {
      close(a);
      close(b);
    }
  });

  it("keeps message boundaries on SOCK_SEQPACKET", () => {
    const [a, b] = socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC);
    try {
      sendmsg(a, new Uint8Array([1, 2]));
      sendmsg(a, new Uint8Array([3]));
      assert.equal(recvmsg(b, new Uint8Array(8)).bytes, 2);
      assert.equal(recvmsg(b, new Uint8Array(8)).bytes, 1);
    } finally {
      close(a);
      close(b);
    }
  });

  it("rejects descriptors without data and too many descriptors", () => {
    assert.throws(() => sendmsg(0, new Uint8Array(0), [1]), RangeError);
    assert.throws(() => sendmsg(0, new Uint8Array(1), new Array(254).fill(0)), RangeError);
    assert.throws(() => recvmsg(0, new Uint8Array(1), -1), RangeError);
  });
});

describe("recvExact() and sendAll()", () => {
  it("gathers a message sent in pieces, with its descriptors", () => {
    const [a, b] = socketpair();
    const efd = new EventFd();
    try {
      sendmsg(a, new Uint8Array([1, 2, 3, 4]), [efd.fd]);
      sendmsg(a, new Uint8Array([5, 6]));
      // Well within the socket buffer, so the blocking sendAll() returns before anyone reads.
      sendAll(a, new Uint8Array(50_000).fill(7));
      const header = new Uint8Array(6);
      const got = recvExact(b, header, 1);
      assert.equal(got.bytes, 6);
      assert.deepEqual([...header], [1, 2, 3, 4, 5, 6]);
      assert.equal(got.fds.length, 1);
      close(got.fds[0]);
      const body = new Uint8Array(50_000);
      assert.equal(recvExact(b, body).bytes, 50_000);
      assert.ok(body.every((x) => x === 7));
    } finally {
      efd.close();
      close(a);
      close(b);
    }
  });

  it("returns fewer bytes when the peer closes first", () => {
    const [a, b] = socketpair();
    sendmsg(a, new Uint8Array([1, 2]));
    shutdown(a, SHUT_WR);
    assert.equal(recvExact(b, new Uint8Array(8)).bytes, 2);
    assert.equal(recvExact(b, new Uint8Array(8)).bytes, 0);
    close(a);
    close(b);
  });

  it("throws and closes what it got when too many descriptors arrive", () => {
    const [a, b] = socketpair();
    const e1 = new EventFd();
    try {
      sendmsg(a, new Uint8Array([1]), [e1.fd, e1.fd]);
      assert.throws(() => recvExact(b, new Uint8Array(1), 1), RangeError);
    } finally {
      e1.close();
      close(a);
      close(b);
    }
  });
});

describe("bind(), listen(), accept(), connect()", () => {
  it("connects over a path in a temporary directory and passes an fd", async () => {
    const path = join(dir, "vhost.sock");
    const server = socket();
    bind(server, path);
    listen(server);
    setNonBlocking(server);
    assert.throws(() => accept(server), (e: unknown) => code(e) === "EAGAIN");

    const client = socket();
    const watcher = new FdWatcher();
    try {
      const accepted = new Promise<number>((resolve) => {
        const watch = watcher.watch(server, () => {
          watch.close();
          resolve(accept(server));
        });
      });
      connect(client, path);
      const conn = await accepted;
      assert.equal(fcntl(conn, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
      const efd = new EventFd();
      sendmsg(client, new Uint8Array([0xee]), [efd.fd]);
      const got = recvmsg(conn, new Uint8Array(1), 1);
      assert.equal(got.fds.length, 1);
      const remote = EventFd.fromFd(got.fds[0]);
      remote.write();
      assert.equal(efd.read(), 1n);
      remote.close();
      efd.close();
      close(conn);
    } finally {
      await watcher.stop();
      close(client);
      close(server);
    }
  });

  it("reports EADDRINUSE, ENOENT and ECONNREFUSED", () => {
    const path = join(dir, "busy.sock");
    const s1 = socket();
    bind(s1, path);
    const s2 = socket();
    assert.throws(() => bind(s2, path), (e: unknown) => code(e) === "EADDRINUSE");
    assert.throws(() => connect(s2, join(dir, "nope.sock")), (e: unknown) => code(e) === "ENOENT");
    // Bound but not listening.
    assert.throws(() => connect(s2, path), (e: unknown) => code(e) === "ECONNREFUSED");
    close(s1);
    close(s2);
  });

  it("supports the abstract namespace and rejects over-long paths", () => {
    const name = `\0virtio-ts-test-${Math.random()}`;
    const server = socket();
    bind(server, name);
    listen(server, 1);
    const client = socket();
    connect(client, name);
    const conn = accept(server);
    sendmsg(client, new Uint8Array([1]));
    assert.equal(recvmsg(conn, new Uint8Array(1)).bytes, 1);
    for (const fd of [conn, client, server]) close(fd);
    assert.throws(() => bind(0, "/" + "x".repeat(107)), RangeError);
  });
});
