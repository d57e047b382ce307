/**
 * Command-line vhost-user backend: serve one of our devices on a Unix socket.
 *
 * ```sh
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vblk.sock --device blk --file disk.img
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vrng.sock --device rng
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vnet.sock --device net --tap vt0
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vsock.sock --device vsock \
 *   --guest-cid 3 --uds-path /tmp/vsock.uds
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vfs.sock --device fs --shared-dir /srv --tag share
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import type { VirtioDevice } from "../devices/device.ts";
import { RNG_MAX_PERIOD_MS, RngDevice } from "../devices/rng.ts";
import { BlockDevice, FileBackend, OverlayBackend } from "../devices/block.ts";
import {
  LoopbackNetBackend,
  type NetBackend,
  NetDevice,
  SocketNetBackend,
  TapNetBackend,
} from "../devices/net.ts";
import { writeFileSync } from "node:fs";
import { MAX_POLL_US, UnsealedMemoryWarning, VhostUserBackend } from "./backend.ts";
import { VsockDevice } from "../devices/vsock.ts";
import { FsDevice } from "../devices/fs.ts";
import { getrlimit, RLIMIT_NOFILE, setrlimit } from "../sys/mod.ts";

const USAGE = `Usage: vhost_user/main.ts --socket PATH --device rng|blk|vsock|fs|net [options]

Serves a virtio device to a vhost-user frontend (QEMU, Cloud Hypervisor, ...).

Options:
  --socket PATH     Unix socket to listen on (required)
  --device NAME     rng, blk, vsock, fs or net (required)
  --file PATH       blk: the raw disk image or block device
  --readonly        blk: refuse writes (VIRTIO_BLK_F_RO); fs: a read-only share (EROFS)
  --overlay PATH    blk: copy-on-write overlay file over --file, which is then opened
                    read-only and never written (the overlay is created when missing)
  --serial TEXT     blk: serial number reported by GET_ID (up to 20 bytes)
  --queues N        blk, fs: number of request queues (default 1; fs: at least QEMU's
                    num-request-queues); net: queue pairs
  --block-size N    blk: logical block size in bytes, a power of two from 512 (default 512)
  --physical-block-size N
                    blk: physical block size, a power-of-two multiple of --block-size
  --writethrough    blk: start in writethrough mode (every write made durable before it
                    completes; the driver may switch with CONFIG_WCE); default writeback
  --shared-dir DIR  fs: the directory shared with the guest; the guest reaches nothing
                    outside it (no .., no symbolic link followed on the host)
  --tag TAG         fs: the mount tag (mount -t virtiofs TAG /mnt); QEMU's vhost-user-fs-pci
                    takes its own tag=, which must match
  --cache MODE      fs: never (no caching, direct I/O), auto (default: 1 s of caching),
                    always (a day; data and directory caches kept)
  --rng-max-bytes N rng: rate limit, at most N random bytes per period (default: no limit;
                    a request then waits in the ring for the next period)
  --rng-period-ms N rng: the rate limit's period in milliseconds (default 1000)
  --tap NAME        net: a tap device, created when missing (needs root or CAP_NET_ADMIN);
                    with --queues N above 1 it is multi-queue
  --socket-peer PATH
                    net: frames as Unix datagrams to the peer's socket, one frame per
                    datagram preceded by its 12-byte virtio_net_hdr (offloads pass through);
                    two backends with each other's paths are wired together
  --socket-bind PATH
                    net: this end's datagram socket (default: an abstract address)
  --socket-raw      net: datagrams are bare Ethernet frames (as QEMU's -netdev dgram), no
                    offloads
  --loopback        net: every frame sent comes back (for benchmarks)
  --mac MAC         net: MAC address for our own VMM (QEMU supplies its own; default random)
  --mtu N           net: MTU offered, 68..65535 (default 1500)
  --queue-size N    net: size of each queue, a power of two up to 32768 (default 256; QEMU's
                    rx_queue_size/tx_queue_size go up to 1024)
  --stats PATH      net: write the device counters there as JSON when the backend exits
  --guest-cid N     vsock: the guest's CID, 3 to 4294967294 (required)
  --uds-path PATH   vsock: host side as Unix sockets: host programs connect to PATH and
                    write "CONNECT <port>\\n" (answered "OK <host-port>\\n"); guest
                    connections to CID 2 port P reach the socket listening at PATH_P
  --vsock-buffer-size N
                    vsock: receive buffer per connection (buf_alloc), the most guest bytes
                    held for a host socket that does not keep up (default 262144)
  --poll-us N       poll mode: keep checking the rings for N µs (up to 1000) after serving
                    a kick; lower latency for a busy guest, at the cost of CPU (default 0)
  --queue-threads   serve each ring on a thread of its own (a Worker blocked on the ring's
                    kick eventfd), the event loop keeping the control messages: fewer thread
                    switches per request and multi-queue rings in parallel, for a runtime's
                    worth of memory per ring (blk on an image file; other devices and blk
                    overlays stay on the event loop). Default: one thread serves everything
  --require-sealed-memory
                    refuse guest memory not sealed against shrinking (F_SEAL_SHRINK); by
                    default it is served with a warning, since a frontend that truncates it
                    would kill this process with SIGBUS (QEMU's memory-backend-memfd seals)
  --once            exit after the first frontend disconnects
  --verbose         log connections and ring state changes
  --help            show this text

Example with QEMU:
  qemu-system-x86_64 -M q35 -m 512M \\
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \\
    -chardev socket,id=c0,path=PATH -device vhost-user-blk-pci,chardev=c0
  (fs: -device vhost-user-fs-pci,chardev=c0,tag=TAG; files are created as this process's
   user and group)
  net: -chardev socket,id=n0,path=PATH -netdev vhost-user,chardev=n0,id=n0[,queues=N]
    -device virtio-net-pci,netdev=n0,vectors=0 (QEMU 7.2 under TCG needs vectors=0)`;

/**
 * An integer option: `fallback` when absent, `null` (after saying why) when it is not an
 * integer in `[min, max]`.
 */
function intOption<T extends number | undefined>(
  value: string | undefined,
  name: string,
  fallback: T,
  min = Number.MIN_SAFE_INTEGER,
  max = Number.MAX_SAFE_INTEGER,
): number | T | null {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (Number.isSafeInteger(n) && n >= min && n <= max) return n;
  const range = min === Number.MIN_SAFE_INTEGER ? "an integer" : `${min}..${max}`;
  console.error(`--${name} must be ${range}, got ${value}`);
  return null;
}

/**
 * Run the CLI.
 * @param argv Arguments (without the program name).
 * @returns The process exit code.
 */
export async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        socket: { type: "string" },
        device: { type: "string" },
        file: { type: "string" },
        readonly: { type: "boolean", default: false },
        overlay: { type: "string" },
        serial: { type: "string" },
        queues: { type: "string" },
        "poll-us": { type: "string" },
        "queue-threads": { type: "boolean", default: false },
        "rng-max-bytes": { type: "string" },
        "rng-period-ms": { type: "string" },
        "block-size": { type: "string" },
        "guest-cid": { type: "string" },
        "uds-path": { type: "string" },
        "vsock-buffer-size": { type: "string" },
        "physical-block-size": { type: "string" },
        "shared-dir": { type: "string" },
        tag: { type: "string" },
        cache: { type: "string" },
        writethrough: { type: "boolean", default: false },
        tap: { type: "string" },
        "socket-peer": { type: "string" },
        "socket-bind": { type: "string" },
        "socket-raw": { type: "boolean", default: false },
        loopback: { type: "boolean", default: false },
        mac: { type: "string" },
        mtu: { type: "string" },
        "queue-size": { type: "string" },
        stats: { type: "string" },
        "require-sealed-memory": { type: "boolean", default: false },
        once: { type: "boolean", default: false },
        verbose: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
      strict: true,
    }).values;
  } catch (err) {
    console.error(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  if (args.socket === undefined || args.device === undefined) {
    console.error(`--socket and --device are required\n\n${USAGE}`);
    return 2;
  }
  // Every number is checked before anything is opened or created.
  const pollUs = intOption(args["poll-us"], "poll-us", 0, 0, MAX_POLL_US);
  if (pollUs === null) return 2;
  const rngOptions = args["rng-max-bytes"] !== undefined || args["rng-period-ms"] !== undefined;
  if (rngOptions && args.device !== "rng") {
    console.error("--rng-max-bytes and --rng-period-ms are for --device rng");
    return 2;
  }
  const fsOptions = args["shared-dir"] !== undefined || args.tag !== undefined ||
    args.cache !== undefined;
  if (fsOptions && args.device !== "fs") {
    console.error("--shared-dir, --tag and --cache are for --device fs");
    return 2;
  }
  if (args["rng-period-ms"] !== undefined && args["rng-max-bytes"] === undefined) {
    console.error("--rng-period-ms needs --rng-max-bytes");
    return 2;
  }
  const rngMaxBytes = intOption(args["rng-max-bytes"], "rng-max-bytes", undefined, 1);
  const rngPeriodMs = intOption(args["rng-period-ms"], "rng-period-ms", 1000, 1, RNG_MAX_PERIOD_MS);
  if (rngMaxBytes === null || rngPeriodMs === null) return 2;
  const vsockOptions = args["guest-cid"] !== undefined || args["uds-path"] !== undefined ||
    args["vsock-buffer-size"] !== undefined;
  if (vsockOptions && args.device !== "vsock") {
    console.error("--guest-cid, --uds-path and --vsock-buffer-size are for --device vsock");
    return 2;
  }
  let device: VirtioDevice;
  let overlay: OverlayBackend | undefined;
  let net: NetDevice | undefined;
  switch (args.device) {
    case "rng":
      device = new RngDevice({
        rateLimit: rngMaxBytes === undefined
          ? undefined
          : { bytes: rngMaxBytes, periodMs: rngPeriodMs },
      });
      break;
    case "blk": {
      if (args.file === undefined) {
        console.error("--device blk needs --file");
        return 2;
      }
      const queues = intOption(args.queues, "queues", 1, 1, 64);
      // The device checks the sizes themselves (powers of two, and so on).
      const blockSize = intOption(args["block-size"], "block-size", undefined);
      const physicalBlockSize = intOption(
        args["physical-block-size"],
        "physical-block-size",
        undefined,
      );
      if (queues === null || blockSize === null || physicalBlockSize === null) return 2;
      const common = {
        readOnly: args.readonly,
        serial: args.serial,
        numQueues: queues,
        blockSize,
        physicalBlockSize,
        writeback: !args.writethrough,
      };
      try {
        if (args.overlay !== undefined) {
          const base = new FileBackend(args.file, { readOnly: true });
          try {
            overlay = OverlayBackend.openFile(base, args.overlay);
          } catch (err) {
            base.close();
            console.error(`cannot open overlay ${args.overlay}: ${(err as Error).message}`);
            return 1;
          }
          device = new BlockDevice({ backend: overlay, ...common });
        } else {
          device = new BlockDevice({ path: args.file, ...common });
        }
      } catch (err) {
        overlay?.close();
        console.error(`--device blk: ${(err as Error).message}`);
        return 1;
      }
      break;
    }
    case "vsock": {
      if (args["guest-cid"] === undefined) {
        console.error("--device vsock needs --guest-cid");
        return 2;
      }
      const cid = intOption(args["guest-cid"], "guest-cid", 0, 3, 0xfffffffe);
      const bufferSize = intOption(
        args["vsock-buffer-size"],
        "vsock-buffer-size",
        undefined,
        1,
        0xffffffff,
      );
      if (cid === null || bufferSize === null) return 2;
      try {
        device = new VsockDevice({
          guestCid: cid,
          udsPath: args["uds-path"],
          bufferSize,
          onError: args.verbose ? (e) => console.error(`vsock: ${e.message}`) : undefined,
        });
      } catch (err) {
        console.error(`--device vsock: ${(err as Error).message}`);
        return 1;
      }
      break;
    }
    case "fs": {
      if (args["shared-dir"] === undefined || args.tag === undefined) {
        console.error("--device fs needs --shared-dir and --tag");
        return 2;
      }
      const cache = args.cache ?? "auto";
      if (cache !== "never" && cache !== "auto" && cache !== "always") {
        console.error(`--cache must be never, auto or always, got ${cache}`);
        return 2;
      }
      const queues = intOption(args.queues, "queues", 1, 1, 64);
      if (queues === null) return 2;
      raiseOpenFileLimit();
      try {
        device = new FsDevice({
          sharedDir: args["shared-dir"],
          tag: args.tag,
          readOnly: args.readonly,
          cache,
          numRequestQueues: queues,
          onError: args.verbose ? (e) => console.error(`virtio-fs: ${e.message}`) : undefined,
        });
      } catch (err) {
        console.error(`--device fs: ${(err as Error).message}`);
        return 1;
      }
      break;
    }
    case "net": {
      const made = netDevice(args);
      if (typeof made === "number") return made;
      device = net = made;
      break;
    }
    default:
      console.error(`unknown device ${args.device}\n\n${USAGE}`);
      return 2;
  }
  const verbose = args.verbose;
  const backend = new VhostUserBackend(device, {
    socketPath: args.socket,
    pollUs,
    // QEMU keeps a net device's configuration space itself.
    configSpace: args.device !== "net",
    requireSealedMemory: args["require-sealed-memory"],
    queueThreads: args["queue-threads"],
    log: verbose ? (m) => console.error(`vhost-user: ${m}`) : undefined,
    onError: (e) =>
      console.error(
        e instanceof UnsealedMemoryWarning
          ? `vhost-user: ${e.message}`
          : `vhost-user: error: ${e.message}`,
      ),
  });
  backend.listen();
  console.error(`vhost-user ${args.device} backend listening on ${args.socket}`);
  const stop = () => void backend.close();
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  if (args.once) {
    const timer = setInterval(() => {
      if (backend.connections > 0 && !backend.connected) {
        clearInterval(timer);
        stop();
      }
    }, 50);
  }
  await backend.closed;
  // Close the vsock Unix socket and its connections.
  if (device instanceof VsockDevice) device.remove();
  // Persist the overlay's bitmap (a SIGKILL keeps what the last FLUSH made durable).
  overlay?.close();
  if (net !== undefined) {
    if (args.stats !== undefined) writeFileSync(args.stats, JSON.stringify(net.stats) + "\n");
    net.remove();
  }
  return 0;
}

/**
 * The file server holds one descriptor per inode the guest knows: raise the soft limit on
 * open files to the hard one (as virtiofsd does), so the device's default caps grow with it.
 */
function raiseOpenFileLimit(): void {
  try {
    const lim = getrlimit(RLIMIT_NOFILE);
    if (lim.soft < lim.hard) {
      setrlimit(RLIMIT_NOFILE, { soft: Math.min(lim.hard, 1 << 20), hard: lim.hard });
    }
  } catch { /* keep the limit */ }
}

/** The net options of {@linkcode main}'s parsed arguments. */
interface NetArgs {
  tap?: string;
  "socket-peer"?: string;
  "socket-bind"?: string;
  "socket-raw"?: boolean;
  loopback?: boolean;
  mac?: string;
  mtu?: string;
  queues?: string;
  "queue-size"?: string;
}

/** Build the net device from the CLI arguments, or say why not (an exit code). */
function netDevice(args: NetArgs): NetDevice | number {
  const kinds = [args.tap !== undefined, args["socket-peer"] !== undefined, !!args.loopback];
  if (kinds.filter((k) => k).length !== 1) {
    console.error("--device net needs exactly one of --tap, --socket-peer and --loopback");
    return 2;
  }
  if (
    args["socket-peer"] === undefined && (args["socket-bind"] !== undefined || args["socket-raw"])
  ) {
    console.error("--socket-bind and --socket-raw go with --socket-peer");
    return 2;
  }
  const queues = intOption(args.queues, "queues", 1, 1, 256);
  const mtu = intOption(args.mtu, "mtu", 1500, 68, 65535);
  const queueSize = intOption(args["queue-size"], "queue-size", 256, 2, 32768);
  if (queues === null || mtu === null || queueSize === null) return 2;
  let backend: NetBackend;
  try {
    if (args.tap !== undefined) backend = new TapNetBackend({ name: args.tap, queues });
    else if (args.loopback) {
      backend = new LoopbackNetBackend({ queuePairs: queues, capacity: 1024 });
    } else {
      backend = new SocketNetBackend({
        peer: args["socket-peer"]!,
        bind: args["socket-bind"],
        vnetHdr: !args["socket-raw"],
      });
    }
  } catch (err) {
    console.error(`--device net: ${(err as Error).message}`);
    return 1;
  }
  try {
    return new NetDevice({ backend, mac: args.mac, queuePairs: queues, mtu, queueSize });
  } catch (err) {
    backend.close();
    console.error(`--device net: ${(err as Error).message}`);
    return 2;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
