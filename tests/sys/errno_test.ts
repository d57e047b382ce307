import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { close, Errno, errnoName, hasKvm, runtime, SysError } from "../../sys/mod.ts";

describe("SysError", () => {
  it("close(-1) throws EBADF with the call name", () => {
    assert.throws(() => close(-1), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.ok(e instanceof Error);
      assert.equal(e.name, "SysError");
      assert.equal(e.call, "close");
      assert.equal(e.errno, 9);
      assert.equal(e.code, "EBADF");
      assert.equal(e.message, "close failed: EBADF (errno 9)");
      return true;
    });
  });

  it("formats the message as call, code and errno", () => {
    const e = new SysError("eventfd_read", Errno.EAGAIN);
    assert.equal(e.message, "eventfd_read failed: EAGAIN (errno 11)");
    assert.equal(e.code, "EAGAIN");
  });

  it("names unknown errno values EUNKNOWN", () => {
    assert.equal(new SysError("x", 4000).code, "EUNKNOWN");
  });
});

describe("errnoName()", () => {
  it("maps common values", () => {
    assert.equal(errnoName(1), "EPERM");
    assert.equal(errnoName(2), "ENOENT");
    assert.equal(errnoName(11), "EAGAIN");
    assert.equal(errnoName(95), "EOPNOTSUPP");
    assert.equal(errnoName(125), "ECANCELED");
  });

  it("is the inverse of Errno", () => {
    for (const [name, value] of Object.entries(Errno)) assert.equal(errnoName(value), name);
  });
});

describe("runtime", () => {
  it("matches the global object of the runtime", () => {
    const g = globalThis as { Deno?: unknown; Bun?: unknown };
    assert.equal(runtime, g.Bun !== undefined ? "bun" : "deno");
  });

  it("hasKvm() answers without throwing", () => {
    assert.equal(typeof hasKvm(), "boolean");
  });
});
