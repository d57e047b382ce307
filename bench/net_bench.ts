/**
 * virtio-net in process: transmit and receive through the device for 64 B, 1500 B and 64 KiB
 * TSO frames (see `_net_cases.ts`). Frames/s = iter/s × batch, Gbit/s from "bytes/iter"
 * (`bun bench/mitata.ts` or `deno run -A bench/mitata.ts` prints them derived).
 *
 * Run: `node_modules/.bin/deno bench --allow-all bench/net_bench.ts`
 *
 * @module
 */

import { netCases } from "./_net_cases.ts";

for (const c of netCases()) {
  Deno.bench({
    name: `${c.name}, ${c.bytes} bytes/iter`,
    group: c.name.startsWith("net TX") ? "net transmit" : "net receive",
    fn: () => c.run(),
  });
}
