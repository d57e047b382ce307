/**
 * Command-line vhost-user backend: serve one of our devices on a Unix socket.
 *
 * ```sh
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vblk.sock --device blk --file disk.img
 * deno run --allow-all vhost_user/main.ts --socket /tmp/vrng.sock --device rng
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import type { VirtioDevice } from "../devices/device.ts";
import { RngDevice } from "../devices/rng.ts";
import { BlockDevice, FileBackend, OverlayBackend } from "../devices/block.ts";
import { MAX_POLL_US, VhostUserBackend } from "./backend.ts";

const USAGE = `Usage: vhost_user/main.ts --socket PATH --device rng|blk [options]

Serves a virtio device to a vhost-user frontend (QEMU, Cloud Hypervisor, ...).

Options:
  --socket PATH     Unix socket to listen on (required)
  --device NAME     rng or blk (required)
  --file PATH       blk: the raw disk image or block device
  --readonly        blk: refuse writes (VIRTIO_BLK_F_RO)
  --overlay PATH    blk: copy-on-write overlay file over --file, which is then opened
                    read-only and never written (the overlay is created when missing)
  --serial TEXT     blk: serial number reported by GET_ID (up to 20 bytes)
  --queues N        blk: number of request queues (default 1)
  --block-size N    blk: logical block size in bytes, a power of two from 512 (default 512)
  --physical-block-size N
                    blk: physical block size, a power-of-two multiple of --block-size
  --writethrough    blk: start in writethrough mode (every write made durable before it
                    completes; the driver may switch with CONFIG_WCE); default writeback
  --poll-us N       poll mode: keep checking the rings for N µs (up to 1000) after serving
                    a kick; lower latency for a busy guest, at the cost of CPU (default 0)
  --once            exit after the first frontend disconnects
  --verbose         log connections and ring state changes
  --help            show this text

Example with QEMU:
  qemu-system-x86_64 -M q35 -m 512M \\
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \\
    -chardev socket,id=c0,path=PATH -device vhost-user-blk-pci,chardev=c0`;

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
        "block-size": { type: "string" },
        "physical-block-size": { type: "string" },
        writethrough: { type: "boolean", default: false },
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
  let device: VirtioDevice;
  let overlay: OverlayBackend | undefined;
  switch (args.device) {
    case "rng":
      device = new RngDevice();
      break;
    case "blk": {
      if (args.file === undefined) {
        console.error("--device blk needs --file");
        return 2;
      }
      const queues = args.queues === undefined ? 1 : Number(args.queues);
      if (!Number.isInteger(queues) || queues < 1 || queues > 64) {
        console.error(`--queues must be 1..64, got ${args.queues}`);
        return 2;
      }
      const size = (name: string, v: string | undefined) => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!Number.isSafeInteger(n)) throw new RangeError(`--${name} must be a number, got ${v}`);
        return n;
      };
      let common;
      try {
        common = {
          readOnly: args.readonly,
          serial: args.serial,
          numQueues: queues,
          blockSize: size("block-size", args["block-size"]),
          physicalBlockSize: size("physical-block-size", args["physical-block-size"]),
          writeback: !args.writethrough,
        };
      } catch (err) {
        console.error((err as Error).message);
        return 2;
      }
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
    default:
      console.error(`unknown device ${args.device}\n\n${USAGE}`);
      return 2;
  }
  const pollUs = args["poll-us"] === undefined ? 0 : Number(args["poll-us"]);
  if (!Number.isInteger(pollUs) || pollUs < 0 || pollUs > MAX_POLL_US) {
    console.error(`--poll-us must be 0..${MAX_POLL_US}, got ${args["poll-us"]}`);
    overlay?.close();
    return 2;
  }
  const verbose = args.verbose;
  const backend = new VhostUserBackend(device, {
    socketPath: args.socket,
    pollUs,
    log: verbose ? (m) => console.error(`vhost-user: ${m}`) : undefined,
    onError: (e) => console.error(`vhost-user: error: ${e.message}`),
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
  // Persist the overlay's bitmap (a SIGKILL keeps what the last FLUSH made durable).
  overlay?.close();
  return 0;
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
