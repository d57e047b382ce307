/**
 * Block device in process: the request parser on real chains, and the whole device path
 * (driver harness → BlockDevice → FileBackend on a page-cache-resident image) for 4 KiB,
 * 64 KiB and 1 MiB reads and writes. Requests/s = iter/s × "req/iter", MB/s = iter/s ×
 * "bytes/iter" (`bun bench/mitata.ts` or `deno run -A bench/mitata.ts` prints them derived).
 *
 * Run: `node_modules/.bin/deno bench --allow-all bench/block_bench.ts`
 *
 * @module
 */

import { blockCases } from "./_cases.ts";

for (const c of blockCases()) {
  Deno.bench({
    name: `${c.name}, ${c.batch} req/iter${c.bytes > 0 ? `, ${c.bytes} bytes/iter` : ""}`,
    group: c.name.includes("parse") ? "block parse" : "block device",
    fn: () => c.run(),
  });
}
