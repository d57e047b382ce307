/**
 * Split-queue throughput: pop + addUsed of pre-built chains of 1, 3 and 16
 * descriptors, 256 chains per iteration. Descriptors/s = iter/s × the
 * "desc/iter" figure in each name (`bun bench/mitata.ts` prints it derived).
 *
 * @module
 */

import { queueCases } from "./_cases.ts";

for (const c of queueCases()) {
  Deno.bench({
    name: `${c.name}, ${c.descriptors} desc/iter`,
    group: "split queue",
    fn: () => c.run(),
  });
}
