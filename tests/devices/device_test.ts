import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory, GuestMemoryError } from "../../memory/guest_memory.ts";
import { SplitQueue, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../../queue/split.ts";
import { QueueError } from "../../queue/error.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { DriverQueue } from "../../testing/queue_driver.ts";
import {
  ActivateError,
  createDeviceNotifier,
  createQueueNotifier,
  featureBit,
  type InterruptNotifier,
  InterruptStatus,
  serveQueue,
  TYPE_CONSOLE,
  VIRTIO_F_VERSION_1,
  VIRTIO_INTR_CONFIG,
  VIRTIO_INTR_VRING,
  VirtioDeviceBase,
  VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  VirtioQueueConfig,
} from "../../devices/device.ts";

/** Counts notifications. */
class CountingNotifier implements InterruptNotifier {
  count = 0;
  notify(): void {
    this.count++;
  }
}

/** A test device echoing each chain's readable bytes into its writable part. */
class EchoDevice extends VirtioDeviceBase {
  activations = 0;
  resets: (VirtioDeviceConfig | undefined)[] = [];
  refuse = false;

  constructor(queueSizes: number[] = [16, 16], required = queueSizes.length) {
    super(
      TYPE_CONSOLE,
      new VirtioDeviceInfo(
        "echo",
        featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX) | featureBit(3),
        queueSizes,
        new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]),
      ),
    );
    this.#required = required;
  }

  readonly #required: number;

  protected override requiredQueues(): number {
    return this.#required;
  }

  protected override onActivate(_config: VirtioDeviceConfig): void {
    if (this.refuse) throw new ActivateError("IOError", "backend unavailable");
    this.activations++;
  }

  protected override onReset(wasActive: VirtioDeviceConfig | undefined): void {
    this.resets.push(wasActive);
  }

  /** Expose the protected queue lookup. */
  queueAt(index: number): VirtioQueueConfig | undefined {
    return this.queue(index);
  }

  /** Expose the protected error report. */
  report(err: VirtioError): void {
    this.reportError(err);
  }

  processQueue(index: number): void {
    const qc = this.queue(index);
    if (this.active === undefined || qc === undefined) return;
    serveQueue(this.active.memory, qc, echo, (e) => this.reportError(e));
  }
}

function echo(chain: DescriptorChain): number {
  const buf = new Uint8Array(chain.readableBytes);
  chain.reader.readExact(buf);
  chain.writer.writeExact(buf);
  return buf.length;
}

interface Rig {
  mem: GuestMemory;
  drivers: DriverQueue[];
  queues: SplitQueue[];
  notifier: CountingNotifier;
  configNotifier: CountingNotifier;
  errors: VirtioError[];
  config: VirtioDeviceConfig;
}

function rig(
  options: { count?: number; size?: number; acked?: bigint; eventIdx?: boolean } = {},
): Rig {
  const mem = GuestMemory.create(2 << 20);
  const count = options.count ?? 2;
  const size = options.size ?? 16;
  const drivers: DriverQueue[] = [];
  const queues: SplitQueue[] = [];
  const notifier = new CountingNotifier();
  const configNotifier = new CountingNotifier();
  const errors: VirtioError[] = [];
  const qcs: VirtioQueueConfig[] = [];
  for (let i = 0; i < count; i++) {
    const ringBase = 0x10000 * (i + 1);
    const d = new DriverQueue(mem, {
      size,
      ringBase,
      bufferBase: 0x100000 + 0x40000 * i,
      bufferEnd: 0x100000 + 0x40000 * (i + 1),
      eventIdx: options.eventIdx ?? false,
    });
    const q = new SplitQueue(16);
    d.program(q);
    drivers.push(d);
    queues.push(q);
    qcs.push(new VirtioQueueConfig(i, q, notifier));
  }
  const config = new VirtioDeviceConfig({
    memory: mem,
    queues: qcs,
    deviceChangeNotifier: configNotifier,
    ackedFeatures: options.acked ?? featureBit(VIRTIO_F_VERSION_1),
    onError: (e) => errors.push(e),
  });
  return { mem, drivers, queues, notifier, configNotifier, errors, config };
}

function assertActivateError(fn: () => void, kind: ActivateError["kind"]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ActivateError);
    assert.equal(e.kind, kind, e.message);
    return true;
  });
}

describe("VirtioDeviceInfo features", () => {
  const offered = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX) | 0b101n |
    featureBit(63);

  it("getAvailFeatures() splits the offered features into 32-bit pages", () => {
    const info = new VirtioDeviceInfo("t", offered, [8], new Uint8Array(0));
    assert.equal(info.getAvailFeatures(0), (1 << VIRTIO_F_EVENT_IDX) + 0b101);
    assert.equal(info.getAvailFeatures(1), 0x8000_0001);
    assert.equal(info.getAvailFeatures(2), 0);
    assert.equal(info.getAvailFeatures(-1), 0);
    assert.equal(info.getAvailFeatures(0.5), 0);
  });

  it("setAckedFeatures() masks acknowledged bits to the offered ones and accumulates", () => {
    const info = new VirtioDeviceInfo("t", offered, [8], new Uint8Array(0));
    info.setAckedFeatures(0, 0b11);
    info.setAckedFeatures(1, 0xffffffff);
    assert.equal(info.ackedFeatures, 0b1n | featureBit(VIRTIO_F_VERSION_1) | featureBit(63));
    assert.equal(info.hasFeature(0), true);
    assert.equal(info.hasFeature(2), false);
    assert.equal(info.hasFeature(VIRTIO_F_VERSION_1), true);
    assert.equal(info.hasFeature(1), false);
    // Acknowledgements add up, as the seed's set_acked_features does, until reset.
    info.setAckedFeatures(0, 0xffffffff);
    assert.equal(info.ackedFeatures, offered);
    info.reset();
    assert.equal(info.ackedFeatures, 0n);
  });

  it("setAckedFeatures() ignores pages past bit 63", () => {
    const info = new VirtioDeviceInfo("t", offered, [8], new Uint8Array(0));
    info.setAckedFeatures(2, 0xffffffff);
    info.setAckedFeatures(-1, 0xffffffff);
    assert.equal(info.ackedFeatures, 0n);
  });

  it("setAckedFeatures() treats negative 32-bit values as unsigned", () => {
    const info = new VirtioDeviceInfo("t", offered, [8], new Uint8Array(0));
    info.setAckedFeatures(1, -1);
    assert.equal(info.ackedFeatures, featureBit(VIRTIO_F_VERSION_1) | featureBit(63));
  });

  it("reset() forgets the acknowledged features", () => {
    const info = new VirtioDeviceInfo("t", offered, [8], new Uint8Array(0));
    info.setAckedFeatures(0, 1);
    info.reset();
    assert.equal(info.ackedFeatures, 0n);
    assert.equal(info.availFeatures, offered);
  });
});

describe("VirtioDeviceInfo configuration space", () => {
  function assertInvalidInput(fn: () => void): void {
    assert.throws(fn, (e: unknown) => {
      assert.ok(e instanceof VirtioError);
      assert.equal(e.kind, "InvalidInput");
      assert.equal(e.needsReset, false);
      return true;
    });
  }

  it("readConfig() and writeConfig() work inside the space", () => {
    const info = new VirtioDeviceInfo("t", 0n, [8], new Uint8Array([1, 2, 3, 4]));
    const out = new Uint8Array(2);
    info.readConfig(2, out);
    assert.deepEqual(out, new Uint8Array([3, 4]));
    info.writeConfig(1, new Uint8Array([9, 9, 9]));
    assert.deepEqual(info.configSpace, new Uint8Array([1, 9, 9, 9]));
    info.readConfig(4, new Uint8Array(0));
  });

  it("readConfig() rejects a range outside the space with InvalidInput", () => {
    const info = new VirtioDeviceInfo("t", 0n, [8], new Uint8Array(4));
    assertInvalidInput(() => info.readConfig(3, new Uint8Array(2)));
    assertInvalidInput(() => info.readConfig(4, new Uint8Array(1)));
    assertInvalidInput(() => info.readConfig(-1, new Uint8Array(1)));
    assertInvalidInput(() => info.readConfig(0.5, new Uint8Array(1)));
  });

  it("writeConfig() rejects a range outside the space and leaves it unchanged", () => {
    const info = new VirtioDeviceInfo("t", 0n, [8], new Uint8Array(4));
    assertInvalidInput(() => info.writeConfig(2, new Uint8Array([1, 1, 1])));
    assertInvalidInput(() => info.writeConfig(-2, new Uint8Array([1])));
    assert.deepEqual(info.configSpace, new Uint8Array(4));
  });

  it("an empty configuration space refuses every non-empty access", () => {
    const info = new VirtioDeviceInfo("t", 0n, [8], new Uint8Array(0));
    assertInvalidInput(() => info.readConfig(0, new Uint8Array(1)));
  });
});

describe("Interrupt notifiers", () => {
  it("a queue notifier sets VIRTIO_INTR_VRING and calls the trigger with its vector", () => {
    const status = new InterruptStatus();
    const vectors: number[] = [];
    const n = createQueueNotifier((v) => vectors.push(v), status, 3);
    n.notify();
    assert.equal(status.value, VIRTIO_INTR_VRING);
    assert.deepEqual(vectors, [3]);
  });

  it("a config notifier sets VIRTIO_INTR_CONFIG and calls the trigger", () => {
    const status = new InterruptStatus();
    const vectors: number[] = [];
    createDeviceNotifier((v) => vectors.push(v), status).notify();
    assert.equal(status.value, VIRTIO_INTR_CONFIG);
    assert.deepEqual(vectors, [0]);
  });

  it("both notifiers share one status register; ack clears only the acknowledged bits", () => {
    const status = new InterruptStatus();
    let raised = 0;
    createQueueNotifier(() => raised++, status).notify();
    createDeviceNotifier(() => raised++, status).notify();
    assert.equal(status.value, VIRTIO_INTR_VRING | VIRTIO_INTR_CONFIG);
    assert.equal(raised, 2);
    status.ack(VIRTIO_INTR_VRING);
    assert.equal(status.value, VIRTIO_INTR_CONFIG);
    status.ack(VIRTIO_INTR_CONFIG);
    assert.equal(status.value, 0);
  });

  it("a notifier without a status register only triggers", () => {
    let raised = 0;
    createQueueNotifier(() => raised++).notify();
    assert.equal(raised, 1);
  });

  it("a notifier can target an eventfd-like signal", () => {
    const writes: (bigint | undefined)[] = [];
    const status = new InterruptStatus();
    createQueueNotifier({ write: (v?: bigint) => writes.push(v) }, status).notify();
    assert.deepEqual(writes, [1n]);
    assert.equal(status.value, VIRTIO_INTR_VRING);
  });
});

describe("VirtioError.from()", () => {
  it("maps a fatal QueueError to needsReset and keeps it as the cause", () => {
    const q = new QueueError("AvailIdxJump", "x", { fatal: true });
    const e = VirtioError.from(q);
    assert.equal(e.kind, "QueueError");
    assert.equal(e.needsReset, true);
    assert.equal(e.cause, q);
  });

  it("maps a non-fatal QueueError without needsReset", () => {
    const e = VirtioError.from(new QueueError("ShortBuffer", "x", { head: 1 }));
    assert.equal(e.kind, "QueueError");
    assert.equal(e.needsReset, false);
  });

  it("maps a GuestMemoryError and anything else", () => {
    assert.equal(VirtioError.from(new GuestMemoryError(0, 1)).kind, "GuestMemory");
    assert.equal(VirtioError.from(new Error("boom")).kind, "InternalError");
    assert.equal(VirtioError.from("text").message, "InternalError: text");
    const v = new VirtioError("IOError", "disk");
    assert.equal(VirtioError.from(v), v);
  });
});

describe("VirtioDeviceBase activation", () => {
  it("activate() validates the queues, applies features and marks the device active", () => {
    const dev = new EchoDevice();
    const acked = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX);
    const r = rig({ acked });
    dev.activate(r.config);
    assert.equal(dev.isActive, true);
    assert.equal(dev.activations, 1);
    assert.equal(r.queues[0].eventIdx, true);
    assert.equal(r.queues[0].indirect, false);
    assert.equal(dev.queueAt(1)?.queue, r.queues[1]);
  });

  it("activate() refuses a second activation (InvalidParam)", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    assertActivateError(() => dev.activate(r.config), "InvalidParam");
    assert.equal(dev.activations, 1);
  });

  it("activate() refuses a missing required queue", () => {
    const dev = new EchoDevice();
    const r = rig({ count: 1 });
    assertActivateError(() => dev.activate(r.config), "InvalidQueueConfig");
    assert.equal(dev.isActive, false);
  });

  it("activate() accepts a missing optional queue", () => {
    const dev = new EchoDevice([16, 16], 1);
    const r = rig({ count: 1 });
    dev.activate(r.config);
    assert.equal(dev.queueAt(1), undefined);
  });

  it("activate() refuses a queue index the device does not have, or one given twice", () => {
    const dev = new EchoDevice([16]);
    const r = rig({ count: 1 });
    const q = r.config.queues[0];
    const twice = new VirtioDeviceConfig({
      memory: r.mem,
      queues: [q, new VirtioQueueConfig(0, q.queue, q.notifier)],
      deviceChangeNotifier: r.configNotifier,
      ackedFeatures: 0n,
    });
    assertActivateError(() => dev.activate(twice), "InvalidQueueConfig");
    const extra = new VirtioDeviceConfig({
      memory: r.mem,
      queues: [q, new VirtioQueueConfig(1, q.queue, q.notifier)],
      deviceChangeNotifier: r.configNotifier,
      ackedFeatures: 0n,
    });
    assertActivateError(() => dev.activate(extra), "InvalidQueueConfig");
  });

  it("activate() refuses a queue larger than the device maximum", () => {
    const dev = new EchoDevice([8]);
    const r = rig({ count: 1 });
    assertActivateError(() => dev.activate(r.config), "InvalidQueueConfig");
  });

  it("activate() refuses rings outside guest memory, with the QueueError as cause", () => {
    const dev = new EchoDevice([16]);
    const r = rig({ count: 1 });
    r.queues[0].usedRing = 0x1000_0000;
    assert.throws(() => dev.activate(r.config), (e: unknown) => {
      assert.ok(e instanceof ActivateError);
      assert.equal(e.kind, "InvalidQueueConfig");
      assert.ok(e.cause instanceof QueueError);
      assert.equal(e.cause.code, "InvalidRing");
      return true;
    });
    assert.equal(dev.isActive, false);
  });

  it("an onActivate hook can refuse activation", () => {
    const dev = new EchoDevice();
    dev.refuse = true;
    assertActivateError(() => dev.activate(rig().config), "IOError");
    assert.equal(dev.isActive, false);
  });

  it("reset() deactivates, forgets features, runs onReset and leaves the device reusable", () => {
    const dev = new EchoDevice();
    dev.setAckedFeatures(1, 1);
    const r = rig();
    dev.activate(r.config);
    dev.reset();
    assert.equal(dev.isActive, false);
    assert.equal(dev.ackedFeatures(), 0n);
    assert.deepEqual(dev.resets, [r.config]);
    assert.equal(dev.queueAt(0), undefined);
    // Reusable: activate again and serve.
    const r2 = rig();
    dev.activate(r2.config);
    r2.drivers[0].addChain([{ readable: new Uint8Array([5, 6]) }, { writable: 2 }]);
    dev.processQueue(0);
    assert.deepEqual(r2.drivers[0].takeUsed()!.written, new Uint8Array([5, 6]));
  });

  it("features and config go through VirtioDeviceInfo; config is read-only by default", () => {
    const dev = new EchoDevice();
    assert.equal(dev.getAvailFeatures(1), 1);
    dev.setAckedFeatures(0, 0xffffffff);
    assert.equal(dev.ackedFeatures(), featureBit(VIRTIO_F_EVENT_IDX) | featureBit(3));
    const out = new Uint8Array(3);
    dev.readConfig(5, out);
    assert.deepEqual(out, new Uint8Array([6, 7, 8]));
    assert.throws(() => dev.writeConfig(0, new Uint8Array(1)), (e: unknown) => {
      assert.ok(e instanceof VirtioError);
      assert.equal(e.kind, "InvalidInput");
      return true;
    });
    assert.equal(dev.deviceType(), TYPE_CONSOLE);
    assert.deepEqual(dev.queueMaxSizes(), [16, 16]);
  });

  it("reportError() reaches the activation's onError only while active", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.report(new VirtioError("IOError", "before"));
    dev.activate(r.config);
    dev.report(new VirtioError("IOError", "during"));
    dev.reset();
    dev.report(new VirtioError("IOError", "after"));
    assert.deepEqual(r.errors.map((e) => e.message), ["IOError: during"]);
  });
});

describe("serveQueue()", () => {
  it("serves every available chain and notifies once", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    const d = r.drivers[0];
    for (let i = 0; i < 5; i++) d.addChain([{ readable: new Uint8Array([i]) }, { writable: 1 }]);
    dev.processQueue(0);
    const used = d.takeAllUsed();
    assert.deepEqual(used.map((u) => [u.len, u.written[0]]), [[1, 0], [1, 1], [1, 2], [1, 3], [
      1,
      4,
    ]]);
    assert.equal(r.notifier.count, 1);
    assert.equal(r.errors.length, 0);
  });

  it("with EVENT_IDX, notifies as soon as used_event is passed, before the rest is served", () => {
    const r = rig({ count: 1, eventIdx: true });
    const qc = r.config.queues[0];
    const d = r.drivers[0];
    // The driver wants to hear once the first buffer is used (used_event 0).
    d.setUsedEvent(0);
    for (let i = 0; i < 4; i++) d.addChain([{ writable: 1 }]);
    const seen: number[] = [];
    assert.equal(
      serveQueue(r.mem, qc, () => (seen.push(r.notifier.count), 1), () => {}).completed,
      4,
    );
    // Notified right after the first chain; not again (used_event was not moved).
    assert.deepEqual(seen, [0, 1, 1, 1]);
    assert.equal(r.notifier.count, 1);
    // The driver asks to hear once the used index passes 5: one more, mid-batch.
    d.setUsedEvent(5);
    for (let i = 0; i < 4; i++) d.addChain([{ writable: 1 }]);
    seen.length = 0;
    serveQueue(r.mem, qc, () => (seen.push(r.notifier.count), 1), () => {});
    assert.deepEqual(seen, [1, 1, 2, 2]);
    assert.equal(r.notifier.count, 2);
  });

  it("without EVENT_IDX, notifies once after the batch", () => {
    const r = rig({ count: 1 });
    const qc = r.config.queues[0];
    for (let i = 0; i < 3; i++) r.drivers[0].addChain([{ writable: 1 }]);
    const seen: number[] = [];
    serveQueue(r.mem, qc, () => (seen.push(r.notifier.count), 1), () => {});
    assert.deepEqual(seen, [0, 0, 0]);
    assert.equal(r.notifier.count, 1);
  });

  it("returns the number of chains completed and does not notify when there were none", () => {
    const r = rig({ count: 1 });
    const qc = r.config.queues[0];
    assert.deepEqual(serveQueue(r.mem, qc, () => 0, () => {}), { completed: 0, more: false });
    assert.equal(r.notifier.count, 0);
    r.drivers[0].addChain([{ writable: 4 }]);
    r.drivers[0].addChain([{ writable: 4 }]);
    assert.deepEqual(serveQueue(r.mem, qc, () => 4, () => {}), { completed: 2, more: false });
    assert.equal(r.notifier.count, 1);
  });

  it("returns a malformed chain with used length 0, reports it and keeps going", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    const d = r.drivers[0];
    const a = d.addChain([{ readable: new Uint8Array([1]) }, { writable: 1 }]);
    // A descriptor loop at index 15.
    d.writeDescriptor(15, { addr: 0x100000, len: 4, flags: 1, next: 15 });
    d.publish(15);
    const b = d.addChain([{ readable: new Uint8Array([2]) }, { writable: 1 }]);
    dev.processQueue(0);
    const used = d.takeAllUsed();
    assert.deepEqual(used.map((u) => [u.id, u.len]), [[a, 1], [15, 0], [b, 1]]);
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0].kind, "QueueError");
    assert.equal(r.errors[0].needsReset, false);
    assert.equal((r.errors[0].cause as QueueError).code, "ChainTooLong");
    assert.equal(r.notifier.count, 1);
  });

  it("completes a chain with length 0 when the handler throws", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    const d = r.drivers[0];
    // Readable 4 bytes, writable 2: the echo handler's writeExact throws ShortBuffer.
    const a = d.addChain([{ readable: new Uint8Array([1, 2, 3, 4]) }, { writable: 2 }]);
    const b = d.addChain([{ readable: new Uint8Array([9]) }, { writable: 1 }]);
    dev.processQueue(0);
    const used = d.takeAllUsed();
    assert.deepEqual(used.map((u) => [u.id, u.len]), [[a, 0], [b, 1]]);
    assert.equal(r.errors.length, 1);
    assert.equal((r.errors[0].cause as QueueError).code, "ShortBuffer");
    assert.equal(r.errors[0].needsReset, false);
  });

  it("leaves a chain the handler keeps for later out of the used ring", () => {
    const r = rig({ count: 1 });
    const qc = r.config.queues[0];
    const kept: number[] = [];
    r.drivers[0].addChain([{ writable: 1 }]);
    const n = serveQueue(r.mem, qc, (c) => {
      kept.push(c.head);
      return undefined;
    }, () => {}).completed;
    assert.equal(n, 0);
    assert.equal(r.drivers[0].pendingUsed(), 0);
    assert.equal(r.notifier.count, 0);
    qc.queue.addUsed(r.mem, kept[0], 0);
    assert.equal(r.drivers[0].takeUsed()!.id, kept[0]);
  });

  it("reports a fatal queue error with needsReset and stops", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    const d = r.drivers[0];
    d.addChain([{ readable: new Uint8Array([1]) }, { writable: 1 }]);
    d.publish(16); // a head outside the table
    d.addChain([{ readable: new Uint8Array([2]) }, { writable: 1 }]);
    dev.processQueue(0);
    assert.equal(d.takeAllUsed().length, 1);
    assert.equal(r.errors.length, 1, "reported once");
    assert.equal(r.errors[0].needsReset, true);
    assert.equal((r.errors[0].cause as QueueError).code, "HeadOutOfRange");
    // The queue stays broken: serving again reports again and completes nothing.
    dev.processQueue(0);
    assert.equal(r.errors.length, 2);
    assert.equal(r.errors[1].needsReset, true);
    assert.equal(d.pendingUsed(), 0);
  });

  it("reports an avail.idx jump with needsReset", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    r.drivers[0].setAvailIdx(100);
    dev.processQueue(0);
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0].needsReset, true);
    assert.equal((r.errors[0].cause as QueueError).code, "AvailIdxJump");
    assert.equal(r.notifier.count, 0);
  });

  it("does not notify when the driver set VIRTQ_AVAIL_F_NO_INTERRUPT", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    r.drivers[0].suppressInterrupts(true);
    r.drivers[0].addChain([{ writable: 0 }]);
    dev.processQueue(0);
    assert.equal(r.drivers[0].takeAllUsed().length, 1);
    assert.equal(r.notifier.count, 0);
  });

  it("leaves driver notifications enabled when it returns", () => {
    const dev = new EchoDevice();
    const r = rig();
    dev.activate(r.config);
    const d = r.drivers[0];
    d.addChain([{ writable: 0 }]);
    assert.equal(d.kickNeeded(), true);
    dev.processQueue(0);
    d.addChain([{ writable: 0 }]);
    assert.equal(d.kickNeeded(), true);
  });

  it("with EVENT_IDX, re-arms avail_event past the chains it served", () => {
    const dev = new EchoDevice();
    const acked = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX);
    const r = rig({ acked, eventIdx: true });
    dev.activate(r.config);
    const d = r.drivers[0];
    for (let i = 0; i < 3; i++) d.addChain([{ writable: 0 }]);
    dev.processQueue(0);
    assert.equal(r.mem.readU16(d.usedRing + 4 + 8 * d.size), 3);
    assert.equal(d.takeAllUsed().length, 3);
    assert.equal(r.notifier.count, 1);
    d.addChain([{ writable: 0 }]);
    assert.equal(d.kickNeeded(), true);
  });

  it("serves each queue independently", () => {
    const dev = new EchoDevice();
    const acked = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC);
    const r = rig({ acked });
    dev.activate(r.config);
    r.drivers[0].addChain([{ readable: new Uint8Array([1]) }, { writable: 1 }]);
    r.drivers[1].addChain([{ readable: new Uint8Array([2]) }, { writable: 1 }]);
    dev.processQueue(1);
    assert.equal(r.drivers[0].pendingUsed(), 0);
    assert.equal(r.drivers[1].takeUsed()!.written[0], 2);
    dev.processQueue(0);
    assert.equal(r.drivers[0].takeUsed()!.written[0], 1);
  });
});
