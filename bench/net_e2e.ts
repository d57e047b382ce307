/**
 * End-to-end vhost-user-net benchmark without a VM: our TypeScript vhost-user frontend
 * (`testing/vhost_user_frontend.ts`, memfd guest memory, one queue pair of 1024 entries) plays
 * the guest and keeps both rings full: every transmit chain is a frame, every receive buffer
 * 2 KiB. The backend loops each frame back: ours (`vhost_user/main.ts --device net
 * --loopback`, its own process) and DPDK's `dpdk-testpmd` with its vhost-user PMD in io-forward
 * mode on a looped port (`--no-huge`). The frontend busy-polls the used rings (interrupts
 * suppressed with EVENT_IDX, as a polling driver does) and counts frames that came back.
 *
 * Before measuring, it sends a few distinct frames through each backend and checks they come
 * back intact. Prints Mpps for 64 B frames and Gbit/s for 1500 B frames, ours as it comes
 * (event-driven), ours in poll mode (`--poll-us`) and DPDK (which always polls), with the
 * ratios, medians over the rounds.
 *
 * DPDK's test application comes from the Debian package `dpdk-dev` (Debian 12's `dpdk` only
 * has the scripts) with the vhost PMD `librte-net-vhost23`; the script installs them when
 * missing (root or passwordless sudo).
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/net_e2e.ts [--seconds S] [--rounds N]
 * [--poll-us N] [--bun]`
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { type BackendProcess, spawnListening, startBackend } from "../launcher/backends.ts";
import { VhostUserFrontend } from "../testing/vhost_user_frontend.ts";
import { concatBytes, ethFrame, netHeader } from "../testing/net_driver.ts";
import { featureBit, VIRTIO_F_VERSION_1 } from "../devices/device.ts";
import { VIRTIO_F_EVENT_IDX } from "../queue/split.ts";
import { VIRTIO_NET_F_MRG_RXBUF } from "../devices/net.ts";
import { ProtocolFeature } from "../vhost_user/protocol.ts";

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    seconds: { type: "string", default: "2" },
    rounds: { type: "string", default: "3" },
    "poll-us": { type: "string", default: "200" },
    bun: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  console.log(
    "Usage: deno run -A bench/net_e2e.ts [--seconds S] [--rounds N] [--poll-us N] [--bun]",
  );
  process.exit(0);
}
const seconds = Number(opts.seconds);
const rounds = Number(opts.rounds);
const pollUs = Number(opts["poll-us"]);
const dir = mkdtempSync(join(tmpdir(), "vt-net-bench-"));

const RING = 1024;
const RX_BUFFER = 2048;
const FEATURES = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_NET_F_MRG_RXBUF) |
  featureBit(VIRTIO_F_EVENT_IDX);
const SIZES = [64, 1500];

function onPath(name: string): boolean {
  return (process.env.PATH ?? "").split(":").some((d) => existsSync(`${d}/${name}`));
}

/** Install DPDK's test application when missing; false when it cannot be had. */
function ensureTestpmd(): boolean {
  if (onPath("dpdk-testpmd")) return true;
  const sudo = process.getuid?.() === 0 ? [] : ["sudo", "-n"];
  const pkgs = ["dpdk-dev", "librte-net-vhost23", "librte-mempool-ring23"];
  console.log(`installing ${pkgs.join(" ")} for dpdk-testpmd ...`);
  const args = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...pkgs];
  let r = spawnSync(
    sudo[0] ?? args[0],
    [...sudo.slice(1), ...(sudo.length ? args : args.slice(1))],
    {
      stdio: "inherit",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    },
  );
  if (r.status !== 0) {
    const update = ["apt-get", "update", "-qq"];
    spawnSync(
      sudo[0] ?? update[0],
      [...sudo.slice(1), ...(sudo.length ? update : update.slice(1))],
      {
        stdio: "inherit",
      },
    );
    r = spawnSync(sudo[0] ?? args[0], [...sudo.slice(1), ...(sudo.length ? args : args.slice(1))], {
      stdio: "inherit",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  }
  return onPath("dpdk-testpmd");
}

interface Peer {
  name: string;
  start(socket: string): Promise<BackendProcess>;
}

const ours = (poll: number): Peer => ({
  name: poll > 0 ? `ours, poll ${poll} µs` : "ours",
  start: (socket) => {
    rmSync(socket, { force: true });
    return startBackend(
      [
        "--socket",
        socket,
        "--device",
        "net",
        "--loopback",
        ...["--queue-size", String(RING)],
        ...(poll > 0 ? ["--poll-us", String(poll)] : []),
      ],
      { runtime: opts.bun ? "bun" : "deno" },
    );
  },
});

const dpdk: Peer = {
  name: "DPDK testpmd",
  start: (socket) => {
    rmSync(socket, { force: true });
    // io forwarding on one port looped to itself: what arrives on the guest's transmit ring
    // goes back on its receive ring. --stats-period keeps testpmd from waiting on stdin.
    return spawnListening("dpdk-testpmd", [
      ...[
        "-l",
        "0,1",
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--file-prefix",
        `vtnet${process.pid}`,
      ],
      ...["--vdev", `net_vhost0,iface=${socket},queues=1`],
      ...["--log-level", "lib.eal:error", "--log-level", "lib.vhost.config:error"],
      "--",
      ...["--forward-mode=io", "--port-topology=loop", "--nb-cores=1"],
      ...[`--txd=${RING}`, `--rxd=${RING}`, "--total-num-mbufs=16384", "--auto-start"],
      "--stats-period=3600",
    ], socket);
  },
};

interface Rig {
  fe: VhostUserFrontend;
  rxHeads: number[];
  txHeads: number[];
}

async function connect(socket: string, frame: Uint8Array): Promise<Rig> {
  const fe = await VhostUserFrontend.connect(socket, { memorySize: 32 << 20 });
  await fe.setOwner();
  const offered = await fe.getFeatures();
  const protocolBit = 1n << 30n;
  if ((offered & protocolBit) !== 0n) {
    const p = await fe.getProtocolFeatures();
    await fe.setProtocolFeatures(
      p & (featureBit(ProtocolFeature.MQ) | featureBit(ProtocolFeature.REPLY_ACK)),
    );
  }
  await fe.setFeatures((offered & FEATURES) | (offered & protocolBit));
  await fe.setMemTable();
  await fe.setupRing(0, { size: RING, bufferSize: RING * RX_BUFFER + 65536 });
  await fe.setupRing(1, { size: RING, bufferSize: RING * (frame.length + 64) + 65536 });
  const rx = fe.ring(0).driver;
  const tx = fe.ring(1).driver;
  rx.suppressInterrupts(true);
  tx.suppressInterrupts(true);
  const rxHeads = Array.from(
    { length: RING },
    () => rx.addChain([{ writable: RX_BUFFER }], { publish: false }),
  );
  const txHeads = Array.from(
    { length: RING / 2 },
    () => tx.addChain([{ readable: frame }], { publish: false }),
  );
  return { fe, rxHeads, txHeads };
}

/** Send a few distinct frames and check they come back intact. */
async function check(socket: string): Promise<void> {
  const frames = [1, 2, 3, 4].map((v) => ethFrame({ payload: new Uint8Array(200).fill(v) }));
  const fe = await VhostUserFrontend.connect(socket, { memorySize: 16 << 20 });
  try {
    await fe.start({
      queues: 2,
      queueSize: 256,
      features: FEATURES,
      protocolFeatures: featureBit(ProtocolFeature.MQ) | featureBit(ProtocolFeature.REPLY_ACK),
    });
    const rx = fe.ring(0).driver;
    for (let i = 0; i < 16; i++) rx.addChain([{ writable: RX_BUFFER }]);
    fe.kick(0, { force: true });
    for (const f of frames) fe.ring(1).driver.addChain([{ readable: concatBytes(netHeader(), f) }]);
    fe.kick(1, { force: true });
    const got: Uint8Array[] = [];
    const end = performance.now() + 5000;
    while (got.length < frames.length && performance.now() < end) {
      const u = rx.takeUsed();
      if (u === null) {
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      got.push(u.written.slice(12, u.len));
    }
    for (const [i, f] of frames.entries()) {
      const g = got[i];
      if (g === undefined || g.length !== f.length || g.some((b, j) => b !== f[j])) {
        throw new Error(`frame ${i} did not come back intact (${got.length} came back)`);
      }
    }
  } finally {
    await fe.close();
  }
}

/** Keep both rings full for `secs` seconds; frames per second that came back. */
function pump(r: Rig, secs: number): number {
  const fe = r.fe;
  const mem = fe.memory;
  const rx = fe.ring(0).driver;
  const tx = fe.ring(1).driver;
  for (const h of r.rxHeads) rx.publish(h);
  for (const h of r.txHeads) tx.publish(h);
  fe.kick(0, { force: true });
  fe.kick(1, { force: true });
  let rxSeen = rx.usedIdx();
  let txSeen = tx.usedIdx();
  let frames = 0;
  let warm = true;
  const start = performance.now();
  let measureStart = start;
  let end = start + secs * 1000 + 200;
  for (let spin = 0;; spin++) {
    let progressed = false;
    const ru = rx.usedIdx();
    while (rxSeen !== ru) {
      rx.publish(mem.readU32(rx.usedRing + 4 + 8 * (rxSeen & (RING - 1))));
      rxSeen = (rxSeen + 1) & 0xffff;
      frames++;
      progressed = true;
    }
    const tu = tx.usedIdx();
    while (txSeen !== tu) {
      tx.publish(mem.readU32(tx.usedRing + 4 + 8 * (txSeen & (RING - 1))));
      txSeen = (txSeen + 1) & 0xffff;
      progressed = true;
    }
    if (progressed) {
      // Interrupts stay off (far used_event); notify the backend only when it asked.
      rx.setUsedEvent(rxSeen + 0x8000);
      tx.setUsedEvent(txSeen + 0x8000);
      fe.kick(0);
      fe.kick(1);
    }
    if ((spin & 1023) === 0) {
      const now = performance.now();
      if (warm && now - start > 200) {
        warm = false;
        frames = 0;
        measureStart = now;
        end = now + secs * 1000;
      }
      if (!warm && now >= end) return frames / ((now - measureStart) / 1000);
    }
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)];
}

async function measure(peer: Peer, size: number): Promise<number> {
  const socket = join(dir, "net.sock");
  const frame = concatBytes(
    netHeader(),
    ethFrame({ payload: new Uint8Array(size - 14).fill(0x5a) }),
  );
  const rates: number[] = [];
  for (let i = 0; i < rounds; i++) {
    if (i === 0) {
      const b = await peer.start(socket);
      try {
        await check(socket);
      } finally {
        await b.stop();
      }
    }
    const backend = await peer.start(socket);
    try {
      const r = await connect(socket, frame);
      try {
        rates.push(pump(r, seconds));
      } finally {
        await r.fe.close();
      }
    } finally {
      await backend.stop();
    }
  }
  return median(rates);
}

const haveDpdk = ensureTestpmd();
const peers = [ours(0), ours(pollUs), ...(haveDpdk ? [dpdk] : [])];
if (!haveDpdk) console.log("dpdk-testpmd not available: measuring ours only");

const results = new Map<string, number>();
for (const size of SIZES) {
  for (const p of peers) {
    const fps = await measure(p, size);
    results.set(`${p.name}|${size}`, fps);
    console.log(`${p.name.padEnd(20)} ${String(size).padStart(5)} B: ${fmt(size, fps)}`);
  }
}

function fmt(size: number, fps: number): string {
  return size <= 64
    ? `${(fps / 1e6).toFixed(3)} Mpps`
    : `${(fps * size * 8 / 1e9).toFixed(2)} Gbit/s (${(fps / 1e3).toFixed(0)} k frames/s)`;
}

const rows = [[
  "frames",
  ...peers.map((p) => p.name),
  ...(haveDpdk ? ["ours/DPDK", "poll/DPDK"] : []),
]];
for (const size of SIZES) {
  const v = peers.map((p) => results.get(`${p.name}|${size}`)!);
  const row = [`${size} B`, ...v.map((fps) => fmt(size, fps))];
  if (haveDpdk) row.push((v[0] / v[2]).toFixed(2), (v[1] / v[2]).toFixed(2));
  rows.push(row);
}
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
console.log();
for (const [i, r] of rows.entries()) {
  console.log(
    "| " + r.map((c, j) => (j === 0 ? c.padEnd(widths[j]) : c.padStart(widths[j]))).join(" | ") +
      " |",
  );
  if (i === 0) console.log("| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |");
}
rmSync(dir, { recursive: true, force: true });
