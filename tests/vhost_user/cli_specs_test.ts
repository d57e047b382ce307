// The CLI's many-devices form: `--device KIND,socket=PATH,key=value,...` specs, read into the
// single-device options (a table of specs), refused before anything listens when wrong, and
// one process serving each device on its own socket.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DeviceSpecError, specArgs } from "../../vhost_user/_device_spec.ts";
import { main } from "../../vhost_user/main.ts";
import { startBackend } from "../../launcher/backends.ts";
import { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { BlockConfigOffset, VIRTIO_BLK_F_RO } from "../../devices/block.ts";
import { featureBit } from "../../devices/device.ts";
import { readEntropy, T } from "./_harness.ts";

const OPTIONS = {
  socket: { type: "string" },
  file: { type: "string" },
  serial: { type: "string" },
  readonly: { type: "boolean" },
  once: { type: "boolean" },
} as const;
const RESERVED = new Set(["once"]);

describe("specArgs", () => {
  const good: [string, string[]][] = [
    ["rng", ["--device", "rng"]],
    ["blk,socket=/s,file=a.img", ["--device", "blk", "--socket=/s", "--file=a.img"]],
    ["blk,file=a,,b.img", ["--device", "blk", "--file=a,b.img"]],
    ["blk,file=a,,,readonly", ["--device", "blk", "--file=a,", "--readonly"]],
    ["blk,readonly=on", ["--device", "blk", "--readonly"]],
    ["blk,readonly=yes", ["--device", "blk", "--readonly"]],
    ["blk,readonly=off", ["--device", "blk"]],
    ["blk,serial=", ["--device", "blk", "--serial="]],
    ["blk,serial=-x=y", ["--device", "blk", "--serial=-x=y"]],
  ];
  for (const [spec, args] of good) {
    it(`reads ${spec}`, () => assert.deepEqual(specArgs(spec, OPTIONS, RESERVED), args));
  }
  const bad: [string, RegExp][] = [
    ["", /device kind/],
    ["socket=/s", /device kind/],
    ["blk,,file=a", /device kind/], // the kind "blk,file=a": a doubled comma is a comma
    ["blk,=a", /bad key ""/],
    ["blk,colour=red", /unknown key colour/],
    ["blk,device=rng", /unknown key device/],
    ["blk,once", /whole process: give --once/],
    ["blk,file=a,file=b", /file given twice/],
    ["blk,file", /file needs a value/],
    ["blk,readonly=maybe", /on or off/],
    ["blk,File=a", /bad key/],
    ["blk,__proto__=x", /bad key/],
  ];
  for (const [spec, message] of bad) {
    it(`refuses ${JSON.stringify(spec)}`, () => {
      assert.throws(
        () => specArgs(spec, OPTIONS, RESERVED),
        (err: unknown) => err instanceof DeviceSpecError && message.test(err.message),
      );
    });
  }
});

let dir = "";
before(() => {
  dir = mkdtempSync(join(tmpdir(), "vt-specs-"));
  writeFileSync(join(dir, "a.img"), new Uint8Array(1 << 20));
  writeFileSync(join(dir, "b.img"), new Uint8Array(2 << 20));
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe("vhost_user/main.ts with --device specs", () => {
  it("refuses bad specs with a usage error and listens on nothing", async () => {
    const a = `blk,socket=${join(dir, "a.sock")},file=${join(dir, "a.img")}`;
    const b = `blk,socket=${join(dir, "b.sock")},file=${join(dir, "b.img")}`;
    assert.equal(await main(["--device", a, "--device", "blk,file=x.img"]), 2, "no socket=");
    assert.equal(await main(["--device", a, "--device", `${b},queues=0`]), 2);
    assert.equal(await main(["--device", a, "--device", `${b},colour=red`]), 2);
    assert.equal(await main(["--device", a, "--file", "x.img"]), 2, "a device flag outside");
    assert.equal(await main(["--device", a, "--device", "rng"]), 2, "a bare kind among specs");
    assert.equal(await main(["--device", a, "--device", `${b},verbose`]), 2, "a process flag");
    assert.equal(await main(["--device", a, "--poll-us", "5000"]), 2, "a bad shared default");
    const same = `blk,socket=${join(dir, "a.sock")},file=${join(dir, "b.img")}`;
    assert.equal(await main(["--device", a, "--device", same]), 2, "one socket twice");
    assert.equal(await main(["--device", a, "--device", `${b},file=${dir}/none.img`]), 2);
    assert.equal(await main(["--device", a, "--device", `${b.replace("b.img", "none.img")}`]), 1);
    // A socket that cannot be bound: the ones already listening are closed and removed.
    const unbindable = `rng,socket=${join(dir, "no", "such", "dir.sock")}`;
    assert.equal(await main(["--device", a, "--device", unbindable]), 1);
    assert.equal(existsSync(join(dir, "a.sock")), false);
    assert.equal(existsSync(join(dir, "b.sock")), false);
  });

  it("serves each device on its own socket from one process", T, async () => {
    const sockets = ["a", "b", "r"].map((n) => join(dir, `${n}.sock`));
    const backend = await startBackend([
      ...["--device", `blk,socket=${sockets[0]},file=${join(dir, "a.img")},serial=disk-a`],
      ...["--device", `blk,socket=${sockets[1]},file=${join(dir, "b.img")},readonly`],
      ...["--device", `rng,socket=${sockets[2]}`],
      "--require-sealed-memory",
    ], { waitFor: sockets[2] }); // the last one listens last
    try {
      const capacity = async (i: number) => {
        const fe = await VhostUserFrontend.connect(sockets[i]);
        try {
          const r = await fe.start();
          const cfg = await fe.getConfig(BlockConfigOffset.capacity, 8);
          const sectors = new DataView(cfg.buffer, cfg.byteOffset, 8).getUint32(0, true);
          return { ro: (r.features & featureBit(VIRTIO_BLK_F_RO)) !== 0n, sectors };
        } finally {
          await fe.close();
        }
      };
      assert.deepEqual(await capacity(0), { ro: false, sectors: 2048 });
      assert.deepEqual(await capacity(1), { ro: true, sectors: 4096 });
      const rng = await VhostUserFrontend.connect(sockets[2]);
      try {
        await rng.start();
        await readEntropy(rng, [32]);
      } finally {
        await rng.close();
      }
    } finally {
      await backend.stop();
    }
  });
});
