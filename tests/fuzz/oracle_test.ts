// The fuzzer's oracle must catch a device that breaks the rules: a device that writes past its
// buffers, and one that claims more bytes than its buffers hold, are found within 50 iterations
// (a pass without a budget is the conformance suite's test: tests/conformance/suite_test.ts).

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  featureBit,
  serveQueue,
  TYPE_RNG,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  VirtioDeviceInfo,
} from "../../devices/device.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { DeviceRig, type DeviceSpec } from "../../fuzz/_device_rig.ts";
import { Prng } from "../../fuzz/prng.ts";

type Handler = (c: DescriptorChain) => number;

class Broken extends VirtioDeviceBase {
  readonly #handle: Handler;
  constructor(handle: Handler) {
    super(
      TYPE_RNG,
      new VirtioDeviceInfo("broken", featureBit(VIRTIO_F_VERSION_1), [16], new Uint8Array(0)),
    );
    this.#handle = handle;
  }
  processQueue(index: number): boolean {
    const config = this.active;
    const qc = this.queue(index);
    if (config === undefined || qc === undefined) return false;
    return serveQueue(config.memory, qc, this.#handle, (e) => this.reportError(e)).more;
  }
}

function spec(make: () => Broken): DeviceSpec {
  return {
    name: "broken",
    create: make,
    request: (r) => ({ queue: 0, buffers: [{ writable: 1 + r.int(64) }] }),
  };
}

async function run(s: DeviceSpec, iterations: number): Promise<string[]> {
  const rig = new DeviceRig(s, new Prng(7, 0));
  rig.init(new Prng(7, 1));
  for (let i = 0; i < iterations; i++) {
    const r = new Prng(7, 100 + i);
    rig.iteration = i;
    rig.check();
    if (rig.needsReset() || rig.desynced) rig.init(r);
    rig.reap();
    for (let k = 0; k < 4; k++) rig.addRequest(r, s.request(r, rig), 0);
    rig.arm();
    rig.kick(0);
    await new Promise((res) => setTimeout(res, 0));
  }
  rig.check();
  rig.close();
  return rig.failures.map((f) => f.message);
}

describe("fuzz oracle", () => {
  it("finds writes past a buffer", async () => {
    const f = await run(
      spec(() =>
        new Broken((c) => {
          const last = c.addrs.length - 1;
          if (last >= 0) c.memory.writeU8(c.addrs[last] + c.lens[last] + 3, 0xee);
          return 0;
        })
      ),
      50,
    );
    assert.ok(f.some((m) => m.includes("outside")), f.join("\n"));
  });

  it("finds used lengths larger than the buffers", async () => {
    const f = await run(spec(() => new Broken((c) => c.writableBytes + 1)), 50);
    assert.ok(f.some((m) => m.includes("used length")), f.join("\n"));
  });

  it("passes a device that does it right", async () => {
    const f = await run(spec(() => new Broken((c) => c.writableBytes)), 50);
    assert.deepEqual(f, []);
  });
});
