// What bench/boot_bench.ts reads: the /init marker on a serial console whose lines end in CR LF
// (the 8250 driver turns "\n" into "\r\n"), the guest's uptime, and a VMM's memory apart from its
// guest RAM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { guestUptimeAtInitMs, initReached, memoryFootprint } from "../../bench/_boot_measure.ts";

test("initReached() sees the VT-BEGIN line once it has arrived whole, CR LF and all", () => {
  const before = "[    0.000000] Linux version 6.1.0\r\n\r\n";
  assert.equal(initReached(before), false);
  assert.equal(initReached(before + "VT-BEGIN kernel=6.1.0-50-cloud-amd64 upti"), false);
  assert.equal(initReached(before + "VT-BEGIN kernel=6.1.0-50-cloud-amd64 uptime=0.91\r"), false);
  assert.equal(initReached(before + "VT-BEGIN kernel=6.1.0-50-cloud-amd64 uptime=0.91\r\n"), true);
  assert.equal(initReached("VT-BEGIN kernel=x uptime=1.5\n"), true);
});

test("guestUptimeAtInitMs() reads the uptime of the VT-BEGIN line", () => {
  assert.equal(
    guestUptimeAtInitMs("x\r\nVT-BEGIN kernel=6.1.0 uptime=0.91\r\nVT-END uptime=3\r\n"),
    910,
  );
  assert.ok(Number.isNaN(guestUptimeAtInitMs("no marker\r\n")));
});

test("memoryFootprint() counts the guest RAM mapping apart from the VMM's own memory", () => {
  const smaps = [
    "55d0c0000000-55d0c0200000 r-xp 00000000 08:01 1234   /usr/bin/qemu-system-x86_64",
    "Size:               2048 kB",
    "Rss:                1500 kB",
    "7f0000000000-7f0010000000 rw-p 00000000 00:00 0 ",
    "Size:             262144 kB",
    "Rss:               40000 kB",
    "7f0010000000-7f0010400000 rw-p 00000000 00:00 0 ",
    "Rss:                3000 kB",
    "7f0020000000-7f0030200000 rw-s 00000000 00:01 77   /memfd:pc.ram (deleted)",
    "Rss:                 100 kB",
    "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]",
    "Rss:                  12 kB",
  ].join("\n");
  // 256 MiB: the anonymous 256 MiB mapping and the memfd one (256 MiB + 2 MiB) are guest RAM.
  assert.deepEqual(memoryFootprint(smaps, 256 << 20), {
    rssKiB: 44612,
    guestKiB: 40100,
    overheadKiB: 4512,
  });
});
