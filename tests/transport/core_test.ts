// The transport core on its own: queue start/stop without reset, the control queue, deferred
// activation, and the per-pass budget with its continuation (a driver that refills its ring as
// fast as it is served cannot hold the event loop, and other queues are served in between).

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { VIRTIO_F_EVENT_IDX, VIRTQ_USED_F_NO_NOTIFY } from "../../queue/split.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import {
  DEFAULT_SERVE_BUDGET,
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  type InterruptNotifier,
  serveQueue,
  TYPE_CONSOLE,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
} from "../../devices/device.ts";
import { TransportCore, type TransportError } from "../../transport/core.ts";
import { DRIVER_OPT_IN_FEATURES, DriverQueue } from "../../testing/queue_driver.ts";

const OK = DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK;

/** Serves each chain by filling its writable part; counts passes and lifecycle calls. */
class FillDevice extends VirtioDeviceBase {
  activations = 0;
  reconfigures = 0;
  resets = 0;
  passes = 0;
  served = [0, 0, 0];
  ctrl: number;

  constructor(options: { queues?: number[]; ctrl?: number; required?: number } = {}) {
    super(
      TYPE_CONSOLE,
      new VirtioDeviceInfo(
        "fill",
        featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX) | 1n,
        options.queues ?? [16, 16],
        new Uint8Array([7, 0, 0, 0]),
      ),
    );
    this.ctrl = options.ctrl ?? 0;
    this.#required = options.required ?? 1;
  }

  readonly #required: number;

  ctrlQueueMaxSizes(): number {
    return this.ctrl;
  }

  protected override requiredQueues(): number {
    return this.#required;
  }

  override writeConfig(offset: number, data: Uint8Array): void {
    this.info.writeConfig(offset, data);
  }

  /** The config of the current activation. */
  get config(): VirtioDeviceConfig | undefined {
    return this.active;
  }

  protected override onActivate(): void {
    this.activations++;
  }

  protected override onReconfigure(): void {
    this.reconfigures++;
  }

  protected override onReset(): void {
    this.resets++;
  }

  processQueue(index: number): boolean {
    const qc = this.queue(index);
    if (this.active === undefined || qc === undefined) return false;
    this.passes++;
    return serveQueue(this.active.memory, qc, (c: DescriptorChain) => {
      this.served[index]++;
      c.writer.fill(c.writer.remaining, 0xa5);
      return c.writer.written;
    }, (e) => this.reportError(e)).more;
  }
}

interface Rig {
  mem: GuestMemory;
  core: TransportCore;
  device: FillDevice;
  drivers: DriverQueue[];
  errors: TransportError[];
  calls: number[];
  configChanges: number;
}

function rig(
  device = new FillDevice(),
  options: { eventIdx?: boolean; defer?: boolean; onCall?: (i: number) => void } = {},
): Rig {
  const mem = GuestMemory.create(8 << 20);
  const errors: TransportError[] = [];
  const r = { calls: [] as number[], configChanges: 0 };
  const core = new TransportCore(device, {
    memory: mem,
    queueNotifier: (i): InterruptNotifier => ({
      notify: () => {
        r.calls.push(i);
        options.onCall?.(i);
      },
    }),
    configNotifier: { notify: () => r.configChanges++ },
    deferIncompleteActivation: options.defer,
    onError: (e) => errors.push(e),
  });
  const drivers = core.queues.map((_, i) =>
    new DriverQueue(mem, {
      size: 16,
      ringBase: 0x10000 * (i + 1),
      bufferBase: 0x100000 + 0x100000 * i,
      bufferEnd: 0x100000 + 0x100000 * (i + 1),
      eventIdx: options.eventIdx ?? false,
    })
  );
  return Object.assign(r, { mem, core, device, drivers, errors });
}

// The tests lay out split rings.
const splitFeatures = (r: Rig) => r.core.offeredFeatures() & ~DRIVER_OPT_IN_FEATURES;

function negotiate(r: Rig, features = splitFeatures(r)): void {
  r.core.setStatus(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
  r.core.setDriverFeatures(features);
  r.core.setStatus(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
}

function start(
  r: Rig,
  queues = r.drivers.map((_, i) => i),
  features = splitFeatures(r),
): void {
  negotiate(r, features);
  for (const i of queues) r.drivers[i].program(r.core.queueForSetup(i)!);
  r.core.setStatus(OK);
}

const turn = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

describe("TransportCore lifecycle", () => {
  it("activates on DRIVER_OK with the ready queues and the accepted features", () => {
    const r = rig();
    start(r, [0]);
    assert.equal(r.core.isActive, true);
    assert.equal(r.device.activations, 1);
    assert.deepEqual(r.device.config?.queues.map((q) => q.index), [0]);
    assert.equal(r.device.ackedFeatures(), splitFeatures(r));
    assert.deepEqual(r.errors, []);
  });

  it("hands features to the device only once FEATURES_OK is accepted", () => {
    const r = rig();
    r.core.setStatus(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
    r.core.writeDriverFeatures(0, 1);
    r.core.writeDriverFeatures(1, 1);
    assert.equal(r.device.ackedFeatures(), 0n);
    r.core.setStatus(DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
    assert.equal(r.device.ackedFeatures(), 1n | featureBit(VIRTIO_F_VERSION_1));
  });

  it("stopping and starting a queue reconfigures the device without resetting it", () => {
    const r = rig();
    start(r);
    // The driver writes the configuration (as a block driver sets its cache mode).
    assert.equal(r.core.writeConfig(0, new Uint8Array([0])), true);
    r.core.stopQueue(1);
    assert.deepEqual(r.device.config?.queues.map((q) => q.index), [0]);
    r.core.stopQueue(0);
    assert.deepEqual(r.device.config?.queues.map((q) => q.index), []);
    r.core.startQueue(0);
    r.core.startQueue(1);
    assert.deepEqual(r.device.config?.queues.map((q) => q.index), [0, 1]);
    assert.equal(r.device.resets, 0);
    assert.equal(r.device.activations, 1);
    assert.equal(r.device.reconfigures, 4);
    const cfg = new Uint8Array(1);
    r.core.readConfig(0, cfg);
    assert.equal(cfg[0], 0, "driver-written configuration survives");
    assert.equal(r.device.ackedFeatures(), splitFeatures(r));
    // And it serves again.
    r.drivers[1].addChain([{ writable: 8 }]);
    r.core.notify(1);
    assert.equal(r.drivers[1].takeUsed()?.len, 8);
    assert.deepEqual(r.errors, []);
  });

  it("a stopped queue is not served; its kicks are ignored", () => {
    const r = rig();
    start(r);
    r.core.stopQueue(0);
    r.drivers[0].addChain([{ writable: 8 }]);
    r.core.notify(0);
    assert.equal(r.drivers[0].pendingUsed(), 0);
    r.core.startQueue(0);
    r.core.notify(0);
    assert.equal(r.drivers[0].pendingUsed(), 1);
  });

  it("a new memory table keeps the device running on the same rings", () => {
    const r = rig();
    start(r);
    const again = new GuestMemory([{ base: 0, buffer: r.mem.regions[0].bytes.buffer }]);
    r.core.setMemory(again);
    assert.equal(r.device.config?.memory, again);
    assert.equal(r.device.resets, 0);
    // Memory without the rings stops the queues and says so.
    r.core.setMemory(GuestMemory.create(0x1000));
    assert.deepEqual(r.errors.map((e) => e.code), ["InvalidQueueAccess", "InvalidQueueAccess"]);
    assert.equal(r.core.queues[0].ready, false);
    assert.equal(r.device.resets, 0);
  });

  it("reset returns device and queues to their initial state", () => {
    const r = rig();
    start(r);
    r.core.setStatus(0);
    assert.equal(r.core.status, 0);
    assert.equal(r.core.isActive, false);
    assert.equal(r.device.ackedFeatures(), 0n);
    assert.equal(r.core.queues[0].ready, false);
    assert.ok(r.device.resets >= 1);
  });

  it("a device that needs more queues is refused with NEEDS_RESET, or deferred on request", () => {
    const strict = rig(new FillDevice({ required: 2 }));
    start(strict, [0]);
    assert.equal(strict.core.isActive, false);
    assert.notEqual(strict.core.status & DEVICE_NEEDS_RESET, 0);
    assert.deepEqual(strict.errors.map((e) => e.code), ["ActivationFailed"]);
    assert.equal(strict.configChanges, 1);

    const deferred = rig(new FillDevice({ required: 2 }), { defer: true });
    negotiate(deferred);
    deferred.core.setStatus(OK);
    deferred.drivers[0].program(deferred.core.queues[0]);
    deferred.core.startQueue(0);
    assert.equal(deferred.core.tryActivate(), false);
    assert.equal(deferred.core.status & DEVICE_NEEDS_RESET, 0);
    deferred.drivers[1].program(deferred.core.queues[1]);
    deferred.core.startQueue(1);
    assert.equal(deferred.core.tryActivate(), true);
    assert.deepEqual(deferred.errors, []);
  });

  it("a control queue follows the data queues and reaches the device as ctrlQueue", () => {
    const r = rig(new FillDevice({ queues: [16, 16], ctrl: 16 }));
    assert.equal(r.core.queues.length, 3);
    assert.equal(r.core.ctrlQueueIndex, 2);
    start(r);
    assert.deepEqual(r.device.config?.queues.map((q) => q.index), [0, 1]);
    assert.equal(r.device.config?.ctrlQueue?.index, 2);
    assert.equal(r.device.config?.ctrlQueue?.actualSize, 16);
  });
});

describe("TransportCore per-pass budget", () => {
  it("serveQueue stops at the budget, keeps notifications suppressed and reports more", () => {
    const r = rig();
    start(r, [0], splitFeatures(r) & ~featureBit(VIRTIO_F_EVENT_IDX));
    const d = r.drivers[0];
    for (let i = 0; i < 10; i++) d.addChain([{ writable: 4 }]);
    const qc = r.device.config!.queues[0];
    const pass = serveQueue(r.mem, qc, (c) => c.writer.written, () => {}, {
      chains: 4,
      bytes: 1 << 20,
    });
    assert.deepEqual(pass, { completed: 4, more: true });
    assert.equal(r.mem.readU16(d.usedRing) & VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY);
    const rest = serveQueue(r.mem, qc, (c) => c.writer.written, () => {}, {
      chains: 100,
      bytes: 1 << 20,
    });
    assert.deepEqual(rest, { completed: 6, more: false });
    assert.equal(r.mem.readU16(d.usedRing) & VIRTQ_USED_F_NO_NOTIFY, 0);
  });

  it("a byte budget ends the pass after the chain that crosses it", () => {
    const r = rig();
    start(r, [0]);
    for (let i = 0; i < 4; i++) r.drivers[0].addChain([{ writable: 1000 }]);
    const qc = r.device.config!.queues[0];
    const pass = serveQueue(
      r.mem,
      qc,
      (c) => {
        c.writer.fill(c.writer.remaining);
        return c.writer.written;
      },
      () => {},
      { chains: 100, bytes: 1500 },
    );
    assert.deepEqual(pass, { completed: 2, more: true });
  });

  it("a driver refilling as fast as it is served gets one budget per turn; others run between", async () => {
    let refills = 0;
    const limit = 3 * DEFAULT_SERVE_BUDGET.chains + 17;
    const r: Rig = rig(undefined, {
      eventIdx: true,
      // The driver of queue 0 adds a new buffer each time it hears of a used one: without a
      // budget one notification would serve all of them in one go.
      onCall: (i) => {
        if (i !== 0 || refills >= limit) return;
        refills++;
        r.drivers[0].takeAllUsed();
        r.drivers[0].setUsedEvent(r.drivers[0].usedIdx());
        r.drivers[0].addChain([{ writable: 16 }]);
      },
    });
    start(r);
    r.drivers[0].setUsedEvent(0);
    r.drivers[0].addChain([{ writable: 16 }]);
    r.core.notify(0);
    assert.equal(r.device.served[0], DEFAULT_SERVE_BUDGET.chains, "one budget per pass");
    assert.equal(r.core.hasContinuation(0), true);
    // Another queue is served right away, while queue 0 waits for its next turn.
    r.drivers[1].addChain([{ writable: 8 }]);
    r.core.notify(1);
    assert.equal(r.device.served[1], 1);
    // Queue 0 keeps making progress on later turns without new kicks, until the driver stops.
    for (let i = 0; i < 10 && r.core.hasContinuation(0); i++) await turn();
    assert.equal(r.core.hasContinuation(0), false);
    assert.equal(r.device.served[0], limit + 1);
    assert.ok(r.device.passes >= 4 + 1, `${r.device.passes} passes`);
    assert.deepEqual(r.errors, []);
  });

  it("reset cancels a pending continuation", async () => {
    const r = rig();
    start(r, [0]);
    for (let i = 0; i < 15; i++) r.drivers[0].addChain([{ writable: 1 }]);
    // A device whose budget is one chain per pass.
    const qc = r.device.config!.queues[0];
    r.device.processQueue = () =>
      serveQueue(r.mem, qc, () => 1, () => {}, { chains: 1, bytes: 1 << 20 }).more;
    r.core.notify(0);
    assert.equal(r.core.hasContinuation(0), true);
    r.core.setStatus(0);
    assert.equal(r.core.hasContinuation(0), false);
    await turn();
    assert.equal(r.drivers[0].pendingUsed(), 1);
  });
});
