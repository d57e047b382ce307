/**
 * The wire format of the memory balloon (virtio 1.2 §5.5) and pure parsers for it: the page
 * frame number arrays of the inflate and deflate queues and the statistics of the stats queue.
 * Guest bytes in, typed values out; no I/O.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Feature bits (virtio 1.2 §5.5.3)

/** Feature bit: the host must be told before pages from the balloon are used. */
export const VIRTIO_BALLOON_F_MUST_TELL_HOST = 0;
/** Feature bit: a stats queue is present. */
export const VIRTIO_BALLOON_F_STATS_VQ = 1;
/** Feature bit: the guest deflates the balloon when it runs out of memory. */
export const VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2;
/** Feature bit: free page hinting (for migration; not offered by this device). */
export const VIRTIO_BALLOON_F_FREE_PAGE_HINT = 3;
/** Feature bit: the guest writes `poison_val` into deflated pages (not offered). */
export const VIRTIO_BALLOON_F_PAGE_POISON = 4;
/** Feature bit: free page reporting, with a reporting queue. */
export const VIRTIO_BALLOON_F_PAGE_REPORTING = 5;

// ---------------------------------------------------------------------------
// Layouts

/** The balloon's page size: page frame numbers count 4 KiB pages whatever the guest's page size. */
export const BALLOON_PAGE_SIZE = 4096;
/** log2 of {@linkcode BALLOON_PAGE_SIZE} (`VIRTIO_BALLOON_PFN_SHIFT`). */
export const VIRTIO_BALLOON_PFN_SHIFT = 12;

/** Offsets in `struct virtio_balloon_config` (virtio 1.2 §5.5.4). */
export const BalloonConfigOffset = {
  /** le32: pages the device wants in the balloon (written by the device). */
  numPages: 0,
  /** le32: pages in the balloon (written by the driver). */
  actual: 4,
  /** le32: free page hint command id (FREE_PAGE_HINT only). */
  freePageHintCmdId: 8,
  /** le32: the value the driver fills freed pages with (PAGE_POISON only). */
  poisonVal: 12,
} as const;

/** Size of the configuration space exposed. */
export const BALLOON_CONFIG_SIZE = 16;

/** Size of one `struct virtio_balloon_stat`: le16 tag, le64 value, packed. */
export const BALLOON_STAT_SIZE = 10;

/** Statistics tags (virtio 1.2 §5.5.6.4). */
export const BalloonStatTag = {
  /** Bytes swapped in. */
  SWAP_IN: 0,
  /** Bytes swapped out. */
  SWAP_OUT: 1,
  /** Major page faults. */
  MAJFLT: 2,
  /** Minor page faults. */
  MINFLT: 3,
  /** Bytes not used for anything. */
  MEMFREE: 4,
  /** Total bytes of memory. */
  MEMTOT: 5,
  /** Estimated bytes available for new applications. */
  AVAIL: 6,
  /** Bytes of caches that can be reclaimed quickly. */
  CACHES: 7,
  /** Successful hugetlb page allocations. */
  HTLB_PGALLOC: 8,
  /** Failed hugetlb page allocations. */
  HTLB_PGFAIL: 9,
} as const;

/** The guest's memory statistics, as its driver last reported them; absent tags are absent. */
export interface BalloonStats {
  /** Bytes swapped in (`VIRTIO_BALLOON_S_SWAP_IN`). */
  swapIn?: number;
  /** Bytes swapped out. */
  swapOut?: number;
  /** Major page faults. */
  majorFaults?: number;
  /** Minor page faults. */
  minorFaults?: number;
  /** Free memory in bytes. */
  freeMemory?: number;
  /** Total memory in bytes (`MemTotal`). */
  totalMemory?: number;
  /** Memory available for new applications, in bytes (`MemAvailable`). */
  availableMemory?: number;
  /** Reclaimable caches, in bytes. */
  diskCaches?: number;
  /** Successful hugetlb page allocations. */
  hugetlbAllocations?: number;
  /** Failed hugetlb page allocations. */
  hugetlbFailures?: number;
}

const STAT_KEYS: readonly (keyof BalloonStats)[] = [
  "swapIn",
  "swapOut",
  "majorFaults",
  "minorFaults",
  "freeMemory",
  "totalMemory",
  "availableMemory",
  "diskCaches",
  "hugetlbAllocations",
  "hugetlbFailures",
];

/** Most statistics entries read from one buffer; the rest is ignored (Linux sends 10). */
export const BALLOON_MAX_STATS = 64;

/** What {@linkcode parseBalloonStats} found. */
export interface ParsedBalloonStats {
  /** The recognised statistics. */
  stats: BalloonStats;
  /** Entries ignored: unknown tags, entries past {@linkcode BALLOON_MAX_STATS}. */
  ignored: number;
  /** Bytes left over after the last whole entry. */
  trailing: number;
}

/**
 * Parse a stats buffer: an array of 10-byte `{le16 tag, le64 val}` entries in any order
 * (virtio 1.2 §5.5.6.3). Unknown tags are ignored, as the spec requires; a later entry with a
 * tag seen before wins. Values above 2^53 lose precision (they are not memory sizes).
 * @param bytes The device-readable bytes of the buffer.
 * @returns The statistics and what was ignored.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeBalloonStats, parseBalloonStats } from "./_balloon_wire.ts";
 * const parsed = parseBalloonStats(encodeBalloonStats([[5, 1n << 30n], [77, 1n]]));
 * assert.equal(parsed.stats.totalMemory, 1 << 30);
 * assert.equal(parsed.ignored, 1);
 * ```
 */
export function parseBalloonStats(bytes: Uint8Array): ParsedBalloonStats {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const whole = Math.floor(bytes.byteLength / BALLOON_STAT_SIZE);
  const n = Math.min(whole, BALLOON_MAX_STATS);
  const stats: BalloonStats = {};
  let ignored = whole - n;
  for (let i = 0; i < n; i++) {
    const at = i * BALLOON_STAT_SIZE;
    const tag = view.getUint16(at, true);
    const key = STAT_KEYS[tag];
    if (key === undefined) {
      ignored++;
      continue;
    }
    stats[key] = Number(view.getBigUint64(at + 2, true));
  }
  return { stats, ignored, trailing: bytes.byteLength - whole * BALLOON_STAT_SIZE };
}

/**
 * Encode a stats buffer as a driver does (for tests and harnesses).
 * @param entries `[tag, value]` pairs, in buffer order.
 * @returns The bytes.
 */
export function encodeBalloonStats(entries: readonly (readonly [number, bigint])[]): Uint8Array {
  const out = new Uint8Array(entries.length * BALLOON_STAT_SIZE);
  const view = new DataView(out.buffer);
  entries.forEach(([tag, value], i) => {
    view.setUint16(i * BALLOON_STAT_SIZE, tag, true);
    view.setBigUint64(i * BALLOON_STAT_SIZE + 2, BigInt.asUintN(64, value), true);
  });
  return out;
}

/**
 * Encode an inflate or deflate buffer as a driver does: le32 page frame numbers (guest address
 * divided by 4096, virtio 1.2 §5.5.6).
 * @param pfns The page frame numbers (each truncated to 32 bits).
 * @returns The bytes.
 */
export function encodeBalloonPfns(pfns: readonly number[]): Uint8Array {
  const out = new Uint8Array(pfns.length * 4);
  const view = new DataView(out.buffer);
  pfns.forEach((pfn, i) => view.setUint32(i * 4, pfn >>> 0, true));
  return out;
}
