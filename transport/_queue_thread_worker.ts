// A queue thread (see queue_thread.ts): a Worker that serves one virtqueue. It maps guest memory
// itself from the process-wide descriptors it is given (or views a mapping of this process in
// place), builds the device's handler from plain parameters, then loops: a pass over the ring
// (serveQueue, bounded by its budget), the handover word checked, and poll(2) on the kick eventfd
// and the wake eventfd, blocking this thread only. The kick fd, the call fd and the memory fds
// stay the main thread's; this thread never closes them, and the main thread never closes them
// while this thread may use them (it stops the thread first).
//
// Protocol (main → worker): one "init" (the control buffer and the wake fd), then "start"
// messages; each start serves until the handover word says STOPPING. (worker → main): "error",
// "kick" and "crash" reports; the handover word and the published indices in the control buffer.

import {
  EventFd,
  EVENTFD_MAX_DRAIN,
  type Mapping,
  mmapFd,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  PollSet,
  unsafeView,
} from "../sys/mod.ts";
import { GuestMemory, type GuestRegionOptions } from "../memory/guest_memory.ts";
import { SplitQueue } from "../queue/split.ts";
import { PackedQueue } from "../queue/packed.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import {
  type CreateQueueHandler,
  type QueueHandler,
  type ServePass,
  serveQueue,
  VirtioError,
  VirtioQueueConfig,
} from "../devices/device.ts";
import {
  Ctl,
  Phase,
  QUEUE_THREAD_MAX_PENDING_ERRORS,
  type QueueThreadMessage,
  type QueueThreadStart,
} from "./queue_thread.ts";

// deno-lint-ignore no-explicit-any
const scope = globalThis as any;

let ctl: Int32Array | undefined;
let wakeFd = -1;
let wake: EventFd | undefined;
let dropped = 0;
let lastDropped: VirtioError | undefined;
const factories = new Map<string, CreateQueueHandler>();

function post(msg: QueueThreadMessage): void {
  scope.postMessage(msg);
}

// Errors reach the main thread at a bounded rate: past QUEUE_THREAD_MAX_PENDING_ERRORS reports
// not yet received, further ones are only counted (and the count rides on the next report; the
// last one held back is sent when the ring is handed back). An error that needs a reset is
// always sent.
function report(err: VirtioError): void {
  const c = ctl!;
  if (!err.needsReset && Atomics.load(c, Ctl.ERRORS_PENDING) >= QUEUE_THREAD_MAX_PENDING_ERRORS) {
    dropped++;
    lastDropped = err;
    return;
  }
  send(err, dropped);
  dropped = 0;
  lastDropped = undefined;
}

function send(err: VirtioError, before: number): void {
  Atomics.add(ctl!, Ctl.ERRORS_PENDING, 1);
  post({
    type: "error",
    kind: err.kind,
    message: err.message,
    needsReset: err.needsReset,
    dropped: before,
  });
}

// The last error held back, with the count of those before it.
function flushDropped(): void {
  if (lastDropped === undefined) return;
  send(lastDropped, dropped - 1);
  dropped = 0;
  lastDropped = undefined;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function pollNames(revents: number): string {
  const names: string[] = [];
  if (revents & POLLERR) names.push("POLLERR");
  if (revents & POLLHUP) names.push("POLLHUP");
  if (revents & POLLNVAL) names.push("POLLNVAL");
  return names.join("|");
}

function mapMemory(start: QueueThreadStart, mappings: Mapping[]): GuestMemory {
  const regions: GuestRegionOptions[] = start.ring.memory.map((r) => {
    if ("fd" in r) {
      const m = mmapFd(r.fd, r.offset + r.size, 0);
      mappings.push(m);
      return { base: r.guestAddr, buffer: m.buffer, offset: r.offset, size: r.size };
    }
    return { base: r.guestAddr, buffer: unsafeView(r.address, r.size), size: r.size };
  });
  return new GuestMemory(regions);
}

function openQueue(start: QueueThreadStart, memory: GuestMemory): Virtqueue {
  const r = start.ring;
  const q: Virtqueue = r.format === "packed"
    ? new PackedQueue(r.maxSize)
    : new SplitQueue(r.maxSize);
  q.size = r.size;
  q.descTable = r.descTable;
  q.availRing = r.availRing;
  q.usedRing = r.usedRing;
  q.ready = true;
  q.setFeatures(r.features);
  q.validate(memory);
  q.nextAvail = r.nextAvail;
  q.nextUsed = r.nextUsed;
  return q;
}

// Serve until the handover word says STOPPING. Returns normally in every case but a bug.
function serve(start: QueueThreadStart, create: CreateQueueHandler): void {
  const c = ctl!;
  const stopping = (start.gen << 3) | Phase.STOPPING;
  const index = start.index;
  const ring = start.ring;
  const mappings: Mapping[] = [];
  let handler: QueueHandler | undefined;
  // Set by an error that needs a reset: the ring is served no more; wait for the stop.
  let broken = false;
  const onError = (err: VirtioError) => {
    if (err.needsReset) broken = true;
    report(err);
  };
  try {
    let memory: GuestMemory;
    let q: Virtqueue;
    try {
      memory = mapMemory(start, mappings);
      q = openQueue(start, memory);
      handler = create(start.params, { index, onError });
    } catch (err) {
      report(
        new VirtioError("InternalError", `queue ${index} thread: ${errorText(err)}`, {
          needsReset: true,
          cause: err,
        }),
      );
      return;
    }
    const call = ring.callFd >= 0 ? EventFd.fromFd(ring.callFd) : undefined;
    const qc = new VirtioQueueConfig(index, q, { notify: () => call?.write(1n) });
    const kick = EventFd.fromFd(ring.kickFd);
    const set = new PollSet([{ fd: ring.kickFd, events: POLLIN }, { fd: wakeFd, events: POLLIN }]);
    let watching = true;
    const kickBroken = (reason: string) => {
      watching = false;
      set.setFd(0, -1);
      post({ type: "kick", reason });
    };
    const handle = handler.handle;
    const pass = (): ServePass => {
      const r = serveQueue(memory, qc, handle, onError);
      Atomics.store(c, Ctl.NEXT_AVAIL, q.nextAvail);
      Atomics.store(c, Ctl.NEXT_USED, q.nextUsed);
      Atomics.add(c, Ctl.PASSES, 1);
      return r;
    };
    // Poll mode adapts its window as QEMU's iothreads do: it grows (doubling, from 4 µs, up to
    // pollUs) while the waits it would have replaced are short, and shrinks (halving, to
    // nothing) when they are longer than pollUs: a ring kicked rarely costs no spinning.
    const pollMax = ring.pollUs / 1000;
    let window = 0;
    // Buffers may be waiting already (the ring was handed over with work in it).
    let last = pass();
    for (;;) {
      if (Atomics.load(c, Ctl.STATE) === stopping) return;
      if (broken) {
        if (watching) {
          watching = false;
          set.setFd(0, -1);
        }
      } else if (last.more) {
        last = pass();
        continue;
      } else if (window > 0 && last.completed > 0) {
        last = spin(q, memory, pass, window, stopping);
        if (last.more || last.completed > 0) continue;
      }
      const asleep = pollMax > 0 ? performance.now() : 0;
      const n = set.wait(-1);
      if (pollMax > 0) {
        const slept = performance.now() - asleep;
        if (slept <= pollMax) window = Math.min(pollMax, Math.max(2 * window, POLL_MIN_MS));
        else window = window / 2 < POLL_MIN_MS ? 0 : window / 2;
      }
      Atomics.add(c, Ctl.WAKEUPS, 1);
      if (n === 0) continue;
      if (set.revents(1) !== 0) wake!.read();
      const revents = watching ? set.revents(0) : 0;
      if (revents === 0) continue;
      const bad = revents & (POLLERR | POLLHUP | POLLNVAL);
      if (bad !== 0) {
        kickBroken(`poll reported ${pollNames(bad)}`);
        continue;
      }
      let reads = 0;
      try {
        while (kick.read() !== 0n) {
          if (++reads === EVENTFD_MAX_DRAIN) break;
        }
      } catch (err) {
        kickBroken(`read failed: ${errorText(err)}`);
        continue;
      }
      if (reads === EVENTFD_MAX_DRAIN) {
        kickBroken(
          `still readable after ${EVENTFD_MAX_DRAIN} reads (a semaphore eventfd holding a large count?)`,
        );
        continue;
      }
      if (!broken) last = pass();
    }
  } finally {
    try {
      handler?.close?.();
    } catch (err) {
      report(new VirtioError("InternalError", `queue ${index} handler close: ${errorText(err)}`));
    }
    for (const m of mappings) m.unmap();
    flushDropped();
  }
}

/** The smallest poll window, in ms (4 µs, as QEMU's). */
const POLL_MIN_MS = 0.004;

// Poll mode: with notifications suppressed, keep checking the ring for `pollMs` after the last
// pass that served; then re-enable them (serving at once what arrived in between). Returns the
// last pass, or an empty one when nothing came.
function spin(
  q: Virtqueue,
  memory: GuestMemory,
  pass: () => ServePass,
  pollMs: number,
  stopping: number,
): ServePass {
  const c = ctl!;
  let last: ServePass = { completed: 0, more: false };
  try {
    q.disableNotification(memory);
    let deadline = performance.now() + pollMs;
    while (performance.now() < deadline) {
      if (Atomics.load(c, Ctl.STATE) === stopping) break;
      if (!q.hasPending(memory)) continue;
      last = pass(); // the pass re-enables notifications at its end: suppress them again
      if (last.more) return last;
      if (last.completed > 0) deadline = performance.now() + pollMs;
      q.disableNotification(memory);
    }
    if (q.enableNotification(memory)) return pass();
  } catch {
    // A ring that broke was reported by the pass that found it; the next pass says so again.
    return pass();
  }
  return { completed: 0, more: false };
}

scope.onmessage = async (e: MessageEvent) => {
  const msg = e.data;
  if (msg?.type === "init") {
    ctl = new Int32Array(msg.ctl as SharedArrayBuffer);
    wakeFd = msg.wakeFd;
    wake = EventFd.fromFd(wakeFd);
    return;
  }
  if (msg?.type !== "start" || ctl === undefined) return;
  const start = msg as QueueThreadStart;
  let create = factories.get(start.module);
  let loadError: unknown;
  if (create === undefined) {
    try {
      const mod = await import(start.module);
      if (typeof mod.createQueueHandler !== "function") {
        throw new TypeError(`${start.module} exports no createQueueHandler`);
      }
      create = mod.createQueueHandler as CreateQueueHandler;
      factories.set(start.module, create);
    } catch (err) {
      loadError = err;
    }
  }
  const c = ctl;
  const gen = start.gen << 3;
  // A start the main thread took back (stopped before this thread came to it) is ignored.
  if (
    Atomics.compareExchange(c, Ctl.STATE, gen | Phase.PENDING, gen | Phase.RUNNING) !==
      (gen | Phase.PENDING)
  ) {
    return;
  }
  try {
    if (create === undefined) {
      report(
        new VirtioError(
          "InternalError",
          `queue ${start.index} thread cannot load ${start.module}: ${errorText(loadError)}`,
          { needsReset: true },
        ),
      );
    } else {
      serve(start, create);
    }
  } catch (err) {
    // Only a bug gets here: say so, and let the main thread stop waiting.
    Atomics.store(c, Ctl.STATE, gen | Phase.DEAD);
    Atomics.notify(c, Ctl.STATE);
    post({ type: "crash", message: errorText(err) });
    return;
  }
  Atomics.store(c, Ctl.STATE, gen | Phase.IDLE);
  Atomics.notify(c, Ctl.STATE);
};
