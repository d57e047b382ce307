import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  addSeals,
  close,
  EventFd,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  fdKind,
  fstat,
  ftruncate,
  getSeals,
  memfdCreate,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECTORY,
  O_RDONLY,
  O_RDWR,
  open,
  socketpair,
  SysError,
} from "../../sys/mod.ts";

describe("fstat()", () => {
  it("reports the type and size of a memfd, and the type of other descriptors", () => {
    const fd = memfdCreate("stat");
    const [a, b] = socketpair();
    const efd = new EventFd();
    const devNull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    try {
      ftruncate(fd, 12345);
      const st = fstat(fd);
      assert.equal(st.type, "regular");
      assert.equal(st.size, 12345);
      assert.equal(typeof st.ino, "bigint");
      assert.match(st.dev, /^\d+:\d+$/);
      assert.equal(fstat(a).type, "socket");
      assert.equal(fstat(efd.fd).type, "anonymous");
      assert.equal(fstat(devNull).type, "character-device");
    } finally {
      close(fd);
      close(a);
      close(b);
      efd.close();
      close(devNull);
    }
  });

  it("throws EBADF for a closed descriptor", () => {
    const fd = memfdCreate("closed");
    close(fd);
    assert.throws(() => fstat(fd), (e: unknown) => e instanceof SysError && e.code === "EBADF");
  });
});

describe("getSeals() / addSeals()", () => {
  it("reads the seals of a memfd; a sealed memfd cannot shrink", () => {
    const fd = memfdCreate("sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    try {
      ftruncate(fd, 8192);
      assert.equal(getSeals(fd), 0);
      addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW);
      assert.equal(getSeals(fd), F_SEAL_SHRINK | F_SEAL_GROW);
      assert.throws(
        () => ftruncate(fd, 4096),
        (e: unknown) => e instanceof SysError && e.code === "EPERM",
      );
      assert.equal(fstat(fd).size, 8192);
    } finally {
      close(fd);
    }
  });

  it("a memfd made without MFD_ALLOW_SEALING carries F_SEAL_SEAL alone", () => {
    const fd = memfdCreate("unsealable");
    try {
      assert.equal(getSeals(fd), F_SEAL_SEAL);
      assert.throws(() => addSeals(fd, F_SEAL_SHRINK), SysError);
    } finally {
      close(fd);
    }
  });

  it("a file that does not support sealing reports none", () => {
    const dir = mkdtempSync(join(tmpdir(), "vt-seals-"));
    const fd = open(join(dir, "f"), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    const [a, b] = socketpair();
    try {
      assert.equal(getSeals(fd) & F_SEAL_SHRINK, 0);
      assert.equal(getSeals(a), 0);
    } finally {
      close(fd);
      close(a);
      close(b);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("fdKind()", () => {
  it("tells an eventfd from sockets, files, directories and devices", () => {
    const efd = new EventFd();
    const semaphore = new EventFd({ semaphore: true });
    const [a, b] = socketpair();
    const mem = memfdCreate("kind");
    const dir = open(tmpdir(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const devNull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    try {
      assert.equal(fdKind(efd.fd), "eventfd");
      assert.equal(fdKind(semaphore.fd), "eventfd");
      assert.equal(fdKind(a), "socket");
      assert.equal(fdKind(mem), "regular file");
      assert.equal(fdKind(dir), "directory");
      assert.equal(fdKind(devNull), "character device");
    } finally {
      efd.close();
      semaphore.close();
      close(a);
      close(b);
      close(mem);
      close(dir);
      close(devNull);
    }
  });

  it("throws EBADF for a closed descriptor", () => {
    const efd = new EventFd();
    const fd = efd.fd;
    efd.close();
    assert.throws(() => fdKind(fd), (e: unknown) => e instanceof SysError && e.code === "EBADF");
  });
});
