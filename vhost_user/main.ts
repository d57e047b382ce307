/**
 * Command-line vhost-user backend: serve our devices on Unix sockets, one device with its
 * options as flags, or many in one process with one `--device KIND,socket=PATH,...` spec each.
 *
 * ```sh
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vblk.sock --device blk --file disk.img
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vrng.sock --device rng
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vnet.sock --device net --tap vt0
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vsock.sock --device vsock \
 *   --guest-cid 3 --uds-path /tmp/vsock.uds
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vfs.sock --device fs --shared-dir /srv --tag share
 * # many devices, one process
 * deno run --allow-all vhost_user/main.ts --device blk,socket=/tmp/a.sock,file=a.img \
 *   --device blk,socket=/tmp/b.sock,file=b.img,readonly --device rng,socket=/tmp/rng.sock
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import type { VirtioDevice } from "../devices/device.ts";
// The device modules are loaded when a device of their kind is asked for: a process serving
// block devices holds no file server, network or socket device code.
import type { OverlayBackend } from "../devices/block.ts";
import type { NetBackend, NetDevice } from "../devices/net.ts";
import { writeFileSync } from "node:fs";
import { MAX_POLL_US, UnsealedMemoryWarning } from "./backend.ts";
import { VhostUserBackendSet } from "./backend_set.ts";
import { DeviceSpecError, specArgs } from "./_device_spec.ts";
import { getrlimit, RLIMIT_NOFILE, setrlimit } from "../sys/mod.ts";

const USAGE = `Usage: vhost_user/main.ts --socket PATH --device rng|blk|vsock|fs|net [options]
       vhost_user/main.ts --device KIND,socket=PATH[,option[=value]...] [--device ...]

Serves virtio devices to vhost-user frontends (QEMU, Cloud Hypervisor, ...).

One device: its options as flags. Many devices in one process (as qemu-storage-daemon's
--export): one --device spec each, KIND then the device's options below without their
dashes, as key=value, or the key alone for a flag (flag=on|off also works); a comma inside
a value is written twice (file=a,,b.img). Each device has its own socket and frontend; an
error or a misbehaving frontend on one never stops the others. --poll-us, --queue-threads
and --require-sealed-memory given as flags hold for every spec without its own.
  --device blk,socket=/tmp/a.sock,file=a.img --device blk,socket=/tmp/b.sock,file=b.img,readonly
  --device rng,socket=/tmp/rng.sock,rng-max-bytes=1024 --device fs,socket=/tmp/fs.sock,shared-dir=/srv,tag=share

Options:
  --socket PATH     Unix socket to listen on (required)
  --device NAME     rng, blk, vsock, fs or net (required); or a spec (above), repeatable
  --id NAME         a name for the device in messages (default: KIND0, KIND1, ... with specs)
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
  --once            exit after the first frontend disconnects (with specs: once every
                    device has had a frontend and none is connected)
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

/** The options of one device (the single-device form, or one `--device` spec). */
const DEVICE_OPTIONS = {
  socket: { type: "string" },
  device: { type: "string" },
  id: { type: "string" },
  file: { type: "string" },
  readonly: { type: "boolean" },
  overlay: { type: "string" },
  serial: { type: "string" },
  queues: { type: "string" },
  "poll-us": { type: "string" },
  "queue-threads": { type: "boolean" },
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
  writethrough: { type: "boolean" },
  tap: { type: "string" },
  "socket-peer": { type: "string" },
  "socket-bind": { type: "string" },
  "socket-raw": { type: "boolean" },
  loopback: { type: "boolean" },
  mac: { type: "string" },
  mtu: { type: "string" },
  "queue-size": { type: "string" },
  stats: { type: "string" },
  "require-sealed-memory": { type: "boolean" },
} as const;

/** The whole process's options. */
const PROCESS_OPTIONS = {
  once: { type: "boolean" },
  verbose: { type: "boolean" },
  help: { type: "boolean" },
} as const;

/** Device options that may also be given once, for every `--device` spec. */
const SHARED_DEFAULTS = ["poll-us", "queue-threads", "require-sealed-memory"] as const;

type DeviceArgs = ReturnType<typeof parseDeviceArgs> & { verbose?: boolean };

function parseDeviceArgs(argv: string[]) {
  return parseArgs({ args: argv, options: DEVICE_OPTIONS, strict: true }).values;
}

/** A device made from its options, with what its backend needs and what ends it. */
interface Built {
  id: string;
  kind: string;
  socket: string;
  device: VirtioDevice;
  pollUs: number;
  queueThreads: boolean;
  requireSealedMemory: boolean;
  /** Release what the device holds once its backend closed. */
  finish(): void;
}

/**
 * Make one device from its options, or say why not (an exit code: 2 for a usage error, 1 when
 * something could not be opened).
 */
async function buildDevice(args: DeviceArgs): Promise<Built | number> {
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
  // (Without rng options the period is the default and its bound does not matter.)
  const maxPeriod = rngOptions ? (await import("../devices/rng.ts")).RNG_MAX_PERIOD_MS : 1000;
  const rngPeriodMs = intOption(args["rng-period-ms"], "rng-period-ms", 1000, 1, maxPeriod);
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
  let remove: (() => void) | undefined;
  switch (args.device) {
    case "rng": {
      const { RngDevice } = await import("../devices/rng.ts");
      device = new RngDevice({
        rateLimit: rngMaxBytes === undefined
          ? undefined
          : { bytes: rngMaxBytes, periodMs: rngPeriodMs },
      });
      break;
    }
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
      const { BlockDevice, FileBackend, OverlayBackend } = await import("../devices/block.ts");
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
      const { VsockDevice } = await import("../devices/vsock.ts");
      try {
        const vsock = new VsockDevice({
          guestCid: cid,
          udsPath: args["uds-path"],
          bufferSize,
          onError: args.verbose ? (e) => console.error(`vsock: ${e.message}`) : undefined,
        });
        // Close the vsock Unix socket and its connections.
        remove = () => vsock.remove();
        device = vsock;
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
      const { FsDevice } = await import("../devices/fs.ts");
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
      const made = await netDevice(args);
      if (typeof made === "number") return made;
      device = net = made;
      break;
    }
    default:
      console.error(`unknown device ${args.device}\n\n${USAGE}`);
      return 2;
  }
  const finish = () => {
    remove?.();
    // Persist the overlay's bitmap (a SIGKILL keeps what the last FLUSH made durable).
    overlay?.close();
    if (net !== undefined) {
      if (args.stats !== undefined) writeFileSync(args.stats, JSON.stringify(net.stats) + "\n");
      net.remove();
    }
  };
  return {
    id: args.id ?? args.device,
    kind: args.device,
    socket: args.socket,
    device,
    pollUs,
    queueThreads: args["queue-threads"] ?? false,
    requireSealedMemory: args["require-sealed-memory"] ?? false,
    finish,
  };
}

/**
 * Run the CLI.
 * @param argv Arguments (without the program name).
 * @returns The process exit code.
 */
export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        ...DEVICE_OPTIONS,
        ...PROCESS_OPTIONS,
        device: { type: "string", multiple: true },
      },
      strict: true,
    }).values;
  } catch (err) {
    console.error(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  const verbose = parsed.verbose ?? false;
  const specs = parsed.device ?? [];
  // One --device KIND with its options as flags (the single-device form), or one --device
  // KIND,key=value,... spec per device.
  const many = specs.length > 1 || specs.some((d) => d.includes(","));
  const deviceArgs: DeviceArgs[] = [];
  if (!many) {
    deviceArgs.push({ ...parsed, device: specs[0], verbose });
  } else {
    const misplaced = Object.keys(parsed).filter((k) =>
      k !== "device" && Object.hasOwn(DEVICE_OPTIONS, k) &&
      !(SHARED_DEFAULTS as readonly string[]).includes(k)
    );
    if (misplaced.length > 0) {
      const keys = misplaced.map((k) => `--${k}`).join(", ");
      console.error(
        `with --device specs, ${keys} go inside each spec (--device blk,socket=PATH,file=IMG)`,
      );
      return 2;
    }
    const reserved = new Set(Object.keys(PROCESS_OPTIONS));
    for (const spec of specs) {
      let values: DeviceArgs;
      try {
        const a = specArgs(spec, DEVICE_OPTIONS, reserved);
        if (!a.some((x) => x.startsWith("--socket="))) {
          throw new DeviceSpecError(spec, "needs socket=PATH");
        }
        values = parseDeviceArgs(a);
      } catch (err) {
        console.error(`${(err as Error).message}\n\n${USAGE}`);
        return 2;
      }
      // --poll-us, --queue-threads and --require-sealed-memory given once hold for every spec
      // without its own.
      values["poll-us"] ??= parsed["poll-us"];
      values["queue-threads"] ??= parsed["queue-threads"];
      values["require-sealed-memory"] ??= parsed["require-sealed-memory"];
      deviceArgs.push({ ...values, verbose });
    }
  }
  // Every device is made (and every option checked) before anything listens.
  const built: Built[] = [];
  const finishAll = () => {
    for (const b of built) b.finish();
  };
  const ids = new Map<string, number>();
  for (const a of deviceArgs) {
    const b = await buildDevice(a);
    if (typeof b === "number") {
      finishAll();
      return b;
    }
    if (many && a.id === undefined) {
      // blk0, blk1, ... in the order given.
      const n = ids.get(b.kind) ?? 0;
      ids.set(b.kind, n + 1);
      b.id = `${b.kind}${n}`;
    }
    built.push(b);
  }
  // Each backend holds a listening socket, a connection, the eventfds of its rings and its
  // image or share: more devices than the default soft limit on open files allows.
  if (many) raiseOpenFileLimit();
  const set = new VhostUserBackendSet({
    log: verbose ? (id, m) => console.error(`vhost-user${many ? ` ${id}` : ""}: ${m}`) : undefined,
    onError: (id, e) =>
      console.error(
        `vhost-user${many ? ` ${id}` : ""}: ${
          e instanceof UnsealedMemoryWarning ? "" : "error: "
        }${e.message}`,
      ),
  });
  try {
    for (const b of built) {
      set.add({
        id: b.id,
        device: b.device,
        socketPath: b.socket,
        pollUs: b.pollUs,
        // QEMU keeps a net device's configuration space itself.
        configSpace: b.kind !== "net",
        requireSealedMemory: b.requireSealedMemory,
        queueThreads: b.queueThreads,
      });
    }
  } catch (err) {
    // One socket path given twice.
    console.error((err as Error).message);
    await set.close();
    finishAll();
    return 2;
  }
  // Listening one by one to say which socket failed; those already listening are closed.
  for (const b of built) {
    try {
      set.get(b.id)!.listen();
    } catch (err) {
      console.error(`cannot listen on ${b.socket}: ${(err as Error).message}`);
      await set.close();
      finishAll();
      return 1;
    }
  }
  for (const b of built) {
    console.error(
      `vhost-user ${b.kind} backend ${many ? `${b.id} ` : ""}listening on ${b.socket}`,
    );
  }
  const stop = () => void set.close();
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  if (parsed.once) {
    // Exit once every device has had a frontend and none is connected any more.
    const timer = setInterval(() => {
      if (set.backends.every((b) => b.connections > 0 && !b.connected)) {
        clearInterval(timer);
        stop();
      }
    }, 50);
  }
  await set.closed;
  process.off("SIGINT", stop);
  process.off("SIGTERM", stop);
  finishAll();
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
async function netDevice(args: NetArgs): Promise<NetDevice | number> {
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
  const { LoopbackNetBackend, NetDevice, SocketNetBackend, TapNetBackend } = await import(
    "../devices/net.ts"
  );
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
