/**
 * The two vhost-user-blk backends the end-to-end benchmark compares, started as processes on
 * the same image: ours (`vhost_user/main.ts`) and `qemu-storage-daemon`'s vhost-user-blk
 * export, both through the host page cache. Plus connecting a {@linkcode BlkLoad} to one.
 *
 * @module
 */

import { closeSync, existsSync, openSync, readSync, rmSync } from "node:fs";
import process from "node:process";
import { type BackendProcess, spawnListening, startBackend } from "../launcher/backends.ts";
import { VhostUserFrontend } from "../testing/vhost_user_frontend.ts";
import { BlkLoad, readCapacity } from "./_blk_load.ts";

export type { BackendProcess };
export { writeBenchImage } from "./_image.ts";

/** Slots (largest queue depth) the benchmark frontend lays out. */
export const LOAD_SLOTS = 32;
/** Largest request the benchmark frontend sends. */
export const LOAD_MAX_BLOCK = 1 << 20;
/** Guest memory of the benchmark frontend per ring: the ring plus 32 slots of 1 MiB. */
export const LOAD_MEMORY = 64 << 20;

/**
 * Start our backend on `image`.
 * @param image The raw image.
 * @param socket The socket path to listen on.
 * @param options `pollUs`: run in poll mode with this window (`--poll-us`); `runtime`: run
 *   the CLI with Deno (default) or Bun; `queueThreads`: serve each ring on its own thread
 *   (`--queue-threads`); `queues`: request queues offered (`--queues`, default 1).
 * @returns The process.
 */
export function startOurs(
  image: string,
  socket: string,
  options: {
    pollUs?: number;
    runtime?: "deno" | "bun";
    queueThreads?: boolean;
    queues?: number;
  } = {},
): Promise<BackendProcess> {
  rmSync(socket, { force: true });
  const extra = [
    ...(options.pollUs ? ["--poll-us", String(options.pollUs)] : []),
    ...(options.queueThreads ? ["--queue-threads"] : []),
    ...(options.queues !== undefined ? ["--queues", String(options.queues)] : []),
  ];
  return startBackend(["--socket", socket, "--device", "blk", "--file", image, ...extra], {
    runtime: options.runtime,
  });
}

/** How qemu-storage-daemon is configured (see {@linkcode qsdArgs}). */
export interface QsdOptions {
  /** Serve the export from an iothread (which polls adaptively before it sleeps). */
  iothread?: boolean;
  /** The file driver's AIO engine (default `threads`, the thread pool). */
  aio?: "threads" | "io_uring";
  /** Request queues of the export (default 1). */
  queues?: number;
}

/**
 * The qemu-storage-daemon command line serving `image` as a vhost-user-blk export: file
 * driver with the page cache (`cache.direct=off`), raw format, writable. `locking=off` so our
 * backend may have the same image open. `aio` picks the thread pool (QEMU's default) or
 * io_uring; with `iothread`, the export runs in an iothread, which polls adaptively (QEMU's
 * default `poll-max-ns`, 32 µs) before it sleeps: qemu-storage-daemon's own poll mode (QEMU 7.2
 * serves every queue of an export from that one iothread).
 * @param image The raw image.
 * @param socket The socket path.
 * @param options The configuration.
 * @returns argv without the program.
 */
export function qsdArgs(image: string, socket: string, options: QsdOptions = {}): string[] {
  return [
    ...(options.iothread ? ["--object", "iothread,id=io0"] : []),
    "--blockdev",
    `driver=file,node-name=file0,filename=${image},cache.direct=off,` +
    `aio=${options.aio ?? "threads"},locking=off`,
    "--blockdev",
    "driver=raw,node-name=disk0,file=file0",
    "--export",
    `type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=${socket},` +
    `writable=on,num-queues=${options.queues ?? 1}` + (options.iothread ? ",iothread=io0" : ""),
  ];
}

/**
 * Whether `qemu-storage-daemon` is on the PATH.
 * @returns `true` when found.
 */
export function hasQsd(): boolean {
  return (process.env.PATH ?? "").split(":").some((d) => existsSync(`${d}/qemu-storage-daemon`));
}

/**
 * Start qemu-storage-daemon on `image` and wait until it listens.
 * @param image The raw image.
 * @param socket The socket path.
 * @param options The configuration (see {@linkcode qsdArgs}).
 * @returns The process.
 */
export function startQsd(
  image: string,
  socket: string,
  options: QsdOptions = {},
): Promise<BackendProcess> {
  rmSync(socket, { force: true });
  return spawnListening("qemu-storage-daemon", qsdArgs(image, socket, options), socket);
}

/**
 * Read `length` bytes of the image file at `offset` on the host, bypassing any backend
 * (short only at the end of the file).
 * @param path The image.
 * @param offset Byte offset.
 * @param length Byte count.
 * @returns The bytes.
 */
export function readImage(path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, "r");
  try {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** A frontend connected to a backend, with a load generator on each of its rings. */
export interface Connected {
  /** The frontend (close it when done). */
  frontend: VhostUserFrontend;
  /** The load generator on ring 0. */
  load: BlkLoad;
  /** The load generators of every ring set up, by ring index. */
  loads: BlkLoad[];
}

/**
 * Connect a frontend to `socket`, negotiate every feature the backend offers, set up rings 0
 * to `rings - 1` (256 entries each, room for {@linkcode LOAD_SLOTS} slots of
 * {@linkcode LOAD_MAX_BLOCK}) and read the capacity.
 * @param socket The backend's socket.
 * @param options `rings`: how many request queues to drive (default 1; the backend must
 *   offer them).
 * @returns The frontend and its load generators.
 */
export async function connectLoad(
  socket: string,
  options: { rings?: number } = {},
): Promise<Connected> {
  const rings = options.rings ?? 1;
  const frontend = await VhostUserFrontend.connect(socket, { memorySize: LOAD_MEMORY * rings });
  try {
    await frontend.start({ queues: 0 });
    for (let i = 0; i < rings; i++) {
      await frontend.setupRing(i, {
        size: 256,
        bufferSize: LOAD_SLOTS * (LOAD_MAX_BLOCK + 8192) + (1 << 20),
      });
    }
    const capacity = await readCapacity(frontend);
    const loads: BlkLoad[] = [];
    for (let i = 0; i < rings; i++) {
      loads.push(
        new BlkLoad(frontend, i, capacity, { slots: LOAD_SLOTS, maxBlock: LOAD_MAX_BLOCK }),
      );
    }
    return { frontend, load: loads[0], loads };
  } catch (err) {
    await frontend.close();
    throw err;
  }
}
