/**
 * Queue throughput, split and packed rings side by side: pop + addUsed of chains of 1, 3 and
 * 16 descriptors, 256 chains per iteration. Chains/s = iter/s × 256; descriptors/s = iter/s ×
 * the "desc/iter" figure in each name (`bun bench/mitata.ts queue` prints both derived, and
 * `deno run -A bench/queue_compare.ts` runs Deno and Bun in turn and prints medians).
 *
 * @module
 */

import { queueCases } from "./_cases.ts";

for (const c of queueCases()) {
  Deno.bench({
    name: `${c.name}, ${c.descriptors} desc/iter`,
    group: `${c.descriptors / c.batch}-descriptor chains`,
    fn: () => c.run(),
  });
}
