// A short fixed-seed slice of every fuzz target (fuzz/targets.ts): the same generators and
// oracle as `npm run fuzz`, for seconds rather than minutes. Any failure names the iteration;
// `npm run fuzz -- --targets T --seed S --from F --iterations N` runs it again.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { TARGETS } from "../../fuzz/targets.ts";

const SEED = 20261202;
const SLICE: Record<string, number> = {
  rng: 1024,
  block: 1024,
  net: 768,
  vsock: 768,
  fs: 512,
  mmio: 2048,
  "vhost-user": 24,
};

describe("fuzz slice", () => {
  for (const target of TARGETS) {
    it(`${target.name}: ${SLICE[target.name] ?? 256} iterations of seed ${SEED}`, async () => {
      const stats = await target.run(SEED, 0, SLICE[target.name] ?? 256);
      assert.equal(stats.iterations, SLICE[target.name] ?? 256);
      assert.deepEqual(
        stats.failures.map((f) => `iteration ${f.iteration}: ${f.message}`),
        [],
      );
    });
  }
});
