// Every input the fuzzer ever failed on (fuzz/corpus/*.json: target, seed, and the iterations
// from the start of the failing episode to the failure) is replayed here and must pass.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { TARGETS } from "../../fuzz/targets.ts";

interface Crasher {
  target: string;
  seed: number;
  from: number;
  to: number;
  message: string;
}

const dir = join(import.meta.dirname!, "..", "..", "fuzz", "corpus");
const files = readdirSync(dir).filter((f) => f.endsWith(".json")).sort();

describe("fuzz corpus", () => {
  it("holds crashers", () => {
    assert.ok(files.length > 0, `no crasher in ${dir}`);
  });
  for (const file of files) {
    const c = JSON.parse(readFileSync(join(dir, file), "utf8")) as Crasher;
    it(`${file}: ${c.message.slice(0, 100)}`, async () => {
      const target = TARGETS.find((t) => t.name === c.target);
      assert.ok(target !== undefined, `unknown target ${c.target}`);
      const stats = await target.run(c.seed, c.from, c.to);
      assert.equal(stats.iterations, c.to - c.from);
      assert.deepEqual(stats.failures.map((f) => `iteration ${f.iteration}: ${f.message}`), []);
    });
  }
});
