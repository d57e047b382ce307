// Resident bytes of a range of this process's memory, from /proc/self/pagemap (Linux; bit 63 of
// each page's entry says "present"): how the memory devices' tests see host memory given back
// (balloon, virtio-mem) without timing anything. smaps would do for a whole mapping, but the
// kernel merges adjacent anonymous mappings into one entry.
import { closeSync, openSync, readSync } from "node:fs";

const PAGE = 4096;

/** Resident bytes in [address, address + length), counted page by page. */
export function residentBytes(address: bigint, length: number): number {
  const first = Number(address / BigInt(PAGE));
  const pages = Math.ceil(length / PAGE);
  const fd = openSync("/proc/self/pagemap", "r");
  try {
    const chunk = new Uint8Array(8 * 4096);
    const view = new DataView(chunk.buffer);
    let present = 0;
    for (let done = 0; done < pages;) {
      const n = Math.min(4096, pages - done);
      const got = readSync(fd, chunk, 0, n * 8, (first + done) * 8);
      if (got !== n * 8) throw new Error(`short pagemap read: ${got}`);
      for (let i = 0; i < n; i++) {
        if ((view.getUint8(i * 8 + 7) & 0x80) !== 0) present++;
      }
      done += n;
    }
    return present * PAGE;
  } finally {
    closeSync(fd);
  }
}
