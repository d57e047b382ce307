/**
 * The hostile-driver conformance suite: run it against any {@linkcode VirtioDevice} to check
 * that a driver doing everything wrong cannot crash, wedge or starve it.
 *
 * Each case makes a fresh device (from your factory), puts it behind the real virtio-mmio
 * transport ({@linkcode MmioTransport}) and initialises it with the driver harness
 * ({@linkcode MmioDriver}, split or packed rings), then attacks it with hand-written rings and
 * chains — descriptor loops, out-of-range indices and addresses, addresses that wrap at 2^64,
 * indirect misuse, avail index jumps, overlapping rings, the 16-bit index wrap, a ring that
 * feeds itself, buffers of 4 GiB — or abuses the register file (bad status transitions,
 * features never offered, bad queue sizes and addresses, configuration accesses out of range,
 * notifications of queues that do not exist). After each case it checks that:
 *
 * - no exception escaped the transport or the device (and nothing was thrown later, from a
 *   timer or a promise);
 * - no pass did more than its budget: chains taken and guest bytes touched are counted per
 *   pass, a pass being everything done in one turn of the event loop;
 * - nothing was written outside the writable buffers of the chains and the used rings (guest
 *   memory is compared byte for byte with a snapshot);
 * - every malformed chain came back with used length 0, or the device set DEVICE_NEEDS_RESET
 *   (virtio 1.2 §2.1.2, §2.7.8.2); a ring that cannot go on (a head out of range, an avail
 *   index a whole ring ahead) needs NEEDS_RESET;
 * - a valid request still works afterwards (after a reset when the device asked for one).
 *
 * @example Run it from a test file (node:test, under `deno test` or `bun test`)
 * ```ts ignore
 * import { testConformance } from "@virtio-ts/virtio/testing";
 * import { RngDevice } from "@virtio-ts/virtio/devices/rng";
 * testConformance("virtio-rng", () => new RngDevice(), { validRequest: () => ({ queue: 0, buffers: [{ writable: 16 }] }) });
 * ```
 *
 * @module
 */

import { describe, it } from "node:test";
import type { VirtioDevice } from "../devices/device.ts";
import { allCases, type CaseDef } from "./_conformance_cases.ts";
import {
  type ConformanceHints,
  type ConformanceRequest,
  type DeviceFactory,
  Rig,
} from "./_conformance_harness.ts";

export type { ConformanceHints, ConformanceRequest, DeviceFactory };

/** The result of one case. */
export interface ConformanceCaseResult {
  /** The case, e.g. `split: descriptor loop (queue 0)`. */
  name: string;
  /** Whether every check held. */
  ok: boolean;
  /** What did not hold (empty when `ok`). */
  failures: string[];
  /** Remarks that are not failures (a case skipped for want of a feature, say). */
  notes: string[];
  /** Passes the device made while attacked. */
  passes: number;
  /** Most chains one pass took from one queue. */
  maxChainsPerPass: number;
  /** Most guest bytes one pass touched. */
  maxBytesPerPass: number;
  /** Whether the device set DEVICE_NEEDS_RESET during the attack. */
  neededReset: boolean;
}

/** What a conformance run found. */
export interface ConformanceReport {
  /** The device's name. */
  device: string;
  /** Every case, in order. */
  cases: ConformanceCaseResult[];
  /** Every failure, named by its case. */
  failures: { case: string; message: string }[];
  /** Whether every case passed. */
  ok: boolean;
}

/** Options of {@linkcode runConformance}. */
export interface ConformanceRunOptions {
  /** Only the cases whose name contains one of these strings. */
  only?: readonly string[];
}

function deviceName(device: VirtioDevice, hints: ConformanceHints): string {
  return hints.name ?? `device type ${device.deviceType()}`;
}

/**
 * The names of the cases a device gets (they depend on its queues).
 * @param device A device of the kind under test (only its queues are looked at).
 * @param hints What the suite may know about it.
 * @returns The case names, in the order they run.
 */
export function conformanceCases(device: VirtioDevice, hints: ConformanceHints = {}): string[] {
  return planFor(device, hints).map((c) => c.name);
}

function planFor(device: VirtioDevice, hints: ConformanceHints): CaseDef[] {
  const n = device.queueMaxSizes().length + ((device.ctrlQueueMaxSizes?.() ?? 0) > 0 ? 1 : 0);
  const all = Array.from({ length: n }, (_, i) => i);
  const attack = (hints.queues ?? all).filter((q) => Number.isInteger(q) && q >= 0 && q < n);
  // The MMIO transport offers packed rings to every modern driver: both layouts are attacked.
  return allCases(attack, { packed: true });
}

async function plan(factory: DeviceFactory, hints: ConformanceHints): Promise<CaseDef[]> {
  const device = await factory();
  try {
    return planFor(device, hints);
  } finally {
    release(device);
  }
}

function release(device: VirtioDevice): void {
  try {
    device.remove?.();
  } catch { /* only its queues were looked at */ }
}

/**
 * Run one case on a fresh device.
 * @param factory Makes the device.
 * @param hints What the suite may know about it.
 * @param name The case (from {@linkcode conformanceCases}).
 * @returns Its result.
 * @throws {RangeError} When there is no case of that name.
 */
export async function runConformanceCase(
  factory: DeviceFactory,
  hints: ConformanceHints,
  name: string,
): Promise<ConformanceCaseResult> {
  const c = (await plan(factory, hints)).find((x) => x.name === name);
  if (c === undefined) throw new RangeError(`No conformance case named "${name}"`);
  return await runCase(factory, hints, c);
}

async function runCase(
  factory: DeviceFactory,
  hints: ConformanceHints,
  c: CaseDef,
): Promise<ConformanceCaseResult> {
  const rig = await Rig.create(factory, hints, {
    format: c.kind === "packed" ? "packed" : "split",
    init: c.kind !== "mmio",
    features: c.features,
  });
  let neededReset = false;
  try {
    if (c.kind !== "mmio" && !rig.init(c.features)) {
      rig.failures.push(
        `the device did not initialise (status 0x${rig.status().toString(16)}): ${
          rig.errors.map((e) => e.message).join("; ")
        }`,
      );
    } else {
      try {
        await c.run(rig);
      } catch (err) {
        rig.failures.push(`the case itself failed: ${err instanceof Error ? err.stack : err}`);
      }
      await rig.settle();
      neededReset = rig.needsReset();
      rig.verify();
      await rig.validAfter(c.sameRings ?? true);
    }
  } finally {
    await rig.close();
  }
  return {
    name: c.name,
    ok: rig.failures.length === 0,
    failures: [...rig.failures],
    notes: [...rig.notes],
    passes: rig.meter.passes,
    maxChainsPerPass: rig.meter.maxChains,
    maxBytesPerPass: rig.meter.maxBytes,
    neededReset,
  };
}

/**
 * Run the whole suite against a device.
 * @param factory Makes a fresh device for each case (a device is released with `remove()`,
 *   or `hints.cleanup`, after its case).
 * @param hints What the suite may know about the device: a valid request, the queues to
 *   attack, the receive queues it fills only when it has data, budgets.
 * @param options Which cases.
 * @returns The report.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { RngDevice } from "../devices/rng.ts";
 * import { runConformance } from "./conformance.ts";
 * const report = await runConformance(() => new RngDevice(), {
 *   name: "virtio-rng",
 *   validRequest: () => ({ queue: 0, buffers: [{ writable: 16 }] }),
 * }, { only: ["descriptor loop"] });
 * assert.ok(report.ok, report.failures.map((f) => f.message).join("\n"));
 * ```
 */
export async function runConformance(
  factory: DeviceFactory,
  hints: ConformanceHints = {},
  options: ConformanceRunOptions = {},
): Promise<ConformanceReport> {
  const cases = (await plan(factory, hints)).filter((c) =>
    options.only === undefined || options.only.some((s) => c.name.includes(s))
  );
  const probe = await factory();
  const name = deviceName(probe, hints);
  release(probe);
  const results: ConformanceCaseResult[] = [];
  for (const c of cases) results.push(await runCase(factory, hints, c));
  const failures = results.flatMap((r) => r.failures.map((message) => ({ case: r.name, message })));
  return { device: name, cases: results, failures, ok: failures.length === 0 };
}

/**
 * Register the suite with `node:test`: one `describe` for the device, one `it` per case, each
 * failing with the case's failures. For test files run by `deno test` or `bun test`.
 * @param name The `describe` title.
 * @param factory Makes a fresh device for each case.
 * @param hints What the suite may know about the device.
 *
 * @example Three lines in a test file
 * ```ts ignore
 * import { testConformance } from "@virtio-ts/virtio/testing";
 * import { MyDevice } from "./my_device.ts";
 * testConformance("my device", () => new MyDevice());
 * ```
 */
export function testConformance(
  name: string,
  factory: DeviceFactory,
  hints: ConformanceHints = {},
): void {
  // Test names must be known now, while `describe` runs: a device made by a synchronous
  // factory is asked for its queues (and released); otherwise every case for the hinted
  // queues, or for 8 queues, is registered and those the device does not have pass at once.
  let names: string[];
  const made = factory();
  if (made instanceof Promise) {
    const queues = hints.queues ?? [0, 1, 2, 3, 4, 5, 6, 7];
    names = allCases(queues, { packed: true }).map((c) => c.name);
    made.then(release, () => {});
  } else {
    names = conformanceCases(made, hints);
    release(made);
  }
  describe(`conformance: ${name}`, () => {
    let cases: Promise<CaseDef[]> | undefined;
    for (const c of names) {
      it(c, async () => {
        const def = (await (cases ??= plan(factory, hints))).find((x) => x.name === c);
        if (def === undefined) return; // not a queue of this device
        const r = await runCase(factory, hints, def);
        if (!r.ok) throw new Error(`${r.name}:\n  ${r.failures.join("\n  ")}`);
      });
    }
  });
}
