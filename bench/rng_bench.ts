/**
 * Entropy device throughput: batches of 4 KiB and 64 KiB requests served
 * through the MMIO transport. MB/s = iter/s × the "bytes/iter" figure in each
 * name (`bun bench/mitata.ts` prints it derived).
 *
 * @module
 */

import { rngCases } from "./_cases.ts";

for (const c of rngCases()) {
  Deno.bench({
    name: `${c.name}, ${c.bytes} bytes/iter`,
    group: "rng",
    fn: () => c.run(),
  });
}
