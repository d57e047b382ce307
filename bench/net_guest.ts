/**
 * A guest-level figure: TCP throughput from a real Linux guest (QEMU TCG) to the host through
 * the same tap, (i) with our virtio-net backend over vhost-user (`vhost_user/main.ts --device
 * net --tap`) and (ii) with QEMU's own in-process virtio-net (`-netdev tap,vhost=off`), in the
 * same run, alternating. Both use INTx (`vectors=0`, which vhost-user net needs on QEMU 7.2)
 * and the same guest, tap, offloads and transfer. TCG makes every absolute figure an
 * emulation figure: only the ratio means something.
 *
 * Everything happens in a network namespace the script creates and removes (the tap and the
 * addresses exist only there; QEMU with its own virtio-net runs inside it too). Needs root.
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/net_guest.ts [--mib N] [--rounds N]`
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { bootGuest, type BootResult, ensureGuest, Sandbox } from "../launcher/mod.ts";

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    mib: { type: "string", default: "64" },
    rounds: { type: "string", default: "2" },
  },
});
const MIB = Number(opts.mib);
const ROUNDS = Number(opts.rounds);
const NS = `vt-net-bench-${process.pid}`;
const TAP = "vtbench0";
const HOST = "10.0.10.1";
const GUEST = "10.0.10.2";

function sh(cmd: string[]): void {
  const r = spawnSync(cmd[0], cmd.slice(1), { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr}`);
}

const SCRIPT = `
ip link set eth0 up
ip addr add ${GUEST}/24 dev eth0
i=0
until ping -c 1 -W 1 ${HOST} >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 60 ] || fail "no ping"
done
dd if=/dev/zero of=/tmp/blob bs=1M count=${MIB} 2>/dev/null
t0=$(cut -d' ' -f1 /proc/uptime)
nc ${HOST} 5001 < /tmp/blob
t1=$(cut -d' ' -f1 /proc/uptime)
echo "VT-TCP $t0 $t1"
`;

/** A host-side sink in the namespace (stdin kept open: busybox nc quits on stdin EOF). */
function sink(): ChildProcess {
  return spawn("ip", ["netns", "exec", NS, "busybox", "nc", "-l", "-p", "5001"], {
    stdio: ["pipe", "ignore", "inherit"],
  });
}

function seconds(r: BootResult): number {
  const m = /^VT-TCP ([\d.]+) ([\d.]+)$/m.exec(r.output);
  if (!r.passed || m === null) throw new Error(`guest run failed:\n${r.output.slice(-3000)}`);
  return Number(m[2]) - Number(m[1]);
}

async function ours(dir: string): Promise<number> {
  const s = sink();
  const box = await Sandbox.start({
    dir,
    devices: [{
      id: "net0",
      kind: "net",
      cli: ["--tap", TAP],
      prefix: ["ip", "netns", "exec", NS],
    }],
  });
  try {
    return seconds(await box.boot({ script: SCRIPT, timeoutSec: 300 }));
  } finally {
    await box.stop();
    s.kill();
  }
}

async function qemu(dir: string): Promise<number> {
  const s = sink();
  // QEMU opens the tap, so it runs in the namespace.
  const wrapper = join(dir, "qemu-in-ns.sh");
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${NS} qemu-system-x86_64 "$@"\n`);
  chmodSync(wrapper, 0o755);
  try {
    return seconds(
      await bootGuest({
        qemu: wrapper,
        script: SCRIPT,
        timeoutSec: 300,
        args: [
          ...["-netdev", `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=off`],
          ...["-device", "virtio-net-pci,netdev=n0,vectors=0"],
        ],
      }),
    );
  } finally {
    s.kill();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

await ensureGuest();
const dir = mkdtempSync(join(tmpdir(), "vt-net-guest-bench-"));
sh(["ip", "netns", "add", NS]);
try {
  sh(["ip", "-n", NS, "link", "set", "lo", "up"]);
  sh(["ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap"]);
  sh(["ip", "-n", NS, "addr", "add", `${HOST}/24`, "dev", TAP]);
  sh(["ip", "-n", NS, "link", "set", TAP, "up"]);
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    a.push(await ours(dir));
    console.log(`ours: ${MIB} MiB in ${a.at(-1)!.toFixed(2)} s of guest time`);
    b.push(await qemu(dir));
    console.log(`QEMU virtio-net (vhost=off): ${MIB} MiB in ${b.at(-1)!.toFixed(2)} s`);
  }
  const ra = MIB / median(a);
  const rb = MIB / median(b);
  console.log(
    `\nTCP guest→host, ${MIB} MiB, median of ${ROUNDS}: ours ${ra.toFixed(1)} MiB/s, ` +
      `QEMU ${rb.toFixed(1)} MiB/s (TCG figures), ours/QEMU ${(ra / rb).toFixed(2)}`,
  );
} finally {
  spawnSync("ip", ["netns", "del", NS]);
  rmSync(dir, { recursive: true, force: true });
}
