// The conformance suite must fail devices that break its rules: each broken device here breaks
// one rule, and the suite has to say so (a check that cannot fail proves nothing).

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import { runConformance } from "../../testing/conformance.ts";
import {
  featureBit,
  serveQueue,
  TYPE_RNG,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  VirtioDeviceInfo,
  VirtioError,
} from "../../devices/device.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { QueueError } from "../../queue/error.ts";
import { VIRTIO_F_INDIRECT_DESC } from "../../queue/split.ts";

/** A device with one queue whose pass is `serve`. */
class TestDevice extends VirtioDeviceBase {
  readonly #serve: (dev: TestDevice) => void;
  constructor(serve: (dev: TestDevice) => void) {
    super(
      TYPE_RNG,
      new VirtioDeviceInfo(
        "test",
        featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC),
        [256],
        new Uint8Array(0),
      ),
    );
    this.#serve = serve;
  }
  get config() {
    return this.active!;
  }
  q() {
    return this.queue(0)!;
  }
  report(err: VirtioError): void {
    this.reportError(err);
  }
  processQueue(): boolean {
    if (this.active === undefined) return false;
    this.#serve(this);
    return false;
  }
}

const writeAll = (c: DescriptorChain) => {
  c.writer.fill(c.writer.remaining, 1);
  return c.writableBytes;
};

/** A correct pass: the shared loop, filling every writable byte. */
function good(dev: TestDevice): void {
  serveQueue(dev.config.memory, dev.q(), writeAll, (e) => dev.report(e));
}

const valid = { validRequest: () => ({ queue: 0, buffers: [{ writable: 16 }] }) };

async function failures(serve: (dev: TestDevice) => void, only: string): Promise<string[]> {
  const report = await runConformance(() => new TestDevice(serve), valid, { only: [only] });
  assert.ok(report.cases.length > 0, `no case matches ${only}`);
  return report.failures.map((f) => `${f.case}: ${f.message}`);
}

describe("conformance suite against broken devices", () => {
  it("passes a correct device", async () => {
    const report = await runConformance(() => new TestDevice(good), valid, {
      only: ["descriptor loop", "refills", "head index out of range", "mmio: queue size 0"],
    });
    assert.deepEqual(report.failures, []);
  });

  it("fails a device that serves a busy ring without a budget", async () => {
    const f = await failures((dev) => {
      const { memory } = dev.config;
      const q = dev.q().queue;
      let c: DescriptorChain | null;
      while ((c = q.pop(memory)) !== null) q.addUsed(memory, c.head, writeAll(c));
    }, "split: driver refills");
    assert.ok(f.some((m) => m.includes("budget")), f.join("\n"));
  });

  it("fails a device that writes past a buffer", async () => {
    const f = await failures((dev) => {
      serveQueue(dev.config.memory, dev.q(), (c) => {
        const last = c.addrs.length - 1;
        c.memory.writeU8(c.addrs[last] + c.lens[last], 0xee);
        return writeAll(c);
      }, (e) => dev.report(e));
    }, "split: indices wrap");
    assert.ok(f.some((m) => m.includes("outside")), f.join("\n"));
  });

  it("fails a device that returns a refused chain with a used length", async () => {
    const f = await failures((dev) => {
      const { memory } = dev.config;
      const q = dev.q().queue;
      for (;;) {
        try {
          const c = q.pop(memory);
          if (c === null) break;
          q.addUsed(memory, c.head, writeAll(c));
        } catch (err) {
          if (err instanceof QueueError && err.head !== undefined) q.addUsed(memory, err.head, 1);
          else break;
        }
      }
    }, "split: descriptor loop");
    assert.ok(f.some((m) => m.includes("used length 1")), f.join("\n"));
  });

  it("fails a device that takes a chain and never gives it back", async () => {
    const f = await failures((dev) => {
      dev.q().queue.pop(dev.config.memory); // taken, then forgotten
      good(dev);
    }, "split: zero-length");
    assert.ok(f.some((m) => m.includes("never came back")), f.join("\n"));
  });

  it("fails a device that ignores a broken ring", async () => {
    const f = await failures((dev) => {
      try {
        good(dev);
      } catch { /* never */ }
    }, "split: head index out of range");
    assert.deepEqual(f, [], "the shared loop reports a broken ring");
    const g = await failures((dev) => {
      const { memory } = dev.config;
      try {
        dev.q().queue.pop(memory);
      } catch { /* swallowed: no NEEDS_RESET */ }
    }, "split: head index out of range");
    assert.ok(g.some((m) => m.includes("NEEDS_RESET")), g.join("\n"));
  });

  // Bun's test runner takes an uncaught error itself (the running test fails with it) before
  // process listeners hear of it; Deno's delivers it to them, and the suite reports it.
  const bun = "Bun" in globalThis;
  it("fails a device that throws later, from a callback", { skip: bun }, async () => {
    const f = await failures((dev) => {
      good(dev);
      setImmediate(() => {
        throw new VirtioError("InternalError", "thrown from a callback");
      });
    }, "split: zero-length");
    assert.ok(
      f.some((m) => m.includes("uncaught") && m.includes("thrown from a callback")),
      f.join("\n"),
    );
  });
});
