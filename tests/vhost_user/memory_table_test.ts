// SET_MEM_TABLE is checked before anything is mapped: the table itself (counts, arithmetic,
// overlaps), each region's file (type and size, so no mapping reaches past its file) and its
// seals (unsealed memory is served with one warning, or refused under requireSealedMemory).
// The cases that would raise SIGBUS if accepted run against a backend process of their own in
// sigbus_test.ts; the ones here are refused (or served) without touching unbacked memory.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { memTablePayload, type VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import {
  MAX_MEM_REGIONS,
  type MemoryRegionDesc,
  Request,
  VhostUserError,
} from "../../vhost_user/protocol.ts";
import { UnsealedMemoryWarning, type VhostUserBackendOptions } from "../../vhost_user/backend.ts";
import { checkMemTable } from "../../vhost_user/_memory_table.ts";
import { RngDevice } from "../../devices/rng.ts";
import {
  close,
  EventFd,
  ftruncate,
  memfdCreate,
  O_CLOEXEC,
  O_CREAT,
  O_RDWR,
  open,
  socketpair,
} from "../../sys/mod.ts";
import { readEntropy, T, until, withBackend } from "./_harness.ts";

const MiB = 1 << 20;

function region(
  fe: VhostUserFrontend,
  guestAddr: number,
  size: number,
  mmapOffset = guestAddr,
): MemoryRegionDesc {
  return { guestAddr, size, userAddr: fe.userAddr(guestAddr), mmapOffset };
}

/**
 * Connect a frontend that sends `table` as its memory table and check that the backend drops
 * it with an `InvalidValue` error matching `pattern`, and serves the next (sealed) frontend.
 */
async function expectRefused(
  table: (fe: VhostUserFrontend) => Promise<unknown>,
  pattern: RegExp,
  options: { sealMemory?: boolean; backend?: Omit<VhostUserBackendOptions, "socketPath"> } = {},
): Promise<void> {
  await withBackend(new RngDevice(), async (h) => {
    const fe = await h.connect({ sealMemory: options.sealMemory, memorySize: 2 * MiB });
    try {
      await fe.setOwner();
      await table(fe);
    } catch (err) {
      assert.ok(err instanceof VhostUserError, String(err));
      assert.match(err.message, /closed the connection/);
    }
    assert.equal(await fe.waitDisconnect(5000), true, "the backend accepted the table");
    await fe.close();
    assert.equal(h.errors.length, 1, h.errors.map((e) => e.message).join("; "));
    const err = h.errors[0];
    assert.ok(err instanceof VhostUserError, String(err));
    assert.equal(err.code, "InvalidValue", err.message);
    assert.match(err.message, /SET_MEM_TABLE/);
    assert.match(err.message, pattern);
    await until(() => !h.backend.connected, "the backend to drop the connection");
    const next = await h.connect();
    await next.start();
    await readEntropy(next, [64]);
    assert.equal(h.errors.length, 1, h.errors.map((e) => e.message).join("; "));
  }, options.backend);
}

describe("checkMemTable", () => {
  const r = (guestAddr: number, size: number, userAddr: bigint, mmapOffset = 0) => ({
    guestAddr,
    size,
    userAddr,
    mmapOffset,
  });
  const cases: [string, MemoryRegionDesc[], RegExp | null][] = [
    ["one region", [r(0, 4096, 0x1000n)], null],
    ["adjacent regions", [r(0, 4096, 0x1000n), r(4096, 4096, 0x2000n)], null],
    ["no region", [], /0 memory regions/],
    [
      `${MAX_MEM_REGIONS + 1} regions`,
      Array.from({ length: MAX_MEM_REGIONS + 1 }, (_, i) => r(i * 4096, 4096, BigInt(i) << 20n)),
      /9 memory regions/,
    ],
    ["a zero size", [r(0, 0, 0x1000n)], /memory region 0 .* has size 0/],
    ["guest ranges overlapping", [r(0, 8192, 0x10000n), r(4096, 4096, 0x20000n)], /guest/],
    [
      "frontend ranges overlapping",
      [r(0, 4096, 0x10000n), r(0x100000, 8192, 0xf000n)],
      /regions 0 and 1 overlap in the frontend's address space/,
    ],
    [
      "mmap offset + size past 2^53",
      [r(0, 8192, 0x1000n, Number.MAX_SAFE_INTEGER - 4096)],
      /memory region 0 .*mmap offset .* overflows/,
    ],
    [
      "frontend address + size past 2^64",
      [r(0, 8192, (1n << 64n) - 4096n)],
      /memory region 0 .*frontend address .* overflows 64 bits/,
    ],
  ];
  for (const [name, table, refusal] of cases) {
    it(refusal === null ? `accepts ${name}` : `refuses ${name}`, () => {
      if (refusal === null) {
        checkMemTable(table, Request.SET_MEM_TABLE);
        return;
      }
      assert.throws(
        () => checkMemTable(table, Request.SET_MEM_TABLE),
        (err: unknown) =>
          err instanceof VhostUserError && err.code === "InvalidValue" &&
          refusal.test(err.message),
      );
    });
  }
});

describe("VhostUserBackend refuses a bad memory table and serves the next frontend", () => {
  it("guest ranges that overlap", T, async () => {
    await expectRefused(
      (fe) => fe.setMemTable([region(fe, 0, MiB), region(fe, MiB / 2, MiB, MiB)]),
      /memory regions 0 and 1 overlap in guest-physical space/,
    );
  });

  it("frontend address ranges that overlap", T, async () => {
    await expectRefused(
      (fe) =>
        fe.setMemTable([region(fe, 0, MiB), {
          ...region(fe, MiB, MiB),
          userAddr: fe.userAddr(MiB / 2),
        }]),
      /memory regions 0 and 1 overlap in the frontend's address space/,
    );
  });

  it("a region of size 0", T, async () => {
    await expectRefused((fe) => fe.setMemTable([region(fe, 0, 0)]), /memory region 0 has size 0/);
  });

  it("a frontend address whose end overflows 64 bits", T, async () => {
    await expectRefused(
      (fe) => fe.setMemTable([{ ...region(fe, 0, MiB), userAddr: (1n << 64n) - 4096n }]),
      /memory region 0 .*overflows 64 bits/,
    );
  });

  it("an mmap offset whose end overflows 2^53", T, async () => {
    await expectRefused(
      (fe) => fe.setMemTable([region(fe, 0, MiB, Number.MAX_SAFE_INTEGER - 4096)]),
      /memory region 0 .*mmap offset .* overflows/,
    );
  });

  it(`more than ${MAX_MEM_REGIONS} regions`, T, async () => {
    await expectRefused(
      (fe) =>
        fe.setMemTable(
          Array.from({ length: MAX_MEM_REGIONS + 1 }, (_, i) => region(fe, i * 65536, 65536)),
        ),
      /9 memory regions/,
    );
  });

  it("a region larger than its memfd (refused before anything touches it)", T, async () => {
    await expectRefused(
      (fe) => fe.setMemTable([region(fe, 0, 4 * MiB)]),
      /memory region 0 \(guest 0x0\+0x400000\): .* past the end of its file \(0x200000 bytes\)/,
    );
  });

  it("an mmap offset past the end of its memfd", T, async () => {
    await expectRefused(
      (fe) => fe.setMemTable([region(fe, 0, 65536, 2 * MiB + 4096)]),
      /memory region 0 .*past the end of its file/,
    );
  });

  it("an eventfd, a socket or /dev/null as a region's fd", T, async () => {
    const efd = new EventFd();
    const [s1, s2] = socketpair();
    const devNull = open("/dev/null", O_RDWR | O_CLOEXEC);
    try {
      for (
        const [fd, kind] of [[efd.fd, "eventfd"], [s1, "socket"], [
          devNull,
          "character device",
        ]] as const
      ) {
        await expectRefused(
          (fe) =>
            fe.request(Request.SET_MEM_TABLE, memTablePayload([region(fe, 0, 65536)]), {
              fds: [fd],
            }),
          new RegExp(`memory region 0 .*: the fd is a ${kind}, not a regular file or memfd`),
        );
      }
    } finally {
      efd.close();
      close(s1);
      close(s2);
      close(devNull);
    }
  });

  it("a region whose second fd is too small", T, async () => {
    const small = memfdCreate("small");
    ftruncate(small, 65536);
    try {
      await expectRefused(
        (fe) =>
          fe.request(
            Request.SET_MEM_TABLE,
            memTablePayload([region(fe, 0, MiB), region(fe, MiB, 2 * 65536, 0)]),
            { fds: [fe.memoryFd, small] },
          ),
        /memory region 1 \(guest 0x100000\+0x20000\): .*past the end of its file \(0x10000 bytes\)/,
      );
    } finally {
      close(small);
    }
  });
});

describe("VhostUserBackend and sealed memory", () => {
  it("serves sealed memory without a warning", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      const fe = await h.connect({ sealMemory: true });
      await fe.start();
      await readEntropy(fe, [64, 256]);
      assert.deepEqual(h.errors, []);
    }, { requireSealedMemory: true });
  });

  it("serves unsealed memory with one warning naming the risk, once per backend", T, async () => {
    await withBackend(new RngDevice(), async (h) => {
      for (let i = 0; i < 2; i++) {
        const fe = await h.connect({ sealMemory: false });
        await fe.start();
        await readEntropy(fe, [64]);
        await fe.close();
        await until(() => !h.backend.connected, "the disconnection");
      }
      assert.equal(h.errors.length, 1, h.errors.map((e) => e.message).join("; "));
      const warning = h.errors[0];
      assert.ok(warning instanceof UnsealedMemoryWarning, String(warning));
      assert.equal(warning.region, 0);
      assert.match(warning.message, /memory region 0 .* not sealed against shrinking/);
      assert.match(warning.message, /SIGBUS/);
      assert.match(warning.message, /requireSealedMemory/);
    });
  });

  it("refuses unsealed memory under requireSealedMemory", T, async () => {
    await expectRefused(
      (fe) => fe.setMemTable(),
      /memory region 0 .*not sealed against shrinking \(F_SEAL_SHRINK\) and sealed memory is required/,
      { sealMemory: false, backend: { requireSealedMemory: true } },
    );
  });

  it("refuses a file on disk (it cannot be sealed) under requireSealedMemory", T, async () => {
    const dir = mkdtempSync(join(tmpdir(), "vt-memfile-"));
    const fd = open(join(dir, "ram"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    try {
      ftruncate(fd, MiB);
      await expectRefused(
        (fe) =>
          fe.request(Request.SET_MEM_TABLE, memTablePayload([region(fe, 0, MiB)]), {
            fds: [fd],
          }),
        /memory region 0 .*not sealed against shrinking/,
        { backend: { requireSealedMemory: true } },
      );
    } finally {
      close(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
