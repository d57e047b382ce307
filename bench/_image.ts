/**
 * The raw images the block benchmarks serve. Runtime-neutral (`node:fs` only).
 *
 * @module
 */

import { closeSync, openSync, writeSync } from "node:fs";

/**
 * Write a raw image of `mib` MiB of non-repeating data (every MiB different), which leaves it
 * in the page cache.
 * @param path The image to create or overwrite.
 * @param mib Its size in MiB.
 */
export function writeBenchImage(path: string, mib: number): void {
  const buf = new Uint8Array(1 << 20);
  const view = new DataView(buf.buffer);
  let x = 0x12345678;
  for (let i = 0; i < buf.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    view.setUint32(i, x >>> 0, true);
  }
  const fd = openSync(path, "w");
  try {
    for (let m = 0; m < mib; m++) {
      view.setUint32(0, m, true);
      writeSync(fd, buf, 0, buf.length, m * buf.length);
    }
  } finally {
    closeSync(fd);
  }
}
