/**
 * The virtio-fs load generator of the end-to-end benchmark: FUSE requests through our
 * TypeScript vhost-user frontend ({@linkcode FuseSession} over {@linkcode FrontendTransport}),
 * with a given number in flight, against any vhost-user-fs backend.
 *
 * @module
 */

import { type BackendProcess, spawnListening, startBackend } from "../launcher/backends.ts";
import { type RingDriver, VhostUserFrontend } from "../testing/vhost_user_frontend.ts";
import { FuseSession, type FuseTransport } from "../testing/fuse_client.ts";
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../queue/split.ts";

/** One workload. */
export interface FsWorkload {
  /** Table label. */
  name: string;
  /** What each request does. */
  kind: "read" | "write" | "meta";
  /** Bytes per request (read, write). */
  size: number;
  /** Requests in flight. */
  queueDepth: number;
  /** Random offsets (else sequential). */
  random: boolean;
}

const MiB = 1 << 20;

/** The workloads, in table order. */
export const FS_WORKLOADS: readonly FsWorkload[] = [
  { name: "seq read 1 MiB, QD1", kind: "read", size: MiB, queueDepth: 1, random: false },
  { name: "seq read 1 MiB, QD8", kind: "read", size: MiB, queueDepth: 8, random: false },
  { name: "seq write 1 MiB, QD1", kind: "write", size: MiB, queueDepth: 1, random: false },
  { name: "seq write 1 MiB, QD8", kind: "write", size: MiB, queueDepth: 8, random: false },
  { name: "rand read 4 KiB, QD1", kind: "read", size: 4096, queueDepth: 1, random: true },
  { name: "rand read 4 KiB, QD16", kind: "read", size: 4096, queueDepth: 16, random: true },
];

/** What one run measured. */
export interface FsLoadResult {
  /** Requests (read, write) or files (meta) done. */
  ops: number;
  /** Bytes moved. */
  bytes: number;
  /** Wall time. */
  seconds: number;
}

/** A connected backend: the frontend and a FUSE session on its first request ring. */
export interface FsConnected {
  /** The frontend (close it when done). */
  frontend: VhostUserFrontend;
  /** The session (INIT done). */
  session: FuseSession;
}

/**
 * A driver-like transport: like a guest's virtiofs driver, it lays its request buffers out
 * once (one slot per request in flight: a readable buffer for the header, arguments and
 * WRITE data, a writable one for the reply) and reuses them, so a request costs the frontend
 * no allocation and no copy of READ data: the reply is returned as a view of guest memory,
 * valid until the slot's next request. Both backends are driven through it.
 */
export class SlotTransport implements FuseTransport {
  readonly #frontend: VhostUserFrontend;
  readonly #rings = new Map<number, SlotRing>();

  /**
   * Lay the slots out in each ring's buffer area.
   * @param frontend A started frontend.
   * @param slots Slots per ring, by ring index.
   */
  constructor(frontend: VhostUserFrontend, slots: Record<number, number>) {
    this.#frontend = frontend;
    for (const [i, n] of Object.entries(slots)) {
      this.#rings.set(Number(i), new SlotRing(frontend, Number(i), n));
    }
  }

  /**
   * One request (see {@linkcode FuseTransport.roundTrip}); the result aliases the slot.
   * @param queue Ring index.
   * @param readable Readable parts (copied, contiguous, into the slot).
   * @param writable Writable sizes (one buffer of their sum).
   * @returns The written bytes.
   */
  roundTrip(queue: number, readable: Uint8Array[], writable: number[]): Promise<Uint8Array> {
    return this.#rings.get(queue)!.roundTrip(readable, writable);
  }

  /** The frontend. */
  get frontend(): VhostUserFrontend {
    return this.#frontend;
  }
}

/** Largest readable part and reply of one slot. */
const SLOT_BYTES = MiB + 4096;

class SlotRing {
  readonly #fe: VhostUserFrontend;
  readonly #index: number;
  readonly #driver: RingDriver;
  readonly #req: number[] = [];
  readonly #resp: number[] = [];
  readonly #free: number[] = [];
  readonly #waitingSlot: (() => void)[] = [];
  readonly #pending = new Map<number, (len: number) => void>();
  #lastUsed = 0;
  #pumping = false;
  #kickQueued = false;

  constructor(fe: VhostUserFrontend, index: number, slots: number) {
    this.#fe = fe;
    this.#index = index;
    this.#driver = fe.ring(index).driver;
    if (2 * slots > this.#driver.size) throw new RangeError("Not enough descriptors for the slots");
    for (let k = 0; k < slots; k++) {
      this.#req.push(this.#driver.alloc(SLOT_BYTES, 4096));
      this.#resp.push(this.#driver.alloc(SLOT_BYTES, 4096));
      this.#free.push(k);
    }
  }

  async roundTrip(readable: Uint8Array[], writable: number[]): Promise<Uint8Array> {
    while (this.#free.length === 0) await new Promise<void>((r) => this.#waitingSlot.push(r));
    const k = this.#free.pop()!;
    const mem = this.#fe.memory;
    let n = 0;
    for (const part of readable) {
      mem.write(this.#req[k] + n, part);
      n += part.length;
    }
    let room = 0;
    for (const w of writable) room += w;
    if (n > SLOT_BYTES || room > SLOT_BYTES) throw new RangeError("Request too large for a slot");
    // Descriptors 2k (readable) and 2k+1 (writable): the chain's head is 2k.
    const head = 2 * k;
    this.#driver.writeDescriptor(head, {
      addr: this.#req[k],
      len: n,
      flags: room > 0 ? VIRTQ_DESC_F_NEXT : 0,
      next: head + 1,
    });
    if (room > 0) {
      this.#driver.writeDescriptor(head + 1, {
        addr: this.#resp[k],
        len: room,
        flags: VIRTQ_DESC_F_WRITE,
        next: 0,
      });
    }
    const len = new Promise<number>((resolve) => this.#pending.set(head, resolve));
    this.#driver.publish(head);
    // One kick for everything published in this turn (requests submitted together).
    if (!this.#kickQueued) {
      this.#kickQueued = true;
      queueMicrotask(() => {
        this.#kickQueued = false;
        this.#fe.kick(this.#index);
      });
    }
    if (!this.#pumping) void this.#pump();
    const used = await len;
    this.#free.push(k);
    this.#waitingSlot.shift()?.();
    return mem.slice(this.#resp[k], Math.max(used, 0)).subarray(0, used);
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    const d = this.#driver;
    const mem = this.#fe.memory;
    try {
      while (this.#pending.size > 0) {
        const usedIdx = d.usedIdx();
        while (this.#lastUsed !== usedIdx) {
          const at = d.usedRing + 4 + 8 * (this.#lastUsed & (d.size - 1));
          const id = mem.readU32(at);
          const len = mem.readU32(at + 4);
          this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
          const done = this.#pending.get(id);
          this.#pending.delete(id);
          done?.(len);
        }
        d.setLastUsed(this.#lastUsed);
        if (d.eventIdx) d.setUsedEvent(this.#lastUsed);
        if (this.#pending.size === 0) break;
        if (d.usedIdx() !== this.#lastUsed) continue;
        if (!(await this.#fe.waitCall(this.#index, 30_000))) {
          throw new Error(`no reply on ring ${this.#index}`);
        }
      }
    } finally {
      this.#pumping = false;
    }
  }
}

/** Bytes of buffer area of each ring: room for its slots. */
const BUFFER_AREA = 20 * MiB;

/**
 * Connect to a vhost-user-fs backend: hiprio and one request ring of 128 descriptors (QEMU's
 * default queue size) in memfd guest memory, 16 request slots, FUSE_INIT, then a warm-up
 * that reads into every slot, so that the backend's mapping of guest memory is faulted in
 * (as a running guest's is) before anything is measured.
 * @param socket The backend's socket.
 * @param warmFile A file in the share's root (at least 1 MiB) to read for the warm-up.
 * @returns The connection.
 */
export async function connectFs(socket: string, warmFile?: string): Promise<FsConnected> {
  const frontend = await VhostUserFrontend.connect(socket, { timeoutMs: 30_000 });
  await frontend.start({ memorySize: 48 * MiB, queues: 0 });
  await frontend.setupRing(0, { size: 128, bufferSize: 4 * SLOT_BYTES + 4 * 4096 });
  await frontend.setupRing(1, { size: 128, bufferSize: BUFFER_AREA + 64 * 4096 });
  const session = new FuseSession(new SlotTransport(frontend, { 0: 2, 1: 16 }));
  await session.init();
  if (warmFile !== undefined) {
    const e = await session.lookup(1, warmFile);
    const { fh } = await session.open(e.nodeid, 2);
    for (let round = 0; round < 2; round++) {
      await Promise.all(Array.from({ length: 16 }, () => session.read(e.nodeid, fh, 0, MiB)));
    }
    // Every slot's request buffer, too (WRITE data lives there): the file's own first MiB.
    const first = (await session.read(e.nodeid, fh, 0, MiB)).slice();
    await Promise.all(Array.from({ length: 16 }, () => session.write(e.nodeid, fh, 0, first)));
    await session.release(e.nodeid, fh);
    await session.forget(e.nodeid, 1);
  }
  return { frontend, session };
}

/**
 * Our backend: `vhost_user/main.ts --device fs` in its own process.
 * @param dir The shared directory.
 * @param socket The socket.
 * @param options `runtime`: Deno (default) or Bun; `pollUs`: poll mode (`--poll-us`).
 * @returns The process.
 */
export function startOursFs(
  dir: string,
  socket: string,
  options: { runtime?: "deno" | "bun"; pollUs?: number } = {},
): Promise<BackendProcess> {
  const poll = options.pollUs ? ["--poll-us", String(options.pollUs)] : [];
  return startBackend(
    ["--socket", socket, "--device", "fs", "--shared-dir", dir, "--tag", "bench", ...poll],
    { runtime: options.runtime },
  );
}

/** Where Debian's C virtiofsd is (qemu-system-common 7.2). */
export const VIRTIOFSD = "/usr/lib/qemu/virtiofsd";

/**
 * The C virtiofsd on the same directory: cache=auto (its default, as ours), its thread pool,
 * chroot sandbox (this process may not create namespaces).
 * @param dir The shared directory.
 * @param socket The socket.
 * @returns The process.
 */
export function startVirtiofsd(dir: string, socket: string): Promise<BackendProcess> {
  return spawnListening(VIRTIOFSD, [
    `--socket-path=${socket}`,
    ...["-o", `source=${dir}`, "-o", "cache=auto", "-o", "sandbox=chroot"],
    ...["-o", "log_level=err"],
  ], socket);
}

/**
 * Keep `depth` requests in flight until `ms` have passed.
 * @returns Requests completed, bytes, seconds.
 */
async function pump(
  depth: number,
  ms: number,
  issue: (i: number) => Promise<number>,
): Promise<FsLoadResult> {
  let ops = 0, bytes = 0, next = 0;
  const start = performance.now();
  const deadline = start + ms;
  const lane = async () => {
    while (performance.now() < deadline) {
      // Not `bytes += await …`: that would add to the value read before the wait.
      const n = await issue(next++);
      bytes += n;
      ops++;
    }
  };
  await Promise.all(Array.from({ length: depth }, lane));
  return { ops, bytes, seconds: (performance.now() - start) / 1000 };
}

/**
 * Run one read or write workload on `file` (a regular file of `fileSize` bytes in the share's
 * root) for `ms` milliseconds.
 * @param s The session.
 * @param w The workload.
 * @param file The file's name.
 * @param fileSize Its size (reads stay inside it; writes wrap within it).
 * @param ms Duration.
 * @param seed Random seed.
 * @returns The result.
 */
export async function runIo(
  s: FuseSession,
  w: FsWorkload,
  file: string,
  fileSize: number,
  ms: number,
  seed = 1,
): Promise<FsLoadResult> {
  const e = await s.lookup(1, file);
  const { fh } = await s.open(e.nodeid, w.kind === "read" ? 0 : 2);
  const blocks = Math.floor(fileSize / w.size);
  const data = new Uint8Array(w.size).fill(0x5a);
  let x = seed | 1;
  const offset = (i: number) => {
    if (!w.random) return (i % blocks) * w.size;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return ((x >>> 0) % blocks) * w.size;
  };
  try {
    return await pump(w.queueDepth, ms, async (i) => {
      if (w.kind === "read") return (await s.read(e.nodeid, fh, offset(i), w.size)).length;
      return await s.write(e.nodeid, fh, offset(i), data);
    });
  } finally {
    await s.release(e.nodeid, fh);
    await s.forget(e.nodeid, 1);
  }
}

/**
 * Metadata: create, stat and unlink `count` files in a fresh directory, one after the other,
 * as a guest's `touch f; stat f; rm f` does: CREATE, FLUSH, RELEASE, GETATTR, UNLINK and the
 * FORGET that follows (six requests per file).
 * @param s The session.
 * @param dir A directory name to create in the root (removed afterwards).
 * @param count Files.
 * @returns Files done, and the time.
 */
export async function runMeta(s: FuseSession, dir: string, count: number): Promise<FsLoadResult> {
  const d = await s.mkdir(1, dir, 0o755);
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    const name = `file-${i}`;
    const c = await s.create(d.nodeid, name, 0o102, 0o644);
    await s.flush(c.entry.nodeid, c.fh);
    await s.release(c.entry.nodeid, c.fh);
    await s.getattr(c.entry.nodeid);
    await s.unlink(d.nodeid, name);
    await s.forget(c.entry.nodeid, 1);
  }
  const seconds = (performance.now() - start) / 1000;
  await s.rmdir(1, dir);
  await s.forget(d.nodeid, 1);
  return { ops: count, bytes: 0, seconds };
}

/**
 * Write `data` to `name` through the session, read it back and compare (the correctness check
 * before measuring).
 * @param s The session.
 * @param name A new file in the root.
 * @param data The bytes.
 * @returns Bytes checked.
 */
export async function verifyFs(s: FuseSession, name: string, data: Uint8Array): Promise<number> {
  const c = await s.create(1, name, 0o102, 0o644);
  for (let at = 0; at < data.length; at += MiB) {
    await s.write(c.entry.nodeid, c.fh, at, data.subarray(at, Math.min(at + MiB, data.length)));
  }
  await s.fsync(c.entry.nodeid, c.fh);
  for (let at = 0; at < data.length; at += MiB) {
    const got = await s.read(c.entry.nodeid, c.fh, at, Math.min(MiB, data.length - at));
    for (let i = 0; i < got.length; i++) {
      if (got[i] !== data[at + i]) throw new Error(`${name}: byte ${at + i} differs`);
    }
  }
  await s.release(c.entry.nodeid, c.fh);
  await s.unlink(1, name);
  await s.forget(c.entry.nodeid, 1);
  return data.length;
}
