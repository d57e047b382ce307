// The virtio-fs request parser, by tables: guest bytes in, a typed request or a typed
// refusal (with the errno to answer) out.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { SplitQueue } from "../../queue/split.ts";
import { DriverQueue } from "../../testing/queue_driver.ts";
import { Errno } from "../../sys/mod.ts";
import {
  FUSE_ACCESS,
  FUSE_BATCH_FORGET,
  FUSE_BMAP,
  FUSE_COPY_FILE_RANGE,
  FUSE_CREATE,
  FUSE_DESTROY,
  FUSE_FALLOCATE,
  FUSE_FLUSH,
  FUSE_FORGET,
  FUSE_FSYNC,
  FUSE_FSYNCDIR,
  FUSE_GETATTR,
  FUSE_GETLK,
  FUSE_GETXATTR,
  FUSE_INIT,
  FUSE_INIT_BSWAP_RESERVED,
  FUSE_INIT_EXT,
  FUSE_INTERRUPT,
  FUSE_IOCTL,
  FUSE_LINK,
  FUSE_LISTXATTR,
  FUSE_LOOKUP,
  FUSE_LSEEK,
  FUSE_MAX_ARGS,
  FUSE_MKDIR,
  FUSE_MKNOD,
  FUSE_OPEN,
  FUSE_OPENDIR,
  FUSE_READ,
  FUSE_READDIR,
  FUSE_READDIRPLUS,
  FUSE_READLINK,
  FUSE_RELEASE,
  FUSE_RELEASEDIR,
  FUSE_REMOVEMAPPING,
  FUSE_REMOVEXATTR,
  FUSE_RENAME,
  FUSE_RENAME2,
  FUSE_RMDIR,
  FUSE_SETATTR,
  FUSE_SETLK,
  FUSE_SETLKW,
  FUSE_SETUPMAPPING,
  FUSE_SETXATTR,
  FUSE_STATFS,
  FUSE_SYMLINK,
  FUSE_SYNCFS,
  FUSE_TMPFILE,
  FUSE_UNLINK,
  FUSE_WRITE,
  type FuseHeaderFields,
  type FuseLimits,
  fuseRequest,
  type ParsedFuseRequest,
  parseFuseRequest,
} from "../../devices/fs.ts";

const LIMITS: FuseLimits = { maxRead: 1 << 20, maxWrite: 1 << 20, setxattrExt: false };
const mem = GuestMemory.create(4 << 20);
const driver = new DriverQueue(mem, { size: 64 });
const queue = new SplitQueue(64);
driver.program(queue);

/** Put `readable` buffers then writable ones on the queue, pop the chain and parse it. */
function parse(
  readable: Uint8Array[],
  writable: number[] = [8192],
  limits: FuseLimits = LIMITS,
): ParsedFuseRequest {
  driver.addChain([
    ...readable.map((b) => ({ readable: b })),
    ...writable.map((n) => ({ writable: n })),
  ]);
  const chain = queue.pop(mem)!;
  const r = parseFuseRequest(chain, limits);
  queue.addUsed(mem, chain.head, 0);
  driver.takeUsed();
  return r;
}

const z = (s: string) => new TextEncoder().encode(s + "\0");
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
function le(size: number, fill: (v: DataView) => void): Uint8Array {
  const b = new Uint8Array(size);
  fill(new DataView(b.buffer));
  return b;
}
const u64s = (...values: (number | bigint)[]) =>
  le(8 * values.length, (v) => values.forEach((x, i) => v.setBigUint64(8 * i, BigInt(x), true)));
const u32s = (...values: number[]) =>
  le(4 * values.length, (v) => values.forEach((x, i) => v.setUint32(4 * i, x >>> 0, true)));
const cat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
const req = (op: number, h: FuseHeaderFields, ...parts: Uint8Array[]) =>
  fuseRequest(op, h, ...parts);

function ok(r: ParsedFuseRequest): Extract<ParsedFuseRequest, { ok: true }> {
  if (!r.ok) assert.fail(`refused: ${r.reason}`);
  return r;
}

function refused(r: ParsedFuseRequest, error: number, reply = true): void {
  assert.equal(r.ok, false, "should be refused");
  if (r.ok) return;
  assert.equal(r.error, error, r.reason);
  assert.equal(r.reply, reply, `reply for ${r.reason}`);
}

describe("parseFuseRequest: well-formed requests", () => {
  const rd = (fh: number, off: bigint | number, size: number, flags = 0) =>
    cat(u64s(fh, off), u32s(size, flags), u64s(0), u32s(0o2, 0));
  // deno-lint-ignore no-explicit-any
  const cases: { name: string; bytes: Uint8Array[]; writable?: number[]; check(r: any): void }[] = [
    {
      name: "INIT with INIT_EXT carries flags2",
      bytes: [
        req(
          FUSE_INIT,
          { nodeid: 0, unique: 5n },
          u32s(7, 38, 65536, FUSE_INIT_EXT | 1, 3),
          new Uint8Array(44),
        ),
      ],
      check: (r) => {
        assert.deepEqual([r.major, r.minor, r.maxReadahead, r.flags, r.flags2], [
          7,
          38,
          65536,
          FUSE_INIT_EXT | 1,
          3,
        ]);
        assert.equal(r.unique, 5n);
      },
    },
    {
      name: "INIT of an old driver (16 bytes) has no flags2",
      bytes: [req(FUSE_INIT, { nodeid: 0 }, u32s(7, 27, 0, FUSE_INIT_EXT))],
      check: (r) => assert.equal(r.flags2, 0),
    },
    {
      name: "LOOKUP keeps the name with its NUL; header fields come through",
      bytes: [req(FUSE_LOOKUP, { nodeid: 9, uid: 1000, gid: 100, pid: 42 }, z("file.txt"))],
      check: (r) => {
        assert.equal(dec(r.name), "file.txt\0");
        assert.deepEqual([r.nodeid, r.uid, r.gid, r.pid], [9, 1000, 100, 42]);
      },
    },
    {
      name: "a 255-byte name is the longest allowed",
      bytes: [req(FUSE_MKDIR, {}, u32s(0o755, 0o22), z("n".repeat(255)))],
      check: (r) => assert.equal(r.name.length, 256),
    },
    {
      name: "a name need not be UTF-8",
      bytes: [req(FUSE_UNLINK, {}, new Uint8Array([0xff, 0xfe, 0x80, 0]))],
      check: (r) => assert.deepEqual([...r.name], [0xff, 0xfe, 0x80, 0]),
    },
    {
      name: "FORGET saturates a huge nlookup",
      bytes: [req(FUSE_FORGET, { nodeid: 3 }, u64s(0xffffffffffffffffn))],
      writable: [],
      check: (r) => assert.equal(r.nlookup, Number.MAX_SAFE_INTEGER),
    },
    {
      name: "BATCH_FORGET lists its entries",
      bytes: [req(FUSE_BATCH_FORGET, { nodeid: 0 }, u32s(2, 0), u64s(5, 1, 6, 2))],
      writable: [],
      check: (r) =>
        assert.deepEqual(r.forgets, [{ nodeid: 5, nlookup: 1 }, { nodeid: 6, nlookup: 2 }]),
    },
    {
      name: "GETATTR",
      bytes: [req(FUSE_GETATTR, {}, u32s(1, 0), u64s(77))],
      check: (r) => assert.deepEqual([r.getattrFlags, r.fh], [1, 77]),
    },
    {
      name: "SETATTR fields",
      bytes: [req(
        FUSE_SETATTR,
        {},
        le(88, (v) => {
          v.setUint32(0, 0x3f, true);
          v.setBigUint64(8, 4n, true);
          v.setBigUint64(16, 1234n, true);
          v.setBigInt64(32, -5n, true);
          v.setBigInt64(40, 99n, true);
          v.setUint32(56, 7, true);
          v.setUint32(60, 8, true);
          v.setUint32(68, 0o600, true);
          v.setUint32(76, 1000, true);
          v.setUint32(80, 1001, true);
        }),
      )],
      check: (r) => {
        assert.deepEqual(
          [r.valid, r.fh, r.size, r.atime, r.mtime, r.atimensec, r.mtimensec, r.mode, r.uid, r.gid],
          [0x3f, 4, 1234, -5, 99, 7, 8, 0o600, 1000, 1001],
        );
      },
    },
    {
      name: "READLINK",
      bytes: [req(FUSE_READLINK, {})],
      check: (r) => assert.equal(r.opcode, FUSE_READLINK),
    },
    {
      name: "SYMLINK: the name then an absolute target (targets are any path)",
      bytes: [req(FUSE_SYMLINK, {}, z("ln"), z("/etc/../proc/self/root"))],
      check: (r) => {
        assert.equal(dec(r.name), "ln\0");
        assert.equal(dec(r.target), "/etc/../proc/self/root\0");
      },
    },
    {
      name: "MKNOD",
      bytes: [req(FUSE_MKNOD, {}, u32s(0o10644, 0x801, 0o22, 0), z("fifo"))],
      check: (r) =>
        assert.deepEqual([r.mode, r.rdev, r.umask, dec(r.name)], [0o10644, 0x801, 0o22, "fifo\0"]),
    },
    {
      name: "RENAME has flags 0",
      bytes: [req(FUSE_RENAME, {}, u64s(8), z("a"), z("b"))],
      check: (r) =>
        assert.deepEqual([r.newdir, r.flags, dec(r.oldname), dec(r.newname)], [8, 0, "a\0", "b\0"]),
    },
    {
      name: "RENAME2 carries flags",
      bytes: [req(FUSE_RENAME2, {}, u64s(8), u32s(2, 0), z("a"), z("b"))],
      check: (r) => assert.equal(r.flags, 2),
    },
    {
      name: "LINK",
      bytes: [req(FUSE_LINK, { nodeid: 1 }, u64s(12), z("hard"))],
      check: (r) => assert.deepEqual([r.oldnodeid, dec(r.name)], [12, "hard\0"]),
    },
    {
      name: "OPEN and OPENDIR",
      bytes: [req(FUSE_OPEN, {}, u32s(0o2002, 1))],
      check: (r) => assert.deepEqual([r.flags, r.openFlags], [0o2002, 1]),
    },
    {
      name: "OPENDIR",
      bytes: [req(FUSE_OPENDIR, {}, u32s(0, 0))],
      check: (r) => assert.equal(r.opcode, FUSE_OPENDIR),
    },
    {
      name: "READ: header and arguments in separate buffers, data room exactly size",
      bytes: [req(FUSE_READ, { len: 80 }), rd(3, 4096, 8192)],
      writable: [16, 4096, 4096],
      check: (r) => assert.deepEqual([r.fh, r.offset, r.size], [3, 4096, 8192]),
    },
    {
      name: "READDIR keeps a 64-bit cookie",
      bytes: [req(FUSE_READDIR, {}, rd(3, 0x7fffffffffffffffn, 4096))],
      check: (r) => assert.equal(r.cookie, 0x7fffffffffffffffn),
    },
    {
      name: "READDIRPLUS",
      bytes: [req(FUSE_READDIRPLUS, {}, rd(3, 0, 4096))],
      check: (r) => assert.equal(r.size, 4096),
    },
    {
      name: "RELEASE and RELEASEDIR",
      bytes: [req(FUSE_RELEASE, {}, u64s(4), u32s(2, 1), u64s(0xabcn))],
      check: (r) =>
        assert.deepEqual([r.fh, r.flags, r.releaseFlags, r.lockOwner], [4, 2, 1, 0xabcn]),
    },
    {
      name: "RELEASEDIR",
      bytes: [req(FUSE_RELEASEDIR, {}, u64s(4), u32s(0, 0), u64s(0))],
      check: (r) => assert.equal(r.opcode, FUSE_RELEASEDIR),
    },
    {
      name: "FSYNC",
      bytes: [req(FUSE_FSYNC, {}, u64s(4), u32s(1, 0))],
      check: (r) => assert.equal(r.fsyncFlags, 1),
    },
    {
      name: "FSYNCDIR",
      bytes: [req(FUSE_FSYNCDIR, {}, u64s(4), u32s(0, 0))],
      check: (r) => assert.equal(r.fh, 4),
    },
    {
      name: "SETXATTR with the 8-byte argument",
      bytes: [req(FUSE_SETXATTR, {}, u32s(3, 1), z("user.a"), new Uint8Array([1, 2, 3]))],
      check: (r) => {
        assert.deepEqual([dec(r.name), [...r.value], r.flags], ["user.a\0", [1, 2, 3], 1]);
      },
    },
    {
      name: "GETXATTR",
      bytes: [req(FUSE_GETXATTR, {}, u32s(0, 0), z("user.x"))],
      check: (r) => assert.deepEqual([r.size, dec(r.name)], [0, "user.x\0"]),
    },
    {
      name: "LISTXATTR",
      bytes: [req(FUSE_LISTXATTR, {}, u32s(100, 0))],
      check: (r) => assert.equal(r.size, 100),
    },
    {
      name: "REMOVEXATTR",
      bytes: [req(FUSE_REMOVEXATTR, {}, z("user.x"))],
      check: (r) => assert.equal(dec(r.name), "user.x\0"),
    },
    {
      name: "FLUSH",
      bytes: [req(FUSE_FLUSH, {}, u64s(4), u32s(0, 0), u64s(0x77n))],
      check: (r) => assert.deepEqual([r.fh, r.lockOwner], [4, 0x77n]),
    },
    {
      name: "GETLK / SETLK / SETLKW",
      bytes: [req(FUSE_SETLKW, {}, u64s(4, 0x99, 10, 0x7fffffffffffffffn), u32s(1, 321, 1, 0))],
      check: (r) => {
        assert.deepEqual(
          [r.fh, r.owner, r.start, r.end, r.type, r.lockPid, r.lkFlags],
          [4, 0x99n, 10n, 0x7fffffffffffffffn, 1, 321, 1],
        );
      },
    },
    {
      name: "GETLK",
      bytes: [req(FUSE_GETLK, {}, new Uint8Array(48))],
      check: (r) => assert.equal(r.opcode, FUSE_GETLK),
    },
    {
      name: "SETLK",
      bytes: [req(FUSE_SETLK, {}, new Uint8Array(48))],
      check: (r) => assert.equal(r.opcode, FUSE_SETLK),
    },
    {
      name: "ACCESS",
      bytes: [req(FUSE_ACCESS, {}, u32s(4, 0))],
      check: (r) => assert.equal(r.mask, 4),
    },
    {
      name: "CREATE",
      bytes: [req(FUSE_CREATE, {}, u32s(0o102, 0o644, 0o22, 0), z("new"))],
      check: (r) =>
        assert.deepEqual([r.flags, r.mode, r.umask, dec(r.name)], [0o102, 0o644, 0o22, "new\0"]),
    },
    {
      name: "INTERRUPT",
      bytes: [req(FUSE_INTERRUPT, { nodeid: 0 }, u64s(42))],
      writable: [],
      check: (r) => assert.equal(r.target, 42n),
    },
    {
      name: "DESTROY",
      bytes: [req(FUSE_DESTROY, { nodeid: 0 })],
      check: (r) => assert.equal(r.opcode, FUSE_DESTROY),
    },
    {
      name: "FALLOCATE",
      bytes: [req(FUSE_FALLOCATE, {}, u64s(4, 100, 200), u32s(3, 0))],
      check: (r) => assert.deepEqual([r.fh, r.offset, r.length, r.mode], [4, 100, 200, 3]),
    },
    {
      name: "LSEEK",
      bytes: [req(FUSE_LSEEK, {}, u64s(4, 10), u32s(3, 0))],
      check: (r) => assert.deepEqual([r.fh, r.offset, r.whence], [4, 10, 3]),
    },
    {
      name: "COPY_FILE_RANGE saturates its length",
      bytes: [req(FUSE_COPY_FILE_RANGE, {}, u64s(1, 2, 3, 4, 5, 0xffffffffffffffffn, 0))],
      check: (r) => {
        assert.deepEqual(
          [r.fhIn, r.offIn, r.nodeidOut, r.fhOut, r.offOut, r.len, r.flags],
          [1, 2, 3, 4, 5, Number.MAX_SAFE_INTEGER, 0],
        );
      },
    },
    {
      name: "SETUPMAPPING with fh ~0 (as Linux sends) has fh -1",
      bytes: [
        req(FUSE_SETUPMAPPING, {}, u64s(0xffffffffffffffffn, 0x200000, 0x200000, 3, 0x400000)),
      ],
      check: (r) =>
        assert.deepEqual([r.fh, r.foffset, r.len, r.flags, r.moffset], [
          -1,
          0x200000,
          0x200000,
          3,
          0x400000,
        ]),
    },
    {
      name: "REMOVEMAPPING: a 4-byte count then unaligned 16-byte ranges",
      bytes: [req(FUSE_REMOVEMAPPING, {}, u32s(2), u64s(0, 4096, 8192, 4096))],
      check: (r) =>
        assert.deepEqual(r.ranges, [{ moffset: 0, len: 4096 }, { moffset: 8192, len: 4096 }]),
    },
    {
      name: "SYNCFS",
      bytes: [req(FUSE_SYNCFS, {}, u64s(0))],
      check: (r) => assert.equal(r.opcode, FUSE_SYNCFS),
    },
    {
      name: "STATFS",
      bytes: [req(FUSE_STATFS, {})],
      check: (r) => assert.equal(r.opcode, FUSE_STATFS),
    },
    {
      name: "a header split across two buffers",
      bytes: (() => {
        const b = req(FUSE_RMDIR, { nodeid: 4 }, z("d"));
        return [b.subarray(0, 7), b.subarray(7)];
      })(),
      check: (r) => assert.deepEqual([r.nodeid, dec(r.name)], [4, "d\0"]),
    },
    {
      name: "extension bytes after the arguments are left out",
      bytes: [
        req(FUSE_LOOKUP, { totalExtlen: 1 }, z("x"), new Uint8Array([9, 9, 9, 9, 9, 9, 9, 9])),
      ],
      check: (r) => assert.equal(dec(r.name), "x\0"),
    },
    {
      name: "a node id beyond 2^53 becomes -1 (no such node)",
      bytes: [req(FUSE_GETATTR, { nodeid: 0xffffffffffffffffn }, new Uint8Array(16))],
      check: (r) => assert.equal(r.nodeid, -1),
    },
  ];
  for (const c of cases) {
    it(c.name, () => c.check(ok(parse(c.bytes, c.writable))));
  }

  it("WRITE leaves the reader at the data, which is not copied", () => {
    const data = new Uint8Array(5000).fill(7);
    driver.addChain([
      { readable: req(FUSE_WRITE, { len: 40 + 40 + 5000 }) },
      { readable: cat(u64s(3, 100), u32s(5000, 0), u64s(0), u32s(0, 0)) },
      { readable: data },
      { writable: 24 },
    ]);
    const chain = queue.pop(mem)!;
    const r = ok(parseFuseRequest(chain, LIMITS));
    assert.equal(r.opcode, FUSE_WRITE);
    if (r.opcode !== FUSE_WRITE) return;
    assert.deepEqual([r.fh, r.offset, r.size], [3, 100, 5000]);
    assert.equal(chain.reader.remaining, 5000);
    const views = chain.reader.views(5000);
    assert.ok(views.every((v) => v.every((b) => b === 7)));
    queue.addUsed(mem, chain.head, 0);
    driver.takeUsed();
  });

  it("SETXATTR with FUSE_SETXATTR_EXT has a 16-byte argument", () => {
    const r = ok(parse(
      [req(FUSE_SETXATTR, {}, u32s(2, 2, 1, 0), z("user.b"), new Uint8Array([5, 6]))],
      [16],
      { ...LIMITS, setxattrExt: true },
    ));
    if (r.opcode !== FUSE_SETXATTR) assert.fail();
    assert.deepEqual([r.flags, r.setxattrFlags, dec(r.name), [...r.value]], [2, 1, "user.b\0", [
      5,
      6,
    ]]);
  });
});

describe("parseFuseRequest: refusals", () => {
  const big = 2n ** 53n;
  const cases: {
    name: string;
    bytes: Uint8Array[];
    writable?: number[];
    error: number;
    reply?: boolean;
    limits?: FuseLimits;
  }[] = [
    { name: "fewer bytes than a header", bytes: [new Uint8Array(39)], error: Errno.EIO },
    {
      name: "in.len below the header size",
      bytes: [req(FUSE_STATFS, { len: 39 })],
      error: Errno.EINVAL,
    },
    {
      name: "in.len claiming more than the chain holds",
      bytes: [req(FUSE_LOOKUP, { len: 400 }, z("a"))],
      error: Errno.EINVAL,
    },
    {
      name: "extensions longer than in.len allows",
      bytes: [req(FUSE_STATFS, { totalExtlen: 2 })],
      error: Errno.EINVAL,
    },
    { name: "an unknown opcode", bytes: [req(9999, {})], error: Errno.ENOSYS },
    {
      name: "TMPFILE (not implemented)",
      bytes: [req(FUSE_TMPFILE, {}, new Uint8Array(16))],
      error: Errno.ENOSYS,
    },
    { name: "BMAP", bytes: [req(FUSE_BMAP, {}, new Uint8Array(16))], error: Errno.ENOSYS },
    { name: "IOCTL", bytes: [req(FUSE_IOCTL, {}, new Uint8Array(32))], error: Errno.ENOSYS },
    {
      name: "a big-endian INIT",
      bytes: [req(FUSE_INIT_BSWAP_RESERVED, {}, new Uint8Array(64))],
      error: Errno.ENOSYS,
    },
    {
      name: "arguments shorter than the structure",
      bytes: [req(FUSE_GETATTR, {}, new Uint8Array(8))],
      error: Errno.EINVAL,
    },
    {
      name: "no room for the reply header",
      bytes: [req(FUSE_STATFS, {})],
      writable: [15],
      error: Errno.EINVAL,
      reply: false,
    },
    {
      name: "a replying request with no writable part",
      bytes: [req(FUSE_GETATTR, {}, new Uint8Array(16))],
      writable: [],
      error: Errno.EINVAL,
      reply: false,
    },
    {
      name: "a short FORGET is refused without a reply",
      bytes: [req(FUSE_FORGET, {}, new Uint8Array(4))],
      writable: [],
      error: Errno.EINVAL,
      reply: false,
    },
    {
      name: "a name without NUL",
      bytes: [req(FUSE_LOOKUP, {}, new TextEncoder().encode("abc"))],
      error: Errno.EINVAL,
    },
    { name: "a name with '/'", bytes: [req(FUSE_LOOKUP, {}, z("a/b"))], error: Errno.EINVAL },
    {
      name: "a name that is ../..",
      bytes: [req(FUSE_LOOKUP, {}, z("../.."))],
      error: Errno.EINVAL,
    },
    { name: "a name that is ..", bytes: [req(FUSE_LOOKUP, {}, z(".."))], error: Errno.EINVAL },
    {
      name: "a name that is .",
      bytes: [req(FUSE_MKDIR, {}, u32s(0o755, 0), z("."))],
      error: Errno.EINVAL,
    },
    { name: "an empty name", bytes: [req(FUSE_UNLINK, {}, z(""))], error: Errno.EINVAL },
    {
      name: "a 256-byte name",
      bytes: [req(FUSE_LOOKUP, {}, z("n".repeat(256)))],
      error: Errno.ENAMETOOLONG,
    },
    {
      name: "a rename's second name with '/'",
      bytes: [req(FUSE_RENAME, {}, u64s(1), z("a"), z("../../etc/x"))],
      error: Errno.EINVAL,
    },
    {
      name: "a rename missing its second name",
      bytes: [req(FUSE_RENAME, {}, u64s(1), z("a"))],
      error: Errno.EINVAL,
    },
    {
      name: "an empty symlink target",
      bytes: [req(FUSE_SYMLINK, {}, z("l"), z(""))],
      error: Errno.ENOENT,
    },
    {
      name: "a 4096-byte symlink target",
      bytes: [req(FUSE_SYMLINK, {}, z("l"), z("t".repeat(4096)))],
      error: Errno.ENAMETOOLONG,
    },
    {
      name: "a 256-byte attribute name",
      bytes: [req(FUSE_GETXATTR, {}, u32s(0, 0), z("u".repeat(256)))],
      error: Errno.ERANGE,
    },
    {
      name: "an empty attribute name",
      bytes: [req(FUSE_REMOVEXATTR, {}, z(""))],
      error: Errno.ERANGE,
    },
    {
      name: "a SETXATTR whose size lies",
      bytes: [req(FUSE_SETXATTR, {}, u32s(10, 0), z("user.a"), new Uint8Array(3))],
      error: Errno.EINVAL,
    },
    {
      name: "a SETXATTR value above 64 KiB",
      bytes: [req(FUSE_SETXATTR, {}, u32s(65537, 0), z("user.a"))],
      error: Errno.E2BIG,
    },
    {
      name: "a READ above the negotiated maximum",
      bytes: [req(FUSE_READ, {}, cat(u64s(1, 0), u32s(2 << 20, 0), u64s(0, 0)))],
      writable: [16 + (2 << 20)],
      error: Errno.EINVAL,
    },
    {
      name: "a READ with less room than its size",
      bytes: [req(FUSE_READ, {}, cat(u64s(1, 0), u32s(8192, 0), u64s(0, 0)))],
      writable: [16 + 4096],
      error: Errno.EINVAL,
    },
    {
      name: "a READ offset beyond 2^53",
      bytes: [req(FUSE_READ, {}, cat(u64s(1, big), u32s(10, 0), u64s(0, 0)))],
      error: Errno.EINVAL,
    },
    {
      name: "a WRITE whose size lies about its data",
      bytes: [req(FUSE_WRITE, {}, cat(u64s(1, 0), u32s(100, 0), u64s(0, 0)), new Uint8Array(50))],
      error: Errno.EINVAL,
    },
    {
      name: "a WRITE above the negotiated maximum",
      bytes: [req(FUSE_WRITE, {}, cat(u64s(1, 0), u32s(200, 0), u64s(0, 0)), new Uint8Array(200))],
      limits: { ...LIMITS, maxWrite: 100 },
      error: Errno.EINVAL,
    },
    {
      name: "a BATCH_FORGET whose count lies",
      bytes: [req(FUSE_BATCH_FORGET, {}, u32s(1000, 0), u64s(1, 1))],
      writable: [],
      error: Errno.EINVAL,
      reply: false,
    },
    {
      name: "a REMOVEMAPPING of more than 256 ranges",
      bytes: [req(FUSE_REMOVEMAPPING, {}, u32s(257), new Uint8Array(16 * 257))],
      error: Errno.EINVAL,
    },
    {
      name: "a REMOVEMAPPING whose count lies",
      bytes: [req(FUSE_REMOVEMAPPING, {}, u32s(3), new Uint8Array(16))],
      error: Errno.EINVAL,
    },
    {
      name: "a SETUPMAPPING window offset beyond 2^53",
      bytes: [req(FUSE_SETUPMAPPING, {}, u64s(1, 0, 4096, 0, big))],
      error: Errno.EINVAL,
    },
    {
      name: "COPY_FILE_RANGE flags above bit 31",
      bytes: [req(FUSE_COPY_FILE_RANGE, {}, u64s(1, 0, 2, 3, 0, 10, 1n << 40n))],
      error: Errno.EINVAL,
    },
    {
      name: "arguments larger than any request needs",
      bytes: [req(FUSE_LOOKUP, {}, new Uint8Array(FUSE_MAX_ARGS + 1).fill(0x61))],
      error: Errno.EINVAL,
    },
  ];
  for (const c of cases) {
    it(`refuses ${c.name}`, () =>
      refused(parse(c.bytes, c.writable ?? [4096], c.limits), c.error, c.reply ?? true));
  }

  it("a refusal carries the request's unique for the reply", () => {
    const r = parse([req(FUSE_LOOKUP, { unique: 0x1234n }, z("a/b"))]);
    assert.ok(!r.ok);
    if (!r.ok) assert.equal(r.unique, 0x1234n);
  });

  it("random bytes never make it throw", () => {
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    for (let i = 0; i < 3000; i++) {
      const len = Math.floor(rand() * 200);
      const b = new Uint8Array(Math.max(len, 1));
      for (let j = 0; j < b.length; j++) b[j] = Math.floor(rand() * 256);
      if (b.length >= 8 && rand() < 0.7) {
        // A plausible header: real length and opcode, random arguments.
        const v = new DataView(b.buffer);
        v.setUint32(0, rand() < 0.8 ? b.length : Math.floor(rand() * 2 ** 32), true);
        v.setUint32(4, Math.floor(rand() * 52), true);
      }
      const r = parse([b], rand() < 0.2 ? [] : [Math.floor(rand() * 300) + 1]);
      assert.equal(typeof r.ok, "boolean");
    }
  });
});
