// sendv / recvv: vectored socket I/O straight from and into mapped memory (one iovec table),
// and the same results one buffer at a time for memory that is not mapped; socket options.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  close,
  getSocketOption,
  mmapAnonymous,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  recvv,
  sendv,
  setSocketOption,
  SO_SNDBUF,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  socketpair,
  SOL_SOCKET,
  SysError,
} from "../../sys/mod.ts";

function pair(): [number, number] {
  return socketpair(1, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK);
}

for (const mapped of [true, false]) {
  describe(`sendv / recvv (${mapped ? "mapped memory: one call" : "plain buffers: per buffer"})`, () => {
    const memory = () => {
      if (!mapped) return { bytes: new Uint8Array(1 << 20), unmap() {} };
      const m = mmapAnonymous(1 << 20);
      return { bytes: new Uint8Array(m.buffer), unmap: () => m.unmap() };
    };

    it("sends several buffers as one stream and receives it into several", () => {
      const mem = memory();
      const [a, b] = pair();
      try {
        const src = mem.bytes;
        for (let i = 0; i < 300; i++) src[i] = i & 0xff;
        const n = sendv(a, [src.subarray(0, 10), src.subarray(10, 10), src.subarray(10, 300)]);
        assert.equal(n, 300);
        const dst = mem.bytes.subarray(4096, 4096 + 400);
        const got = recvv(b, [dst.subarray(0, 100), dst.subarray(100, 400)], MSG_DONTWAIT);
        assert.equal(got, 300);
        assert.deepEqual(dst.subarray(0, 300), src.subarray(0, 300));
        // Nothing more: -1, not an exception.
        assert.equal(recvv(b, [dst.subarray(0, 10), dst.subarray(10, 20)], MSG_DONTWAIT), -1);
        close(a);
        // End of stream: 0.
        assert.equal(recvv(b, [dst.subarray(0, 10), dst.subarray(10, 20)], MSG_DONTWAIT), 0);
        close(b);
      } finally {
        mem.unmap();
      }
    });

    it("takes what fits into a full socket, then 0 (not EAGAIN)", () => {
      const mem = memory();
      const [a, b] = pair();
      try {
        const big = mem.bytes.subarray(0, 512 << 10);
        let total = 0;
        for (;;) {
          const n = sendv(a, [big.subarray(0, 256 << 10), big.subarray(256 << 10)], MSG_DONTWAIT);
          if (n === 0) break;
          total += n;
        }
        assert.ok(total > 0 && total < 8 << 20, `${total} bytes fit`);
      } finally {
        close(a);
        close(b);
        mem.unmap();
      }
    });

    it("throws EPIPE, not SIGPIPE, when the peer is gone", () => {
      const mem = memory();
      const [a, b] = pair();
      close(b);
      try {
        assert.throws(
          () => sendv(a, [mem.bytes.subarray(0, 1), mem.bytes.subarray(1, 2)], MSG_NOSIGNAL),
          (e: unknown) => e instanceof SysError && e.errno === 32,
        );
      } finally {
        close(a);
        mem.unmap();
      }
    });
  });
}

describe("socket options", () => {
  it("SO_SNDBUF can be raised (the kernel doubles it, up to wmem_max) and read back", () => {
    const [a, b] = pair();
    try {
      const before = getSocketOption(a, SOL_SOCKET, SO_SNDBUF);
      assert.ok(before > 0);
      setSocketOption(a, SOL_SOCKET, SO_SNDBUF, 4096);
      // At least the doubled request (Linux keeps a minimum of 4608).
      assert.ok(getSocketOption(a, SOL_SOCKET, SO_SNDBUF) >= 4608);
      assert.throws(() => setSocketOption(-1, SOL_SOCKET, SO_SNDBUF, 1), SysError);
    } finally {
      close(a);
      close(b);
    }
  });
});
