// Two real Linux guests (QEMU TCG) on one virtual cable: each guest's virtio-net is our device
// served over vhost-user from this process, and the two devices are wired together by our
// Unix datagram socket backend. One boot per guest serves every check: ping both ways, a
// 64 MiB TCP transfer from B to A with SHA-256 compared at both ends, and the link taken down
// and up under guest A with QMP set_link (over vhost-user QEMU owns the link state; the device's
// own STATUS path is covered through the MMIO transport in tests/devices/net_test.ts).

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BootResult, ensureGuest, Qmp, Sandbox } from "../../launcher/mod.ts";
import { NetDevice, SocketNetBackend } from "../../devices/net.ts";

const MIB = 64;
const A = "10.0.7.1";
const B = "10.0.7.2";

const setup = (ip: string, peer: string) => `
step setup
ip link set eth0 up
ip addr add ${ip}/24 dev eth0
echo "VT-FEATURES $(cat /sys/bus/virtio/devices/*/features | grep -m1 .)"
step ping
i=0
until ping -c 1 -W 1 ${peer} >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 90 ] || fail "${peer} never answered"
done
ping -c 3 -W 2 ${peer} | tee /tmp/ping
grep -q "3 packets received" /tmp/ping || fail "lost pings to ${peer}"
echo "VT-PING-OK ${peer}"
`;

// A: receives the transfer, then has its link pulled and plugged back, then tells B to stop.
const SCRIPT_A = setup(A, B) + `
step recv
echo "VT-SHA-RECV $(nc -l -p 5000 | sha256sum | cut -d' ' -f1)"
step link
echo VT-LINK-WAIT
i=0
while [ "$(cat /sys/class/net/eth0/carrier)" != 0 ]; do
  i=$((i + 1)); [ $i -lt 300 ] || fail "carrier never went down"; usleep 100000
done
echo VT-LINK-DOWN-SEEN
i=0
while [ "$(cat /sys/class/net/eth0/carrier)" != 1 ]; do
  i=$((i + 1)); [ $i -lt 300 ] || fail "carrier never came back"; usleep 100000
done
echo VT-LINK-UP-SEEN
step ping-after-link
i=0
until ping -c 1 -W 1 ${B} >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 60 ] || fail "no traffic after the link came back"
done
echo VT-PING-AFTER-LINK-OK
step done
echo bye | nc ${B} 5001
`;

// B: sends the blob, then waits for A's goodbye (answering A's pings meanwhile).
const SCRIPT_B = setup(B, A) + `
step gen
# 4 MiB from the kernel's generator, repeated: random enough for TCP (a lost, doubled or
# misplaced segment changes the hash) and quick to make under TCG.
dd if=/dev/urandom of=/tmp/r4 bs=1M count=4 2>/dev/null
for i in $(seq ${MIB / 4}); do cat /tmp/r4; done > /tmp/blob
rm /tmp/r4
echo "VT-SHA-SENT $(sha256sum /tmp/blob | cut -d' ' -f1)"
echo "VT-GEN-DONE $(cut -d' ' -f1 /proc/uptime)"
step send
t0=$(cut -d' ' -f1 /proc/uptime)
i=0
until nc ${A} 5000 < /tmp/blob; do
  i=$((i + 1)); [ $i -lt 60 ] || fail "could not connect to ${A}"; sleep 1
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "VT-SEND-TIME $t0 $t1"
step wait
nc -l -p 5001 > /dev/null
`;

describe("two guests wired through the socket backend (QEMU TCG, vhost-user)", {
  timeout: 300_000,
}, () => {
  let dir: string;
  let a: NetDevice;
  let b: NetDevice;
  let boxA: Sandbox;
  let boxB: Sandbox;
  let ra: BootResult;
  let rb: BootResult;
  const errors: string[] = [];
  const linkEvents: string[] = [];
  let wallMs = 0;

  before(async () => {
    await ensureGuest();
    dir = mkdtempSync(join(tmpdir(), "vt-net-e2e-"));
    const wire = (me: string, peer: string, mac: string) =>
      new NetDevice({
        backend: new SocketNetBackend({ bind: join(dir, me), peer: join(dir, peer) }),
        mac,
        onError: (e) => errors.push(`${me}: ${e.message}`),
      });
    a = wire("a.dgram", "b.dgram", "52:54:00:00:07:01");
    b = wire("b.dgram", "a.dgram", "52:54:00:00:07:02");
    const backendOptions = { configSpace: false, onError: (e: Error) => errors.push(e.message) };
    boxA = await Sandbox.start({
      devices: [{
        id: "neta",
        kind: "net",
        device: a,
        backendOptions,
        qemuProperties: "mac=52:54:00:00:07:01",
      }],
    });
    boxB = await Sandbox.start({
      devices: [{
        id: "netb",
        kind: "net",
        device: b,
        backendOptions,
        qemuProperties: "mac=52:54:00:00:07:02",
      }],
    });
    const qmpSocket = join(dir, "qmp-a.sock");
    let seen = "";
    let link: Promise<void> | undefined;
    const started = performance.now();
    [ra, rb] = await Promise.all([
      boxA.boot({
        script: SCRIPT_A,
        qmpSocket,
        timeoutSec: 280,
        onOutput: (chunk: string) => {
          seen += chunk;
          if (link === undefined && seen.includes("VT-LINK-WAIT")) {
            link = (async () => {
              const qmp = await Qmp.connect(qmpSocket);
              try {
                await qmp.execute("set_link", { name: "neta", up: false });
                linkEvents.push("down");
                while (!seen.includes("VT-LINK-DOWN-SEEN")) {
                  await new Promise((r) => setTimeout(r, 50));
                  if (seen.includes("VT-RESULT")) return;
                }
                await qmp.execute("set_link", { name: "neta", up: true });
                linkEvents.push("up");
              } finally {
                qmp.close();
              }
            })().catch((e) => void errors.push(`qmp: ${e.message}`));
          }
        },
      }),
      boxB.boot({ script: SCRIPT_B, timeoutSec: 280 }),
    ]);
    wallMs = Math.round(performance.now() - started);
    await link;
    if (!ra.passed) console.error("guest A:\n" + ra.output);
    if (!rb.passed) console.error("guest B:\n" + rb.output);
  });

  after(async () => {
    await boxA?.stop();
    await boxB?.stop();
    a?.remove();
    b?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("both guests ping each other", () => {
    assert.match(ra.output, new RegExp(`^VT-PING-OK ${B.replaceAll(".", "\\.")}$`, "m"), ra.output);
    assert.match(rb.output, new RegExp(`^VT-PING-OK ${A.replaceAll(".", "\\.")}$`, "m"), rb.output);
  });

  it(`a ${MIB} MiB TCP transfer from B to A arrives with the same SHA-256`, () => {
    const sent = /^VT-SHA-SENT ([0-9a-f]{64})$/m.exec(rb.output)?.[1];
    const got = /^VT-SHA-RECV ([0-9a-f]{64})$/m.exec(ra.output)?.[1];
    assert.ok(sent !== undefined, rb.output);
    assert.equal(got, sent, ra.output);
    assert.ok(b.stats.txBytes >= MIB << 20, `B sent ${b.stats.txBytes} bytes`);
    assert.ok(a.stats.rxBytes >= MIB << 20, `A received ${a.stats.rxBytes} bytes`);
    const t = /^VT-SEND-TIME ([\d.]+) ([\d.]+)$/m.exec(rb.output);
    if (t) {
      const s = Number(t[2]) - Number(t[1]);
      console.log(
        `net e2e: ${MIB} MiB guest→guest in ${s.toFixed(1)} s of guest time ` +
          `(${(MIB / s).toFixed(1)} MiB/s under TCG); whole run ${(wallMs / 1000).toFixed(1)} s, ` +
          `guests up ${/VT-END uptime=([\d.]+)/.exec(ra.output)?.[1]} s and ` +
          `${/VT-END uptime=([\d.]+)/.exec(rb.output)?.[1]} s, init after ` +
          `${ra.bootToInitMs} and ${rb.bootToInitMs} ms`,
      );
    }
  });

  it("the offloads go from one driver to the other through the socket", () => {
    // Both drivers negotiated checksum and segmentation offload: B's TSO frames reach A's
    // driver whole (A's device delivers them as GSO) instead of being cut into 1500-byte ones.
    assert.ok(b.stats.txGso > 0 && a.stats.rxGso > 0, JSON.stringify([b.stats, a.stats]));
    const features = /^VT-FEATURES ([01]+)$/m.exec(ra.output)?.[1] ?? "";
    for (const bitNo of [0, 1, 7, 11, 15]) assert.equal(features[bitNo], "1", `feature ${bitNo}`);
  });

  it("guest A sees its link go down and up (QMP set_link), and traffic resumes", () => {
    assert.deepEqual(linkEvents, ["down", "up"], errors.join("\n"));
    assert.match(ra.output, /^VT-LINK-DOWN-SEEN$/m, ra.output);
    assert.match(ra.output, /^VT-LINK-UP-SEEN$/m);
    assert.match(ra.output, /^VT-PING-AFTER-LINK-OK$/m);
  });

  it("no frame was dropped for a bad header, and both runs pass", () => {
    for (const d of [a, b]) {
      for (const drops of [d.stats.rxDrops, d.stats.txDrops]) {
        for (const k of ["badGso", "badCsum", "badHdrLen", "oversize", "gsoRefused", "truncated"]) {
          assert.equal((drops as Record<string, number>)[k], 0, `${k}: ${JSON.stringify(d.stats)}`);
        }
      }
    }
    assert.deepEqual(errors, []);
    assert.equal(ra.passed, true, ra.output);
    assert.equal(rb.passed, true, rb.output);
  });
});
