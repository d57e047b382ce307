/**
 * End-to-end vsock benchmark without a VM: our TypeScript vhost-user frontend plays the guest
 * (`bench/_vsock_load.ts`: fixed buffers, credit handled as Linux's driver does) against our
 * backend process (`vhost_user/main.ts --device vsock --uds-path`), whose host side is Unix
 * sockets served by plain blocking host programs (`bench/_uds_peer.ts`, their own processes).
 * The same host programs, connected to each other through a Unix socket, are the baseline:
 * the physical limit of moving bytes between two host processes on this machine, in the same
 * run.
 *
 * Figures: guest → host and host → guest throughput with 4 KiB and 64 KiB packets (the host
 * program writes in chunks of the same size; the guest's receive buffers are that size), and
 * connection set-up rate (guest REQUEST → device connects to `<uds>_P` → RESPONSE), next to a
 * host `connect`+`close` loop. Throughput is measured at the receiver, from the first byte to
 * the end of stream. Medians over the rounds; the ratio is the median of the rounds' ratios.
 *
 * Run: `node_modules/.bin/deno run --allow-all bench/vsock_e2e.ts [--mib M] [--rounds N]
 * [--conns N] [--buffer-size BYTES]` (`--buffer-size`: buf_alloc per connection of both the
 * device, `--vsock-buffer-size` of the CLI, and the benchmark guest; default 256 KiB, the
 * defaults of both and of Linux)
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { startBackend } from "../launcher/backends.ts";
import { VsockLoad } from "./_vsock_load.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const DENO = join(ROOT, "node_modules", ".bin", "deno");
const PEER = join(ROOT, "bench", "_uds_peer.ts");

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    mib: { type: "string", default: "256" },
    rounds: { type: "string", default: "3" },
    conns: { type: "string", default: "2000" },
    "buffer-size": { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  console.log(
    "Usage: deno run -A bench/vsock_e2e.ts [--mib M] [--rounds N] [--conns N] [--buffer-size B]",
  );
  process.exit(0);
}
const BYTES = Number(opts.mib) << 20;
const ROUNDS = Number(opts.rounds);
const CONNS = Number(opts.conns);
const BUFFER = opts["buffer-size"] === undefined
  ? []
  : ["--vsock-buffer-size", opts["buffer-size"]];

/** A host program: its JSON result lines, in order. */
class Peer {
  readonly child: ChildProcess;
  readonly #lines: unknown[] = [];
  readonly #waiters: ((v: unknown) => void)[] = [];
  readonly exited: Promise<void>;

  constructor(args: string[]) {
    this.child = spawn(DENO, ["run", "--allow-all", PEER, ...args], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    createInterface({ input: this.child.stdout! }).on("line", (line) => {
      const v = JSON.parse(line);
      const w = this.#waiters.shift();
      if (w) w(v);
      else this.#lines.push(v);
    });
    this.exited = new Promise((r) => this.child.once("exit", () => r()));
  }

  next<T>(): Promise<T> {
    if (this.#lines.length > 0) return Promise.resolve(this.#lines.shift() as T);
    return new Promise((r) => this.#waiters.push(r as (v: unknown) => void));
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) this.child.kill("SIGTERM");
    await this.exited;
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mbps = (r: { bytes: number; seconds: number }) => r.bytes / r.seconds / 1e6;

const dir = mkdtempSync(join(tmpdir(), "vt-vsock-bench-"));
const sock = join(dir, "vsock.sock");
const uds = join(dir, "vsock.uds");
const backend = await startBackend([
  ...["--socket", sock, "--device", "vsock", "--guest-cid", "3", "--uds-path", uds],
  ...BUFFER,
]);
const peers: Peer[] = [];
const results: Record<string, number[]> = {};
const record = (k: string, v: number) => (results[k] ??= []).push(v);

try {
  // Long-lived host services: a sink behind the device (port 5000), a sink for the baseline,
  // and closers for the connection rates.
  const vsockSink = new Peer(["sink", `${uds}_5000`]);
  const baseSink = new Peer(["sink", join(dir, "base.sock")]);
  const vsockCloser = new Peer(["closer", `${uds}_5002`]);
  const baseCloser = new Peer(["closer", join(dir, "closer.sock")]);
  peers.push(vsockSink, baseSink, vsockCloser, baseCloser);
  for (const p of peers) await p.next();

  for (let round = 0; round < ROUNDS; round++) {
    for (const packet of [4096, 65536]) {
      const k = `${packet >> 10} KiB`;
      // Baseline: two host processes, one Unix socket.
      const src = new Peer(["source", join(dir, "base.sock"), String(BYTES), String(packet)]);
      record(`host ${k}`, mbps(await baseSink.next<{ bytes: number; seconds: number }>()));
      await src.next();
      await src.exited;
      // Guest → host and host → guest through the device.
      const load = await VsockLoad.start(sock, {
        guestCid: 3,
        rxPayload: packet,
        txPayload: packet,
        bufAlloc: opts["buffer-size"] === undefined ? undefined : Number(opts["buffer-size"]),
      });
      try {
        await load.streamToHost(5000, BYTES, packet);
        record(`g2h ${k}`, mbps(await vsockSink.next<{ bytes: number; seconds: number }>()));
        const receiving = load.streamFromHost();
        const source = new Peer(["source", uds, String(BYTES), String(packet), "5001"]);
        const got = await receiving;
        await source.next();
        await source.exited;
        if (got.bytes !== BYTES) throw new Error(`host → guest: ${got.bytes} of ${BYTES} bytes`);
        record(`h2g ${k}`, mbps(got));
        if (packet === 4096) {
          const secs = await load.connectMany(5002, CONNS, 32);
          record("g2h conns", CONNS / secs);
          const c = new Peer(["connects", join(dir, "closer.sock"), String(CONNS)]);
          const r = await c.next<{ count: number; seconds: number }>();
          await c.exited;
          record("host conns", r.count / r.seconds);
        }
      } finally {
        await load.close();
      }
    }
    console.error(`round ${round + 1}/${ROUNDS} done`);
  }
} finally {
  for (const p of peers) await p.stop();
  await backend.stop();
  rmSync(dir, { recursive: true, force: true });
}

const m = (k: string) => median(results[k]);
// The ratio is the median of each round's ratio (host and vsock measured moments apart), which
// holds better than a ratio of medians on a machine whose load moves.
const ratio = (host: string, ours: string) =>
  median(results[ours].map((v, i) => v / results[host][i]));
const row = (name: string, host: string, ours: string, unit: string) =>
  `| ${name.padEnd(28)} | ${m(host).toFixed(0).padStart(8)} ${unit} | ${
    m(ours).toFixed(0).padStart(8)
  } ${unit} | ${ratio(host, ours).toFixed(2).padStart(5)} |`;
console.log(
  `\nvsock end to end: ${ROUNDS} rounds of ${BYTES >> 20} MiB, ${CONNS} connections, ` +
    `buf_alloc ${opts["buffer-size"] ?? 262144}; ` +
    `${cpus().length} cores (${cpus()[0]?.model ?? "?"}), Deno ${process.versions.deno ?? "?"}\n`,
);
console.log(
  `| ${"case".padEnd(28)} | ${"host Unix socket".padStart(17)} | ${"vsock".padStart(17)} | ratio |`,
);
console.log(`| ${"-".repeat(28)} | ${"-".repeat(16)}: | ${"-".repeat(16)}: | ----: |`);
for (const k of ["4 KiB", "64 KiB"]) {
  console.log(row(`guest → host, ${k} packets`, `host ${k}`, `g2h ${k}`, "MB/s"));
  console.log(row(`host → guest, ${k} packets`, `host ${k}`, `h2g ${k}`, "MB/s"));
}
console.log(row("connection set-up", "host conns", "g2h conns", "/s  "));
