// A real Linux guest (QEMU TCG, 2 vCPUs) and the host talk through our vhost-user net backend
// on a multi-queue tap, inside a network namespace this test creates and removes (addresses
// exist only there; nothing leaves the machine). The backend runs in the namespace
// (`ip netns exec`), as the CLI with two queue pairs. One boot: ping, TCP both ways with
// SHA-256 at both ends, offloads negotiated and used, and traffic spread over both pairs.
// Skipped, with the reason, where namespaces or /dev/net/tun are not available.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { type BootResult, ensureGuest, Sandbox } from "../../launcher/mod.ts";
import type { NetStats } from "../../devices/net.ts";

const NS = `vt-net-${process.pid}`;
const TAP = "vttap0";
const HOST = "10.0.9.1";
const GUEST = "10.0.9.2";
const MIB = 16;

function run(cmd: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd[0], cmd.slice(1), { encoding: "utf8" });
  return { ok: r.status === 0, out: `${r.stdout ?? ""}${r.stderr ?? ""}`.trim() };
}

/** Why this machine cannot run the test, or `false`. */
function unavailable(): string | false {
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    return "needs root (CAP_NET_ADMIN) to make a network namespace and a tap";
  }
  if (!existsSync("/dev/net/tun")) return "no /dev/net/tun";
  if (!run(["ip", "-V"]).ok) return "no ip command (iproute2)";
  if (!run(["busybox", "true"]).ok) return "no busybox for the host end (nc, sha256sum)";
  const probe = `vt-net-probe-${process.pid}`;
  const add = run(["ip", "netns", "add", probe]);
  if (!add.ok) return `cannot create a network namespace: ${add.out}`;
  run(["ip", "netns", "del", probe]);
  return false;
}
const skip = unavailable();

/** A command run in the namespace whose stdin stays open (busybox nc quits on stdin EOF). */
function inNs(script: string): { child: ChildProcess; output: Promise<string> } {
  const child = spawn("ip", ["netns", "exec", NS, "sh", "-c", script], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  let out = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  const output = new Promise<string>((resolve) => child.once("exit", () => resolve(out)));
  return { child, output };
}

const SCRIPT = `
step setup
ip link set eth0 up
ip addr add ${GUEST}/24 dev eth0
echo "VT-FEATURES $(cat /sys/bus/virtio/devices/*/features | grep -m1 .)"
echo "VT-QUEUES $(ls /sys/class/net/eth0/queues | tr '\\n' ' ')"
step ping
i=0
until ping -c 1 -W 1 ${HOST} >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 60 ] || fail "the host never answered"
done
ping -c 3 -W 2 ${HOST} | tee /tmp/ping
grep -q "3 packets received" /tmp/ping || fail "lost pings"
echo VT-PING-OK
step to-host
dd if=/dev/urandom of=/tmp/r4 bs=1M count=4 2>/dev/null
for i in $(seq ${MIB / 4}); do cat /tmp/r4; done > /tmp/blob
echo "VT-SHA-SENT $(sha256sum /tmp/blob | cut -d' ' -f1)"
nc ${HOST} 5001 < /tmp/blob
step spread
for p in 1 2 3 4; do (dd if=/dev/zero bs=64k count=32 2>/dev/null | nc ${HOST} 600$p) & done
wait
step from-host
echo VT-LISTEN
echo "VT-SHA-RECV $(nc -l -p 7000 | sha256sum | cut -d' ' -f1)"
`;

describe("a guest and the host through a multi-queue tap in a namespace (QEMU TCG)", {
  skip,
  timeout: 300_000,
}, () => {
  let dir: string;
  let box: Sandbox | undefined;
  let result: BootResult;
  let stats: NetStats;
  let hostReceived: string;
  let hostSent = "";
  const helpers: ChildProcess[] = [];

  before(async () => {
    await ensureGuest();
    dir = mkdtempSync(join(tmpdir(), "vt-net-tap-"));
    const setup = [
      ["ip", "netns", "add", NS],
      ["ip", "-n", NS, "link", "set", "lo", "up"],
      ["ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue"],
      ["ip", "-n", NS, "addr", "add", `${HOST}/24`, "dev", TAP],
      ["ip", "-n", NS, "link", "set", TAP, "up"],
    ];
    for (const cmd of setup) {
      const r = run(cmd);
      assert.ok(r.ok, `${cmd.join(" ")}: ${r.out}`);
    }
    const receiver = inNs("busybox nc -l -p 5001 | busybox sha256sum");
    helpers.push(receiver.child);
    for (const p of [1, 2, 3, 4]) {
      helpers.push(inNs(`busybox nc -l -p 600${p} > /dev/null`).child);
    }
    const blob = new Uint8Array(MIB << 20);
    for (let at = 0; at < blob.length; at += 65536) {
      crypto.getRandomValues(blob.subarray(at, at + 65536));
    }
    writeFileSync(join(dir, "blob"), blob);
    hostSent = createHash("sha256").update(blob).digest("hex");
    const statsFile = join(dir, "stats.json");
    box = await Sandbox.start({
      dir: join(dir),
      devices: [{
        id: "net0",
        kind: "net",
        cli: ["--tap", TAP, "--queues", "2", "--stats", statsFile],
        prefix: ["ip", "netns", "exec", NS],
        netdevProperties: "queues=2",
        qemuProperties: "mq=on,mac=52:54:00:00:09:02",
      }],
    });
    let seen = "";
    let sending = false;
    result = await box.boot({
      script: SCRIPT,
      smp: 2,
      timeoutSec: 240,
      onOutput: (chunk: string) => {
        seen += chunk;
        if (!sending && seen.includes("VT-LISTEN")) {
          sending = true;
          const f = join(dir, "blob");
          helpers.push(
            inNs(
              `for i in $(seq 50); do busybox nc ${GUEST} 7000 < ${f} && break; sleep 0.2; done`,
            ).child,
          );
        }
      },
    });
    if (!result.passed) console.error(result.output);
    await box.stop(); // the backend writes its counters as it exits
    box = undefined;
    stats = JSON.parse(readFileSync(statsFile, "utf8"));
    hostReceived = await Promise.race([
      receiver.output,
      new Promise<string>((r) => setTimeout(() => r("(timed out)"), 5000)),
    ]);
  });

  after(async () => {
    await box?.stop();
    for (const h of helpers) if (h.exitCode === null) h.kill("SIGKILL");
    run(["ip", "netns", "del", NS]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the guest pings the host", () => {
    assert.match(result.output, /^VT-PING-OK$/m, result.output);
  });

  it(`${MIB} MiB from the guest reach the host with the same SHA-256`, () => {
    const sent = /^VT-SHA-SENT ([0-9a-f]{64})$/m.exec(result.output)?.[1];
    assert.ok(sent !== undefined, result.output);
    assert.equal(hostReceived.split(/\s/)[0], sent);
  });

  it(`${MIB} MiB from the host reach the guest with the same SHA-256`, () => {
    assert.equal(/^VT-SHA-RECV ([0-9a-f]{64})$/m.exec(result.output)?.[1], hostSent, result.output);
  });

  it("checksum and segmentation offloads are negotiated and used both ways", () => {
    const features = /^VT-FEATURES ([01]+)$/m.exec(result.output)?.[1] ?? "";
    // CSUM, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, HOST_TSO4, HOST_TSO6, MRG_RXBUF, MQ.
    for (const bitNo of [0, 1, 7, 8, 11, 12, 15, 22]) {
      assert.equal(features[bitNo], "1", `feature bit ${bitNo} in ${features}`);
    }
    // The guest's TSO frames went to the tap whole, and the tap (TUNSETOFFLOAD) gave the
    // guest segmented frames.
    assert.ok(stats.txGso > 0, `txGso ${stats.txGso}`);
    assert.ok(stats.rxGso > 0, `rxGso ${stats.rxGso}`);
  });

  it("the guest sees two queue pairs and traffic spreads over both", () => {
    assert.match(result.output, /^VT-QUEUES rx-0 rx-1 tx-0 tx-1 $/m, result.output);
    const q = stats.queues;
    assert.equal(q.length, 2);
    for (const [i, s] of q.entries()) {
      assert.ok(s.txFrames > 0 && s.rxFrames > 0, `pair ${i}: ${JSON.stringify(s)}`);
    }
  });

  it("nothing was dropped for a bad header and the guest run passes", () => {
    for (const drops of [stats.rxDrops, stats.txDrops]) {
      for (const k of ["badGso", "badCsum", "badHdrLen", "oversize", "gsoRefused", "truncated"]) {
        assert.equal((drops as Record<string, number>)[k], 0, `${k}: ${JSON.stringify(stats)}`);
      }
    }
    assert.equal(result.passed, true, result.output);
  });
});
