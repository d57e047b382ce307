/**
 * The fuzz targets and the loop that runs them. A target runs iterations `[from, to)` of a
 * seed; iteration `i` is generated from `(seed, i)` alone, on a device made fresh at the start
 * of its episode (`EPISODE` iterations), so any failure replays from its episode's start.
 *
 * @module
 */

import { MmioRegister, MmioTransport } from "../transport/mmio.ts";
import { GuestMemory } from "../memory/guest_memory.ts";
import {
  DEFAULT_SERVE_BUDGET,
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
} from "../devices/device.ts";
import {
  BudgetOverrun,
  MeteredMemory,
  meterQueue,
  WorkMeter,
} from "../testing/_conformance_rig.ts";
import { MmioDriver } from "../testing/mmio_driver.ts";
import { INTERESTING_32, Prng } from "./prng.ts";
import { describe, DeviceRig, type DeviceSpec, type FuzzFailure, turn } from "./_device_rig.ts";
import { DEVICE_SPECS, junkRequest } from "./_devices.ts";
import { runVhostUser } from "./_vhost_user.ts";

/** Iterations per episode (a fresh device each). */
export const EPISODE = 128;

/** What a run of a target did. */
export interface RunStats {
  /** Target name. */
  target: string;
  /** Iterations run. */
  iterations: number;
  /** Wall time in milliseconds. */
  ms: number;
  /** Failures (with their iterations). */
  failures: FuzzFailure[];
  /** Times the device asked for a reset and got one. */
  resets: number;
  /** Chains the device took. */
  chains: number;
  /** Iterations whose memory check was widened (a writable buffer over a ring). */
  widened: number;
}

/** Options of a run. */
export interface RunOptions {
  /** Stop at this time (`performance.now()` milliseconds), at an episode boundary or not. */
  deadline?: number;
  /** Yield to the event loop every this many iterations (default 16). */
  yieldEvery?: number;
  /** Called every so often with the iterations done. */
  progress?: (done: number) => void;
}

/** One fuzz target. */
export interface FuzzTarget {
  /** Name on the command line and in the corpus. */
  name: string;
  /** Whether it fuzzes a device through its rings (those get the 10-million figure). */
  device: boolean;
  /**
   * Run iterations `[from, to)` of `seed`.
   * @param seed The seed.
   * @param from First iteration.
   * @param to One past the last.
   * @param options Deadline, yield cadence.
   */
  run(seed: number, from: number, to: number, options?: RunOptions): Promise<RunStats>;
}

// One iteration; `false` when it only set the device up again (the caller then yields, so
// what the activation queued as microtasks runs as a pass of its own, not inside the next
// iteration's).
function deviceIteration(rig: DeviceRig, r: Prng, i: number): boolean {
  rig.iteration = i;
  rig.check();
  if (rig.needsReset() || rig.desynced) {
    rig.resets++;
    rig.init(r);
    rig.arm();
    return false;
  }
  rig.reap();
  const spec = rig.spec;
  const n = rig.queues.length;
  const touched: number[] = [];
  if (r.chance(0.6)) {
    rig.supplyLazy(r);
    for (const l of spec.lazy ?? []) if (l.queue < n) touched.push(l.queue);
  }
  const actions = 1 + r.int(4);
  for (let k = 0; k < actions; k++) {
    const x = r.int(100);
    if (x < 80) {
      const req = spec.request(r, rig);
      if (rig.addRequest(r, req, 0.3)) touched.push(req.queue);
    } else if (x < 90) {
      const req = junkRequest(r, n);
      if (rig.addRequest(r, req, 0.5)) touched.push(req.queue);
    } else if (x < 97) {
      // Host-side activity may make the device work right now: a pass of its own.
      rig.meter.cut();
      spec.host?.(r, rig);
      rig.meter.cut();
    } else if (x < 98) {
      const q = r.int(n);
      if (r.chance(0.5)) rig.hostileRing(r, q);
      else rig.concurrentRefill(r, q);
      touched.push(q);
    }
  }
  rig.arm();
  for (const q of touched) {
    if (r.chance(0.97)) rig.kick(q);
  }
  if (r.chance(0.01)) rig.kick(r.pick([n, 0xffff, r.u32()]));
  rig.stimulate();
  return true;
}

function deviceTarget(spec: DeviceSpec): FuzzTarget {
  return {
    name: spec.name,
    device: true,
    async run(seed, from, to, options = {}) {
      const stats: RunStats = {
        target: spec.name,
        iterations: 0,
        ms: 0,
        failures: [],
        resets: 0,
        chains: 0,
        widened: 0,
      };
      const t0 = performance.now();
      const every = options.yieldEvery ?? 16;
      let rig: DeviceRig | undefined;
      let episode = -1;
      const finish = async () => {
        if (rig === undefined) return;
        await turn();
        await turn(true);
        rig.iteration = Math.max(from, from + stats.iterations - 1);
        rig.check();
        rig.close();
        stats.failures.push(...rig.failures);
        stats.resets += rig.resets;
        stats.chains += rig.meter.totalChains;
        stats.widened += rig.widened;
        rig = undefined;
      };
      for (let i = from; i < to; i++) {
        const e = Math.floor(i / EPISODE);
        if (e !== episode || rig === undefined) {
          await finish();
          if (options.deadline !== undefined && performance.now() > options.deadline) break;
          const er = new Prng(seed ^ 0x5bd1e995, e);
          rig = new DeviceRig(spec, er);
          rig.init(er);
          rig.arm();
          episode = e;
          await turn(); // the activation's own work, a pass of its own
        }
        let full = true;
        try {
          full = deviceIteration(rig, new Prng(seed, i), i);
        } catch (err) {
          if (!(err instanceof BudgetOverrun)) rig.fail(`the harness caught: ${describe(err)}`);
          rig.arm();
        }
        stats.iterations++;
        if (!full) {
          await turn();
        } else if ((i + 1) % every === 0) {
          await turn((i + 1) % (every * 8) === 0);
          if ((i + 1) % 4096 === 0) options.progress?.(stats.iterations);
        }
        if (stats.failures.length + rig.failures.length > 32) break;
      }
      await finish();
      stats.ms = performance.now() - t0;
      return stats;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// MMIO register sequences

const REGS = Object.values(MmioRegister);

function mmioTarget(): FuzzTarget {
  return {
    name: "mmio",
    device: false,
    async run(seed, from, to, options = {}) {
      const stats: RunStats = {
        target: "mmio",
        iterations: 0,
        ms: 0,
        failures: [],
        resets: 0,
        chains: 0,
        widened: 0,
      };
      const t0 = performance.now();
      let episode = -1;
      let ctx:
        | {
          t: MmioTransport;
          driver: MmioDriver;
          meter: WorkMeter;
          release: () => void;
          spec: DeviceSpec;
        }
        | undefined;
      const fail = (i: number, message: string) => {
        if (stats.failures.length < 32) stats.failures.push({ iteration: i, message });
      };
      const end = () => {
        if (ctx === undefined) return;
        try {
          ctx.t.writeU32(MmioRegister.Status, 0);
          ctx.release();
        } catch (err) {
          fail(from + stats.iterations, `release threw: ${describe(err)}`);
        }
        ctx = undefined;
      };
      for (let i = from; i < to; i++) {
        const e = Math.floor(i / EPISODE);
        if (e !== episode || ctx === undefined) {
          end();
          await turn();
          if (options.deadline !== undefined && performance.now() > options.deadline) break;
          const er = new Prng(seed ^ 0x1b873593, e);
          const spec = DEVICE_SPECS[er.int(DEVICE_SPECS.length)];
          const device = spec.create(er);
          const buffer = new ArrayBuffer(8 << 20);
          const meter = new WorkMeter({
            chains: DEFAULT_SERVE_BUDGET.chains,
            bytes: 2 * DEFAULT_SERVE_BUDGET.bytes,
          });
          const mem = new MeteredMemory(new GuestMemory([{ base: 0, buffer }]).regions, meter);
          const t = new MmioTransport(device, mem, { version: er.chance(0.2) ? 1 : 2 });
          const driver = new MmioDriver(t, new GuestMemory([{ base: 0, buffer }]));
          ctx = {
            t,
            driver,
            meter,
            spec,
            release: () => (spec.release ? spec.release(device) : device.remove?.()),
          };
          episode = e;
        }
        const r = new Prng(seed, i);
        const { t, meter } = ctx;
        const ops = 1 + r.int(32);
        try {
          for (let k = 0; k < ops; k++) {
            meter.cut();
            const x = r.int(10);
            if (x < 3) {
              // A step of a proper initialisation, in or out of order.
              const steps = [
                0,
                DEVICE_ACKNOWLEDGE,
                DEVICE_ACKNOWLEDGE | DEVICE_DRIVER,
                DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK,
                DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK,
              ];
              t.writeU32(MmioRegister.Status, r.pick(steps));
            } else if (x < 7) {
              const off = r.chance(0.9) ? r.pick(REGS) : r.int(0x200);
              const v = r.chance(0.5)
                ? r.int(64)
                : r.chance(0.5)
                ? r.pick(INTERESTING_32)
                : r.u32();
              t.writeU32(off, v);
            } else if (x < 9) {
              t.readU32(r.chance(0.9) ? r.pick(REGS) : r.int(0x200));
            } else {
              const width = r.pick([1, 2, 3, 4, 8, 0]);
              const off = r.chance(0.7) ? 0x100 + r.int(0x100) : r.int(0x1100);
              const buf = r.bytes(width);
              if (r.chance(0.5)) t.read(off, buf);
              else t.write(off, buf);
            }
          }
          // Now and then a proper driver must still bring the device up.
          if (r.chance(0.05)) {
            if (t.version === 2) {
              ctx.driver.init({ queueSize: 16, ringBase: 0x10000, bufferBase: 0x100000 });
              for (const q of t.queues) meterQueue(q, meter);
              if ((t.status & DEVICE_DRIVER_OK) === 0 || (t.status & DEVICE_NEEDS_RESET) !== 0) {
                fail(
                  i,
                  `a proper initialisation after the sequence left status 0x${
                    t.status.toString(16)
                  }`,
                );
              }
            }
          }
        } catch (err) {
          if (!(err instanceof BudgetOverrun)) fail(i, `a register access threw: ${describe(err)}`);
        }
        if (meter.overrun !== undefined) {
          fail(i, `budget: ${meter.overrun}`);
          meter.overrun = undefined;
        }
        stats.iterations++;
        if ((i + 1) % 64 === 0) await turn();
        if ((i + 1) % 4096 === 0) options.progress?.(stats.iterations);
      }
      end();
      await turn();
      stats.ms = performance.now() - t0;
      return stats;
    },
  };
}

/** Every target, devices first. */
export const TARGETS: readonly FuzzTarget[] = [
  ...DEVICE_SPECS.map(deviceTarget),
  mmioTarget(),
  { name: "vhost-user", device: false, run: runVhostUser },
];

/**
 * The first iteration of the episode holding iteration `i` (where a replay starts).
 * @param i An iteration.
 * @returns Its episode's first iteration.
 */
export function episodeStart(i: number): number {
  return Math.floor(i / EPISODE) * EPISODE;
}
