/**
 * The vhost-user target: a backend in this process, on a socket in a temporary directory, and
 * a frontend sending it mutated message streams — bad framing, descriptors of every kind,
 * hostile memory tables (regions past their file, offsets past the end, overlaps, too many),
 * SET_VRING_* with bad sizes, addresses and fds, configuration accesses out of range, chains
 * on started rings. The oracle: nothing escapes (a SIGBUS would end this process), and after
 * every stream the backend still answers a new frontend.
 *
 * @module
 */

import process from "node:process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VhostUserBackend } from "../vhost_user/backend.ts";
import { encode, Request, u64Payload, VERSION, vringStatePayload } from "../vhost_user/protocol.ts";
import {
  configPayload,
  memTablePayload,
  VhostUserFrontend,
  vringAddrPayload,
} from "../testing/vhost_user_frontend.ts";
import {
  addSeals,
  AF_UNIX,
  close,
  connect,
  EventFd,
  F_SEAL_GROW,
  F_SEAL_SHRINK,
  ftruncate,
  memfdCreate,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  pipe,
  sendAll,
  setNonBlocking,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket,
  socketpair,
} from "../sys/mod.ts";
import { RngDevice } from "../devices/rng.ts";
import { BlockDevice, MemoryBackend } from "../devices/block.ts";
import { INTERESTING_32, INTERESTING_64, mutateBytes, Prng } from "./prng.ts";
import type { RunOptions, RunStats } from "./targets.ts";
import type { FuzzFailure } from "./_device_rig.ts";

const EPISODE = 128;
const R = Request;
const CODES = Object.values(R);

/** Descriptors of every kind, made for one message and closed after it. */
class Fds {
  #open: number[] = [];
  #unsealed = new Set<number>();

  #keep(fd: number): number {
    this.#open.push(fd);
    return fd;
  }

  memfd(r: Prng, size: number, seal: boolean): number {
    const fd = this.#keep(memfdCreate("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    ftruncate(fd, size);
    if (seal) addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW);
    else this.#unsealed.add(fd);
    void r;
    return fd;
  }

  /** Whether `fd` is a memfd this stream left unsealed (never shrink those: SIGBUS). */
  unsealed(fd: number): boolean {
    return this.#unsealed.has(fd);
  }

  any(r: Prng, sealed: boolean): number {
    switch (r.int(6)) {
      case 0: {
        const e = new EventFd({ semaphore: r.chance(0.2) });
        return this.#keep(e.fd);
      }
      case 1: {
        const [a, b] = pipe();
        this.#keep(b);
        return this.#keep(a);
      }
      case 2: {
        const [a, b] = socketpair();
        if (r.chance(0.5)) close(b);
        else this.#keep(b);
        return this.#keep(a);
      }
      case 3:
        return this.memfd(r, 4096 * (1 + r.int(16)), sealed || r.chance(0.5));
      default: {
        const e = new EventFd();
        return this.#keep(e.fd);
      }
    }
  }

  closeAll(): void {
    for (const fd of this.#open.splice(0)) {
      try {
        close(fd);
      } catch { /* already */ }
    }
    this.#unsealed.clear();
  }
}

function memTable(r: Prng, fds: Fds, f: VhostUserFrontend, sealed: boolean): {
  payload: Uint8Array;
  fds: number[];
} {
  const n = r.chance(0.9) ? 1 + r.int(3) : r.pick([0, 8, 9, 64]);
  const regions = [];
  const out: number[] = [];
  let ga = 0;
  for (let i = 0; i < n; i++) {
    const fileSize = 4096 * (1 + r.int(64));
    const useOwn = i === 0 && r.chance(0.4);
    const fd = useOwn
      ? f.memoryFd
      : r.chance(0.9)
      ? fds.memfd(r, fileSize, sealed || r.chance(0.5))
      : fds.any(r, sealed);
    const real = useOwn ? f.memory.totalSize : fileSize;
    let size = r.chance(0.7) ? real : r.pick([0, real + 4096, real * 2, 4096, r.u32()]);
    let mmapOffset = r.chance(0.8) ? 0 : r.pick([4096, real, real - 4096, 0xffffffff, 2 ** 40]);
    if (r.chance(0.05)) size = Number(r.pick(INTERESTING_64) & 0xfffffffffffffn);
    if (r.chance(0.05)) mmapOffset = Number(r.pick(INTERESTING_64) & 0xfffffffffffffn);
    const guestAddr = r.chance(0.8) ? ga : r.pick([0, ga - 4096, 2 ** 52, r.u32()]);
    ga = guestAddr + Math.max(size, 4096);
    regions.push({
      guestAddr,
      size,
      userAddr: r.chance(0.8) ? 0x7f00_0000_0000n + BigInt(guestAddr) : r.pick(INTERESTING_64),
      mmapOffset,
    });
    out.push(fd);
  }
  if (r.chance(0.05)) out.pop();
  if (r.chance(0.05)) out.push(fds.any(r, sealed));
  let payload: Uint8Array;
  try {
    payload = memTablePayload(regions);
  } catch {
    payload = r.bytes(8 + 32 * n);
  }
  // Sealed files may be shrunk after the fact: the seal refuses it.
  for (const fd of out) {
    if (r.chance(0.05) && !fds.unsealed(fd) && fd !== f.memoryFd) {
      try {
        ftruncate(fd, 0);
      } catch { /* sealed */ }
    }
  }
  return { payload, fds: out };
}

function message(
  r: Prng,
  fds: Fds,
  f: VhostUserFrontend,
  sealed: boolean,
): { code: number; payload: Uint8Array; fds: number[]; flags?: number } {
  const ring = r.chance(0.8) ? r.int(2) : r.pick([2, 0xff, 0x100, r.u32()]);
  let m: { code: number; payload: Uint8Array; fds: number[]; flags?: number };
  switch (r.int(16)) {
    case 0:
      m = { code: R.SET_MEM_TABLE, ...memTable(r, fds, f, sealed) };
      break;
    case 1:
      m = {
        code: R.SET_VRING_NUM,
        payload: vringStatePayload(
          ring >>> 0,
          r.chance(0.5) ? r.pick([8, 16, 256]) : r.pick(INTERESTING_32),
        ),
        fds: [],
      };
      break;
    case 2: {
      const ua = () =>
        r.chance(0.8)
          ? f.userAddr(0x10000 + 0x1000 * r.int(32) + (r.chance(0.1) ? r.int(16) : 0))
          : r.pick(INTERESTING_64);
      m = {
        code: R.SET_VRING_ADDR,
        payload: vringAddrPayload({
          index: ring >>> 0,
          flags: r.chance(0.9) ? 0 : r.u32(),
          desc: ua(),
          used: ua(),
          avail: ua(),
          log: 0n,
        }),
        fds: [],
      };
      break;
    }
    case 3:
      m = {
        code: r.pick([R.SET_VRING_BASE, R.GET_VRING_BASE]),
        payload: vringStatePayload(ring >>> 0, r.chance(0.5) ? r.int(16) : r.pick(INTERESTING_32)),
        fds: [],
      };
      break;
    case 4:
    case 5: {
      const nofd = r.chance(0.1);
      const v = BigInt(ring & 0xff) | (nofd ? 0x100n : 0n) | (r.chance(0.05) ? 1n << 40n : 0n);
      const n = nofd ? (r.chance(0.8) ? 0 : 1) : r.chance(0.9) ? 1 : r.pick([0, 2]);
      const list: number[] = [];
      for (let i = 0; i < n; i++) {
        list.push(r.chance(0.7) ? fds.any(r, sealed) : fds.any(r, sealed));
      }
      m = {
        code: r.pick([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]),
        payload: u64Payload(v),
        fds: list,
      };
      break;
    }
    case 6:
      m = { code: R.SET_VRING_ENABLE, payload: vringStatePayload(ring >>> 0, r.int(3)), fds: [] };
      break;
    case 7:
      m = {
        code: R.SET_FEATURES,
        payload: u64Payload(
          r.chance(0.5) ? (1n << 32n) | (1n << 30n) | BigInt(r.u32()) : r.pick(INTERESTING_64),
        ),
        fds: [],
      };
      break;
    case 8:
      m = { code: R.SET_PROTOCOL_FEATURES, payload: u64Payload(BigInt(r.u32() & 0x3ff)), fds: [] };
      break;
    case 9:
    case 10: {
      const off = r.chance(0.7) ? r.int(64) : r.pick(INTERESTING_32);
      const data = r.bytes(r.chance(0.7) ? r.int(16) : r.size(300));
      let payload: Uint8Array;
      try {
        payload = configPayload(off, data, r.chance(0.9) ? 0 : r.u32());
      } catch {
        payload = r.bytes(12 + data.length);
      }
      m = { code: r.pick([R.GET_CONFIG, R.SET_CONFIG]), payload, fds: [] };
      break;
    }
    case 11:
      m = { code: R.SET_BACKEND_REQ_FD, payload: new Uint8Array(0), fds: [fds.any(r, sealed)] };
      break;
    case 12:
      m = {
        code: r.pick([
          R.SET_OWNER,
          R.RESET_OWNER,
          R.RESET_DEVICE,
          R.GET_FEATURES,
          R.GET_QUEUE_NUM,
          R.GET_PROTOCOL_FEATURES,
        ]),
        payload: new Uint8Array(r.chance(0.9) ? 0 : 8),
        fds: [],
      };
      break;
    default:
      m = {
        code: r.chance(0.7) ? r.pick(CODES) : r.u32(),
        payload: r.bytes(r.size(64)),
        fds: r.chance(0.8) ? [] : [fds.any(r, sealed)],
      };
  }
  if (r.chance(0.1)) m.payload = mutateBytes(r, m.payload.slice());
  if (r.chance(0.02)) m.flags = r.pick([0, 2, 3, VERSION | 0x8, r.u32()]);
  return m;
}

/** Raw framing: headers that lie, versions that are wrong, bytes split anywhere. */
async function framing(r: Prng, path: string, fds: Fds, sealed: boolean): Promise<void> {
  const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  try {
    setNonBlocking(fd);
    connect(fd, path);
    const n = 1 + r.int(6);
    for (let i = 0; i < n; i++) {
      const payload = r.bytes(r.size(64));
      const msg = encode(r.pick(CODES), r.chance(0.7) ? VERSION : r.u32(), payload);
      const v = new DataView(msg.buffer, msg.byteOffset);
      if (r.chance(0.3)) {
        v.setUint32(
          8,
          r.chance(0.5) ? r.pick(INTERESTING_32) : payload.length + 1 + r.int(8),
          true,
        );
      }
      const bytes = r.chance(0.2) ? msg.subarray(0, r.int(msg.length)) : msg;
      const extra = r.chance(0.2) ? [fds.any(r, sealed)] : [];
      try {
        sendAll(fd, bytes, extra);
      } catch { /* the backend closed on us */ }
      if (r.chance(0.3)) await new Promise((res) => setTimeout(res, 0));
    }
  } catch {
    /* connection refused while the backend drops the previous one */
  } finally {
    close(fd);
  }
}

async function liveness(path: string): Promise<string | undefined> {
  let f: VhostUserFrontend | undefined;
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      f = await VhostUserFrontend.connect(path, { timeoutMs: 3000, memorySize: 1 << 20 });
      const features = await f.getFeatures();
      if (features === 0n) return "GET_FEATURES answered 0";
      return undefined;
    } catch (err) {
      // The backend refuses a second frontend while it drops the previous one: try again.
      if (attempt === 19) {
        return `a new frontend got no answer: ${err instanceof Error ? err.message : err}`;
      }
      await new Promise((res) => setTimeout(res, 5));
    } finally {
      await f?.close();
      f = undefined;
    }
  }
  return undefined;
}

/**
 * Run iterations `[from, to)` of the vhost-user target.
 * @param seed The seed.
 * @param from First iteration.
 * @param to One past the last.
 * @param options Deadline.
 * @returns The stats.
 */
export async function runVhostUser(
  seed: number,
  from: number,
  to: number,
  options: RunOptions = {},
): Promise<RunStats> {
  const stats: RunStats = {
    target: "vhost-user",
    iterations: 0,
    ms: 0,
    failures: [],
    resets: 0,
    chains: 0,
    widened: 0,
  };
  const t0 = performance.now();
  const fail = (iteration: number, message: string) => {
    if (stats.failures.length < 32) stats.failures.push({ iteration, message } as FuzzFailure);
  };
  const uncaught: unknown[] = [];
  const onError = (e: unknown) => uncaught.push(e);
  process.on("uncaughtException", onError);
  process.on("unhandledRejection", onError);
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-fuzz-vu-"));
  let backend: VhostUserBackend | undefined;
  let episode = -1;
  let sealed = false;
  const path = join(dir, "vu.sock");
  try {
    for (let i = from; i < to; i++) {
      const e = Math.floor(i / EPISODE);
      if (e !== episode || backend === undefined) {
        await backend?.close();
        if (options.deadline !== undefined && performance.now() > options.deadline) break;
        const er = new Prng(seed ^ 0x68e31da4, e);
        sealed = er.chance(0.5);
        const device = er.chance(0.7) ? new RngDevice({ queueSize: 16 }) : new BlockDevice({
          backend: new MemoryBackend(64 << 10),
          queueSize: 16,
        });
        backend = new VhostUserBackend(device, {
          socketPath: path,
          onError: () => {},
          requireSealedMemory: sealed,
          pollUs: er.chance(0.2) ? 100 : 0,
        });
        backend.listen();
        episode = e;
      }
      const r = new Prng(seed, i);
      const fds = new Fds();
      try {
        if (r.chance(0.15)) {
          await framing(r, path, fds, sealed);
        } else {
          const f = await VhostUserFrontend.connect(path, {
            timeoutMs: 200,
            memorySize: 1 << 20,
            sealMemory: sealed || r.chance(0.5),
            replyAck: r.chance(0.5),
          });
          try {
            let started = false;
            if (r.chance(0.6)) {
              try {
                await f.start({ queueSize: 16, queues: 1 });
                started = true;
              } catch { /* refused: fine */ }
            }
            const n = 1 + r.int(12);
            for (let k = 0; k < n; k++) {
              if (started && r.chance(0.3)) {
                try {
                  const ring = f.ring(0);
                  for (let c = 0; c < 1 + r.int(4); c++) {
                    ring.driver.addChain([{ writable: r.size(300) }]);
                  }
                  if (r.chance(0.2)) ring.driver.setAvailIdx(r.u32());
                  f.kick(0, { force: true });
                } catch { /* no room, ring gone */ }
                continue;
              }
              const m = message(r, fds, f, sealed);
              try {
                await f.request(m.code, m.payload, {
                  fds: m.fds,
                  flags: m.flags,
                  expectReply: r.chance(0.3) ? undefined : false,
                  timeoutMs: 100,
                });
              } catch {
                break; // dropped: the stream is over
              }
            }
            await new Promise((res) => setTimeout(res, 0));
          } finally {
            await f.close();
          }
        }
      } catch (err) {
        fail(i, `the frontend side failed: ${err instanceof Error ? err.message : err}`);
      } finally {
        fds.closeAll();
      }
      if (r.chance(0.25) || i === to - 1) {
        const problem = await liveness(path);
        if (problem !== undefined) fail(i, problem);
      }
      for (const u of uncaught.splice(0)) {
        fail(i, `uncaught: ${u instanceof Error ? `${u.name}: ${u.message}` : u}`);
      }
      stats.iterations++;
      if ((i + 1) % 256 === 0) options.progress?.(stats.iterations);
    }
  } finally {
    await backend?.close();
    rmSync(dir, { recursive: true, force: true });
    process.off("uncaughtException", onError);
    process.off("unhandledRejection", onError);
  }
  stats.ms = performance.now() - t0;
  return stats;
}
