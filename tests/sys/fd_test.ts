import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  close,
  dup,
  F_GETFD,
  F_GETFL,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  fcntl,
  FD_CLOEXEC,
  fdatasync,
  FIOCLEX,
  FIONCLEX,
  FIONREAD,
  fsync,
  ftruncate,
  ioctl,
  IOV_MAX,
  mappedAddressOf,
  memfd_create,
  memfdCreate,
  mmapFd,
  O_CLOEXEC,
  O_CREAT,
  O_NONBLOCK,
  O_RDONLY,
  O_RDWR,
  open,
  pread,
  preadv,
  pwrite,
  pwritev,
  read,
  readv,
  recvDatagram,
  sendmsg,
  setCloexec,
  setNonBlocking,
  SOCK_DGRAM,
  socketpair,
  SysError,
  write,
  writev,
} from "../../sys/mod.ts";

let dir = "";
before(() => {
  dir = mkdtempSync(join(tmpdir(), "virtio-ts-sys-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function sysCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof SysError) return e.code;
    throw e;
  }
  return "OK";
}

// Whether this file system can punch holes, decided once so the test can be skipped with a
// reason rather than failing.
function probePunchHole(): string | false {
  const probeDir = mkdtempSync(join(tmpdir(), "virtio-ts-probe-"));
  try {
    const fd = open(join(probeDir, "probe"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      ftruncate(fd, 65536);
      const code = sysCode(() =>
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
      );
      return code === "OK" ? false : `the temporary file system says ${code}`;
    } finally {
      close(fd);
    }
  } finally {
    rmSync(probeDir, { recursive: true, force: true });
  }
}
const punchSkip = probePunchHole();

describe("open() and close()", () => {
  it("opens, creates and closes files", () => {
    const fd = open(join(dir, "a"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    assert.ok(fd >= 0);
    assert.equal(statSync(join(dir, "a")).mode & 0o777, 0o600);
    close(fd);
    assert.equal(sysCode(() => close(fd)), "EBADF");
  });

  it("reports ENOENT with the call name", () => {
    assert.throws(() => open(join(dir, "missing"), O_RDONLY), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.call, "open");
      assert.equal(e.code, "ENOENT");
      return true;
    });
  });

  it("rejects paths with a NUL character", () => {
    assert.throws(() => open("/dev/null\0x", O_RDONLY), TypeError);
  });
});

describe("preadv() and pwritev()", () => {
  function withMemfd(size: number, fn: (fd: number, mem: Uint8Array) => void): void {
    const fd = memfdCreate("vec");
    ftruncate(fd, size);
    const m = mmapFd(fd, size);
    try {
      fn(fd, new Uint8Array(m.buffer));
    } finally {
      m.unmap();
      close(fd);
    }
  }

  it("move scattered views of mapped memory as one iovec table, in order", () => {
    const file = open(join(dir, "vec"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      withMemfd(65536, (_fd, mem) => {
        for (let i = 0; i < 4096; i++) mem[i] = (i * 7) & 0xff;
        // Three views out of order in memory, with odd lengths.
        const parts = [mem.subarray(3000, 4000), mem.subarray(17, 529), mem.subarray(1000, 1001)];
        assert.notEqual(mappedAddressOf(parts[0]), undefined);
        assert.equal(pwritev(file, parts, 100), 1513);
        const back = new Uint8Array(1513);
        assert.equal(pread(file, back, 100), 1513);
        const expected = new Uint8Array([...parts[0], ...parts[1], ...parts[2]]);
        assert.deepEqual(back, expected);
        // Read into other scattered views of the mapping.
        const into = [mem.subarray(40000, 40500), mem.subarray(20000, 21013)];
        assert.equal(preadv(file, into, 100), 1513);
        assert.deepEqual(new Uint8Array([...into[0], ...into[1]]), expected);
        // At the end of the file the count is short and the rest untouched.
        mem.fill(0xee, 50000, 50100);
        const tail = [mem.subarray(50000, 50010), mem.subarray(50050, 50100)];
        assert.equal(preadv(file, tail, 100 + 1513 - 20), 20);
        assert.deepEqual([...tail[0]], [...expected.subarray(1493, 1503)]);
        assert.deepEqual([...tail[1].subarray(0, 10)], [...expected.subarray(1503, 1513)]);
        assert.equal(tail[1][10], 0xee);
      });
    } finally {
      close(file);
    }
  });

  it("fall back to one call per view for ordinary buffers, with the same result", () => {
    const file = open(join(dir, "vec2"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      const a = new Uint8Array([1, 2, 3]), b = new Uint8Array(600).fill(4);
      assert.equal(mappedAddressOf(a), undefined);
      assert.equal(pwritev(file, [a, b], 10), 603);
      const x = new Uint8Array(2), y = new Uint8Array(700);
      assert.equal(preadv(file, [x, y], 10), 603, "short at the end of the file");
      assert.deepEqual([...x], [1, 2]);
      assert.deepEqual([...y.subarray(0, 3)], [3, 4, 4]);
      assert.equal(y[601], 0);
      assert.equal(preadv(file, [], 0), 0);
      assert.equal(preadv(file, [x], 613), 0, "0 past the end");
    } finally {
      close(file);
    }
  });

  it("mix mapped and ordinary views, and take more views than IOV_MAX", () => {
    const file = open(join(dir, "vec3"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      withMemfd(8192, (_fd, mem) => {
        mem.fill(5, 0, 8);
        const mixed = [mem.subarray(0, 8), new Uint8Array(8).fill(6)];
        assert.equal(pwritev(file, mixed, 0), 16);
        const many = Array.from({ length: IOV_MAX + 1 }, (_, i) => mem.subarray(i * 4, i * 4 + 4));
        assert.equal(pwritev(file, many, 16), 4 * (IOV_MAX + 1));
        const back = new Uint8Array(16 + 4 * (IOV_MAX + 1));
        assert.equal(pread(file, back, 0), back.length);
        assert.deepEqual([...back.subarray(0, 16)], [
          5,
          5,
          5,
          5,
          5,
          5,
          5,
          5,
          6,
          6,
          6,
          6,
          6,
          6,
          6,
          6,
        ]);
        assert.deepEqual(back.subarray(16), mem.subarray(0, 4 * (IOV_MAX + 1)));
      });
    } finally {
      close(file);
    }
  });

  it("forget a mapping's address once it is unmapped", () => {
    const fd = memfdCreate("gone");
    ftruncate(fd, 4096);
    const m = mmapFd(fd, 4096);
    const view = new Uint8Array(m.buffer, 100, 10);
    assert.equal(mappedAddressOf(view), Number(m.address) + 100);
    m.unmap();
    close(fd);
    assert.equal(mappedAddressOf(new Uint8Array(m.buffer)), undefined);
  });

  it("reject bad offsets and closed descriptors", () => {
    assert.throws(() => preadv(0, [new Uint8Array(1)], -1), RangeError);
    assert.equal(sysCode(() => pwritev(-1, [new Uint8Array(1), new Uint8Array(1)], 0)), "EBADF");
  });
});

describe("pread() and pwrite()", () => {
  it("write and read back at offsets without moving the file position", () => {
    const fd = open(join(dir, "rw"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      assert.equal(pwrite(fd, new Uint8Array([1, 2, 3, 4]), 4096), 4);
      assert.equal(statSync(join(dir, "rw")).size, 4100);
      const buf = new Uint8Array(6);
      assert.equal(pread(fd, buf, 4094), 6);
      assert.deepEqual([...buf], [0, 0, 1, 2, 3, 4]);
      // Into a subarray: the call sees the view's own first byte.
      const big = new Uint8Array(16).fill(9);
      assert.equal(pread(fd, big.subarray(8, 10), 4097), 2);
      assert.deepEqual([...big.subarray(6, 12)], [9, 9, 2, 3, 9, 9]);
      assert.equal(pread(fd, buf, 1 << 20), 0, "0 past the end");
      // The file position is still 0: read() sees the start of the file.
      assert.equal(read(fd, buf), 6);
      assert.deepEqual([...buf], [0, 0, 0, 0, 0, 0]);
      fdatasync(fd);
      fsync(fd);
    } finally {
      close(fd);
    }
  });

  it("rejects negative offsets", () => {
    assert.throws(() => pread(0, new Uint8Array(1), -1), RangeError);
    assert.throws(() => pwrite(0, new Uint8Array(1), 1.5), RangeError);
  });

  it("fail with EBADF on a closed descriptor", () => {
    assert.equal(sysCode(() => pread(-1, new Uint8Array(1), 0)), "EBADF");
    assert.equal(sysCode(() => pwrite(-1, new Uint8Array(1), 0)), "EBADF");
    assert.equal(sysCode(() => fdatasync(-1)), "EBADF");
  });

  it("write() appends at the file position", () => {
    const fd = open(join(dir, "w"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      assert.equal(write(fd, new Uint8Array([7, 8])), 2);
      assert.equal(write(fd, new Uint8Array([9])), 1);
      const buf = new Uint8Array(3);
      assert.equal(pread(fd, buf, 0), 3);
      assert.deepEqual([...buf], [7, 8, 9]);
    } finally {
      close(fd);
    }
  });
});

describe("fallocate()", () => {
  it("punches a hole that reads back as zeros", { skip: punchSkip }, () => {
    const path = join(dir, "holes");
    const fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      const size = 256 * 1024;
      assert.equal(pwrite(fd, new Uint8Array(size).fill(0xaa), 0), size);
      fdatasync(fd);
      const before = statSync(path).blocks;
      fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 64 * 1024, 128 * 1024);
      const after = statSync(path).blocks;
      assert.ok(after < before, `blocks ${before} -> ${after}`);
      assert.equal(statSync(path).size, size, "KEEP_SIZE keeps the size");
      const buf = new Uint8Array(4);
      pread(fd, buf, 64 * 1024 - 2);
      assert.deepEqual([...buf], [0xaa, 0xaa, 0, 0]);
      pread(fd, buf, 192 * 1024 - 2);
      assert.deepEqual([...buf], [0, 0, 0xaa, 0xaa]);
    } finally {
      close(fd);
    }
  });

  it("zeroes a range or reports EOPNOTSUPP", { skip: punchSkip }, () => {
    const fd = open(join(dir, "zero"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      pwrite(fd, new Uint8Array(8192).fill(1), 0);
      const code = sysCode(() => fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, 4096));
      if (code === "OK") {
        const buf = new Uint8Array(2);
        pread(fd, buf, 4095);
        assert.deepEqual([...buf], [0, 1]);
      } else {
        assert.equal(code, "EOPNOTSUPP");
      }
    } finally {
      close(fd);
    }
  });

  it("allocates space with mode 0 and validates arguments", () => {
    const path = join(dir, "alloc");
    const fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      const code = sysCode(() => fallocate(fd, 0, 0, 65536));
      if (code === "OK") assert.equal(statSync(path).size, 65536);
      else assert.equal(code, "EOPNOTSUPP");
      assert.throws(() => fallocate(fd, 0, -1, 1), RangeError);
      assert.equal(sysCode(() => fallocate(fd, 0, 0, 0)), "EINVAL");
    } finally {
      close(fd);
    }
  });
});

describe("ftruncate() and memfdCreate()", () => {
  it("sizes a memfd", () => {
    const fd = memfdCreate("sized");
    try {
      ftruncate(fd, 12345);
      // pread at the end sees 0 bytes; just before it, 1.
      assert.equal(pread(fd, new Uint8Array(8), 12345), 0);
      assert.equal(pread(fd, new Uint8Array(8), 12344), 1);
      assert.notEqual(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0, "MFD_CLOEXEC by default");
    } finally {
      close(fd);
    }
    const other = memfd_create("alias", 0);
    assert.equal(fcntl(other, F_GETFD) & FD_CLOEXEC, 0);
    close(other);
  });
});

describe("ioctl()", () => {
  it("FIONREAD writes the byte count of a socket into a buffer", () => {
    const [a, b] = socketpair();
    try {
      sendmsg(a, new Uint8Array(37));
      const count = new Uint8Array(4);
      assert.equal(ioctl(b, FIONREAD, count), 0);
      assert.equal(new DataView(count.buffer).getInt32(0, true), 37);
    } finally {
      close(a);
      close(b);
    }
  });

  it("FIOCLEX and FIONCLEX toggle close-on-exec (bigint request too)", () => {
    const fd = memfdCreate("cloexec", 0);
    try {
      assert.equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
      ioctl(fd, FIOCLEX);
      assert.equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
      ioctl(fd, BigInt(FIONCLEX), 0n);
      assert.equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    } finally {
      close(fd);
    }
  });

  it("reports ENOTTY for a request the file does not know", () => {
    const fd = memfdCreate("notty");
    try {
      assert.throws(() => ioctl(fd, 0x5401, new Uint8Array(64)), (e: unknown) => {
        assert.ok(e instanceof SysError);
        assert.equal(e.call, "ioctl");
        assert.equal(e.code, "ENOTTY");
        return true;
      });
    } finally {
      close(fd);
    }
  });
});

describe("fcntl helpers", () => {
  it("setNonBlocking(), setCloexec() and dup()", () => {
    const fd = memfdCreate("flags", 0);
    try {
      setNonBlocking(fd);
      assert.notEqual(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
      setNonBlocking(fd, false);
      assert.equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
      setCloexec(fd);
      assert.equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
      setCloexec(fd, false);
      assert.equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
      const copy = dup(fd);
      assert.notEqual(copy, fd);
      assert.equal(fcntl(copy, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
      pwrite(fd, new Uint8Array([5]), 0);
      const buf = new Uint8Array(1);
      pread(copy, buf, 0);
      assert.equal(buf[0], 5);
      close(copy);
    } finally {
      close(fd);
    }
  });
});

describe("readv() and writev()", () => {
  it("move one datagram between mapped and ordinary views in one call each", () => {
    const [a, b] = socketpair(1, SOCK_DGRAM);
    const fd = memfdCreate("iov");
    ftruncate(fd, 4096);
    const m = mmapFd(fd, 4096);
    try {
      const mapped = new Uint8Array(m.buffer, 100, 6);
      mapped.set([3, 4, 5, 6, 7, 8]);
      // Header from an ordinary buffer, body from mapped memory: one datagram of 8 bytes.
      assert.equal(writev(a, [new Uint8Array([1, 2]), mapped]), 8);
      const head = new Uint8Array(3);
      const body = new Uint8Array(m.buffer, 2000, 16);
      assert.equal(readv(b, [head, body]), 8);
      assert.deepEqual([...head], [1, 2, 3]);
      assert.deepEqual([...body.subarray(0, 5)], [4, 5, 6, 7, 8]);
      // Nothing left: -1, not a throw, on a non-blocking descriptor.
      setNonBlocking(b);
      assert.equal(readv(b, [head]), -1);
      assert.equal(recvDatagram(b, head), -1);
    } finally {
      m.unmap();
      close(fd);
      close(a);
      close(b);
    }
  });

  it("keep one call with more views than IOV_MAX", () => {
    const [a, b] = socketpair(1, SOCK_DGRAM);
    try {
      const parts = Array.from({ length: IOV_MAX + 5 }, (_, i) => new Uint8Array([i & 0xff]));
      assert.equal(writev(a, parts), IOV_MAX + 5);
      const outs = Array.from({ length: IOV_MAX + 5 }, () => new Uint8Array(1));
      assert.equal(readv(b, outs), IOV_MAX + 5);
      assert.equal(outs[IOV_MAX + 4][0], (IOV_MAX + 4) & 0xff);
    } finally {
      close(a);
      close(b);
    }
  });

  it("report a full non-blocking datagram socket as -1 and other failures as SysError", () => {
    const [a, b] = socketpair(1, SOCK_DGRAM);
    setNonBlocking(a);
    let n = 0;
    const big = new Uint8Array(60000);
    while (writev(a, [big]) > 0) if (++n > 10000) break;
    assert.ok(n > 0 && n < 10000, `queued ${n} datagrams before EAGAIN`);
    close(b);
    assert.equal(sysCode(() => writev(a, [big])), "ECONNREFUSED");
    close(a);
    assert.equal(sysCode(() => readv(a, [big])), "EBADF");
  });
});
