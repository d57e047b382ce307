// The checks a SET_MEM_TABLE passes before anything is mapped: the table itself (pure, tested
// by tables of cases), then each region's file against fstat and its seals.
//
// Why: a mapping past the end of its file is accepted by mmap(2) and raises SIGBUS on first
// touch, which kills the whole process (every device, every connection). So every byte of every
// region must be backed by its file when the table is accepted, and stay backed: a file sealed
// against shrinking (F_SEAL_SHRINK) does; any other file can be truncated by the frontend later.

import { F_SEAL_SHRINK, fdKind, fstat, getSeals } from "../sys/mod.ts";
import { MAX_MEM_REGIONS, type MemoryRegionDesc, VhostUserError } from "./protocol.ts";

const U64_END = 1n << 64n;

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

/**
 * A short name for region `i` in messages: its index and guest range.
 * @param i The region's index in the table.
 * @param r The region.
 * @returns E.g. `memory region 1 (guest 0x100000+0x100000)`.
 */
export function regionName(i: number, r: MemoryRegionDesc): string {
  return `memory region ${i} (guest ${hex(r.guestAddr)}+${hex(r.size)})`;
}

/**
 * Check a memory table on its own: the number of regions, each region's arithmetic, and that no
 * two regions overlap in guest-physical space or in the frontend's address space (vring
 * addresses are translated through the latter, so an overlap would make a translation
 * ambiguous).
 * @param regions The decoded regions.
 * @param request The request code, for the error.
 * @throws {VhostUserError} `InvalidValue` naming the region(s) at fault.
 */
export function checkMemTable(regions: readonly MemoryRegionDesc[], request: number): void {
  if (regions.length === 0 || regions.length > MAX_MEM_REGIONS) {
    throw new VhostUserError(
      "InvalidValue",
      `${regions.length} memory regions (1 to ${MAX_MEM_REGIONS})`,
      request,
    );
  }
  regions.forEach((r, i) => {
    const name = regionName(i, r);
    if (!Number.isSafeInteger(r.size) || r.size <= 0) {
      throw new VhostUserError("InvalidValue", `${name} has size ${r.size}`, request);
    }
    if (!Number.isSafeInteger(r.guestAddr) || !Number.isSafeInteger(r.guestAddr + r.size)) {
      throw new VhostUserError("InvalidValue", `${name} ends past 2^53`, request);
    }
    if (!Number.isSafeInteger(r.mmapOffset) || !Number.isSafeInteger(r.mmapOffset + r.size)) {
      throw new VhostUserError(
        "InvalidValue",
        `${name}: mmap offset ${hex(r.mmapOffset)} + size overflows`,
        request,
      );
    }
    if (r.userAddr < 0n || r.userAddr + BigInt(r.size) > U64_END) {
      throw new VhostUserError(
        "InvalidValue",
        `${name}: frontend address ${hex(r.userAddr)} + size overflows 64 bits`,
        request,
      );
    }
  });
  for (let i = 0; i < regions.length; i++) {
    for (let j = i + 1; j < regions.length; j++) {
      const a = regions[i], b = regions[j];
      if (a.guestAddr < b.guestAddr + b.size && b.guestAddr < a.guestAddr + a.size) {
        throw new VhostUserError(
          "InvalidValue",
          `memory regions ${i} and ${j} overlap in guest-physical space`,
          request,
        );
      }
      const aEnd = a.userAddr + BigInt(a.size), bEnd = b.userAddr + BigInt(b.size);
      if (a.userAddr < bEnd && b.userAddr < aEnd) {
        throw new VhostUserError(
          "InvalidValue",
          `memory regions ${i} and ${j} overlap in the frontend's address space`,
          request,
        );
      }
    }
  }
}

/** What {@link checkRegionFile} found out about a region's file. */
export interface RegionFile {
  /** Sealed against shrinking: the mapping can never lose its backing. */
  sealed: boolean;
  /** The file's size when checked. */
  size: number;
}

/**
 * Check that every byte of region `i` is backed by its file, so that mapping it cannot raise
 * SIGBUS, and read whether the file is sealed against shrinking.
 *
 * Only regular files are accepted (memfds, files on tmpfs such as /dev/shm, on hugetlbfs or on
 * disk): their size is `st_size`. Anything else is refused because its extent cannot be
 * checked (a block device can be resized under the mapping, a character device such as
 * /dev/dax has no size to read) or it cannot be shared memory at all (sockets, pipes,
 * eventfds).
 *
 * The seals are read before the size: once F_SEAL_SHRINK is in force the size can only grow, so
 * the size read afterwards is a lower bound for good. (Read the other way round, a frontend
 * could shrink the file in between and seal it afterwards.)
 *
 * @param fd The region's descriptor.
 * @param r The region.
 * @param i Its index, for messages.
 * @param options `requireSealed` refuses a file without F_SEAL_SHRINK; `request` for errors.
 * @returns Whether the file is sealed, and its size.
 * @throws {VhostUserError} `InvalidValue` naming the region and what is wrong.
 */
export function checkRegionFile(
  fd: number,
  r: MemoryRegionDesc,
  i: number,
  options: { requireSealed: boolean; request: number },
): RegionFile {
  const { request } = options;
  const name = regionName(i, r);
  let seals: number, size: number, regular: boolean;
  try {
    seals = getSeals(fd);
    const st = fstat(fd);
    regular = st.type === "regular";
    size = st.size;
  } catch (err) {
    throw new VhostUserError("InvalidValue", `${name}: ${(err as Error).message}`, request, {
      cause: err,
    });
  }
  if (!regular) {
    throw new VhostUserError(
      "InvalidValue",
      `${name}: the fd is a ${fdKind(fd)}, not a regular file or memfd; its extent cannot be ` +
        "checked, so mapping it could raise SIGBUS",
      request,
    );
  }
  const end = r.mmapOffset + r.size;
  if (end > size) {
    throw new VhostUserError(
      "InvalidValue",
      `${name}: mmap offset ${hex(r.mmapOffset)} + size ${hex(r.size)} = ${hex(end)} is past ` +
        `the end of its file (${hex(size)} bytes); touching it would raise SIGBUS`,
      request,
    );
  }
  const sealed = (seals & F_SEAL_SHRINK) !== 0;
  if (!sealed && options.requireSealed) {
    throw new VhostUserError(
      "InvalidValue",
      `${name}: the file is not sealed against shrinking (F_SEAL_SHRINK) and sealed memory ` +
        "is required",
      request,
    );
  }
  return { sealed, size };
}

/**
 * Reported once per backend (through `onError`) when a frontend's guest memory is not sealed
 * against shrinking: the table was accepted and is served, but a frontend that truncates the
 * file afterwards makes the next access to the lost pages raise SIGBUS, which kills the
 * backend process. QEMU's `memory-backend-memfd` seals by default; `memory-backend-file` and
 * other VMMs may not. Set `requireSealedMemory` (CLI: `--require-sealed-memory`) to refuse
 * such memory instead.
 */
export class UnsealedMemoryWarning extends Error {
  /** Index of the first unsealed region of the table. */
  readonly region: number;

  /**
   * Create the warning.
   * @param region Index of the first unsealed region.
   * @param name That region's description.
   */
  constructor(region: number, name: string) {
    super(
      `warning: ${name} is not sealed against shrinking (F_SEAL_SHRINK): if the frontend ` +
        "truncates it, the next access to the lost pages raises SIGBUS and kills this process; " +
        "requireSealedMemory (--require-sealed-memory) refuses such memory (reported once)",
    );
    this.name = "UnsealedMemoryWarning";
    this.region = region;
  }
}
