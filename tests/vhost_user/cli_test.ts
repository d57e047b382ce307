// The vhost-user CLI (vhost_user/main.ts): its block and net options reach the device's configuration
// space as a frontend sees it, and bad options are refused with a usage error before anything
// listens.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBackend } from "../../launcher/backends.ts";
import { VhostUserFrontend } from "../../testing/vhost_user_frontend.ts";
import { main } from "../../vhost_user/main.ts";
import { BlockConfigOffset, VIRTIO_BLK_F_RO } from "../../devices/block.ts";
import { featureBit } from "../../devices/device.ts";
import { VIRTIO_NET_F_MQ } from "../../devices/net.ts";
import { concatBytes, ethFrame, netHeader, takeFrames } from "../../testing/net_driver.ts";
import { VIRTIO_F_EVENT_IDX } from "../../queue/split.ts";
import { delay, T } from "./_harness.ts";
import {
  AF_UNIX,
  close,
  connect,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket as socket_,
} from "../../sys/mod.ts";

let dir = "";
let disk = "";
before(() => {
  dir = mkdtempSync(join(tmpdir(), "vt-cli-"));
  disk = join(dir, "disk.img");
  writeFileSync(disk, new Uint8Array(1 << 20));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("vhost_user/main.ts", () => {
  it("puts block size, physical block size, cache mode and queues in the device", T, async () => {
    const socket = join(dir, "blk.sock");
    const backend = await startBackend([
      ...["--socket", socket, "--device", "blk", "--file", disk, "--serial", "cli-disk"],
      ...["--block-size", "4096", "--physical-block-size", "16384", "--writethrough"],
      ...["--readonly", "--queues", "2"],
    ]);
    try {
      const fe = await VhostUserFrontend.connect(socket);
      try {
        const r = await fe.start();
        assert.equal(r.queueNum, 2);
        assert.notEqual(r.features & featureBit(VIRTIO_BLK_F_RO), 0n);
        const cfg = await fe.getConfig(0, 36);
        const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
        assert.equal(v.getUint32(BlockConfigOffset.capacity, true), 2048);
        assert.equal(v.getUint32(BlockConfigOffset.blkSize, true), 4096);
        assert.equal(v.getUint8(BlockConfigOffset.physicalBlockExp), 2, "16 KiB = 4 × 4 KiB");
        assert.equal(v.getUint8(BlockConfigOffset.writeback), 0, "writethrough");
        assert.equal(v.getUint16(BlockConfigOffset.numQueues, true), 2);
      } finally {
        await fe.close();
      }
    } finally {
      await backend.stop();
    }
  });

  it("--rng-max-bytes and --rng-period-ms rate-limit the rng device", T, async () => {
    const socket = join(dir, "rng.sock");
    const backend = await startBackend([
      ...["--socket", socket, "--device", "rng"],
      ...["--rng-max-bytes", "100", "--rng-period-ms", "600000"],
    ]);
    try {
      const fe = await VhostUserFrontend.connect(socket);
      try {
        // Without EVENT_IDX the backend calls once, after the whole pass (with it, the call
        // after the first completion could wake this process before the second is there).
        await fe.start({ features: ~featureBit(VIRTIO_F_EVENT_IDX) & ((1n << 64n) - 1n) });
        const { driver } = fe.ring(0);
        for (let i = 0; i < 3; i++) driver.addChain([{ writable: 64 }]);
        fe.kick(0);
        while (driver.pendingUsed() < 2) assert.ok(await fe.waitCall(0, 5000));
        // One pass: 64 bytes, then the 36 left of the period's 100; the third request waits
        // in the ring for the next period (ten minutes away).
        assert.deepEqual(driver.takeAllUsed().map((u) => u.len), [64, 36]);
      } finally {
        await fe.close();
      }
    } finally {
      await backend.stop();
    }
  });

  it(
    "--device net --loopback serves queue pairs and writes its counters with --stats",
    T,
    async () => {
      const socket = join(dir, "net.sock");
      const stats = join(dir, "net-stats.json");
      const backend = await startBackend([
        ...["--socket", socket, "--device", "net", "--loopback", "--queues", "2"],
        ...["--mtu", "9000", "--mac", "02:00:00:00:00:42", "--stats", stats],
      ]);
      try {
        const fe = await VhostUserFrontend.connect(socket, { memorySize: 8 << 20 });
        try {
          const r = await fe.start({ queueSize: 64 });
          assert.equal(r.queueNum, 5);
          assert.notEqual(r.features & featureBit(VIRTIO_NET_F_MQ), 0n);
          const rx = fe.ring(0).driver;
          for (let i = 0; i < 4; i++) rx.addChain([{ writable: 2048 }]);
          fe.kick(0, { force: true });
          const f = ethFrame({ payload: new Uint8Array(1000).fill(5) });
          fe.ring(1).driver.addChain([{ readable: concatBytes(netHeader(), f) }]);
          fe.kick(1, { force: true });
          let got: Uint8Array[] = [];
          while (got.length === 0) {
            assert.ok(await fe.waitCall(0, 5000));
            got = takeFrames(rx).map((x) => x.frame);
          }
          assert.deepEqual(got, [f]);
        } finally {
          await fe.close();
        }
      } finally {
        await backend.stop();
      }
      const counters = JSON.parse(readFileSync(stats, "utf8"));
      assert.equal(counters.txFrames, 1);
      assert.equal(counters.rxFrames, 1);
    },
  );

  it("refuses bad options with a usage error and listens on nothing", async () => {
    const socket = join(dir, "never.sock");
    const blk = ["--socket", socket, "--device", "blk", "--file", disk];
    assert.equal(await main(["--socket", socket, "--device", "blk"]), 2, "no --file");
    assert.equal(await main([...blk, "--queues", "0"]), 2);
    assert.equal(await main([...blk, "--poll-us", "5000"]), 2);
    // Refused before anything is opened: the overlay file is not created.
    const cow = join(dir, "never.cow");
    assert.equal(await main([...blk, "--overlay", cow, "--poll-us", "-1"]), 2);
    assert.equal(existsSync(cow), false);
    assert.equal(await main([...blk, "--block-size", "4k"]), 2);
    assert.equal(await main([...blk, "--no-such-option"]), 2);
    const rng = ["--socket", socket, "--device", "rng"];
    for (const bad of ["0", "-5", "1.5", "lots", "9007199254740992"]) {
      assert.equal(await main([...rng, "--rng-max-bytes", bad]), 2, `--rng-max-bytes ${bad}`);
    }
    for (const bad of ["0", "-1", "2147483648", "soon"]) {
      assert.equal(
        await main([...rng, "--rng-max-bytes", "10", "--rng-period-ms", bad]),
        2,
        `--rng-period-ms ${bad}`,
      );
    }
    assert.equal(await main([...rng, "--rng-period-ms", "100"]), 2, "a period without a limit");
    assert.equal(await main([...blk, "--rng-max-bytes", "100"]), 2, "an rng option for blk");
    const net = ["--socket", socket, "--device", "net"];
    assert.equal(await main(net), 2, "no net backend");
    assert.equal(await main([...net, "--loopback", "--tap", "vt0"]), 2, "two backends");
    assert.equal(await main([...net, "--loopback", "--socket-bind", "/tmp/x"]), 2);
    assert.equal(await main([...net, "--tap", "vt0", "--socket-raw"]), 2);
    assert.equal(await main([...net, "--loopback", "--mtu", "67"]), 2);
    assert.equal(await main([...net, "--loopback", "--queues", "0"]), 2);
    assert.equal(await main([...net, "--loopback", "--mac", "01:00:5e:00:00:01"]), 2);
    assert.equal(await main([...net, "--tap", "no/such"]), 1);
    // Values the device refuses, and a file that is not there.
    assert.equal(await main([...blk, "--block-size", "1000"]), 1);
    assert.equal(await main([...blk, "--physical-block-size", "256"]), 1);
    assert.equal(await main([...blk, "--serial", "x".repeat(21)]), 1);
    assert.equal(
      await main(["--socket", socket, "--device", "blk", "--file", join(dir, "missing.img")]),
      1,
    );
    assert.equal(await main(["--help"]), 0);
    assert.equal(existsSync(socket), false);
  });
});

describe("vhost_user/main.ts out of descriptors", () => {
  it(
    "stops watching the listening socket for a while instead of failing accept in a loop",
    T,
    async () => {
      const socket = join(dir, "emfile.sock");
      const deno = join(import.meta.dirname!, "..", "..", "node_modules", ".bin", "deno");
      const mainTs = join(import.meta.dirname!, "..", "..", "vhost_user", "main.ts");
      const child = spawn(deno, [
        "run",
        "--allow-all",
        mainTs,
        "--socket",
        socket,
        "--device",
        "rng",
      ], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      try {
        for (let i = 0; i < 400 && !existsSync(socket); i++) await delay(25);
        assert.ok(existsSync(socket), stderr);
        // No descriptor left for accept(2): the next connection stays queued and the listening
        // socket readable.
        const open = readdirSync(`/proc/${child.pid}/fd`).length;
        const r = spawnSync("prlimit", [`--pid=${child.pid}`, `--nofile=${open - 4}:${open - 4}`]);
        assert.equal(r.status, 0, String(r.stderr));
        const fd = socket_(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
        try {
          connect(fd, socket);
          await delay(500);
        } finally {
          close(fd);
        }
        const failures = stderr.split("\n").filter((l) => /accept/.test(l)).length;
        assert.ok(failures >= 1, `accept failed: ${stderr}`);
        // One failure per retry period (100 ms) at most, not thousands.
        assert.ok(failures <= 10, `${failures} accept failures in 500 ms`);
      } finally {
        child.kill("SIGKILL");
        await exited;
      }
    },
  );
});
