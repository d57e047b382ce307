/**
 * What the boot benchmark reads off a guest and a VMM process: the `/init` start marker in the
 * serial console (whose lines end in `\r\n`), the guest's uptime printed with it, and a process's
 * resident memory apart from its guest RAM (from `/proc/<pid>/smaps`). Pure functions.
 *
 * @module
 */

/** The first line the test guest's `/init` prints: `VT-BEGIN kernel=… uptime=…`, then CR LF. */
export const INIT_LINE: RegExp = /VT-BEGIN [^\r\n]*\r?\n/;

/**
 * Whether the console shows that `/init` has started (its first line is complete).
 *
 * @param console The serial console so far, as the guest sent it (CR LF line ends).
 * @returns True once the `VT-BEGIN` line has been received whole.
 */
export function initReached(console: string): boolean {
  return INIT_LINE.test(console);
}

/**
 * The guest's uptime when `/init` started, from its `VT-BEGIN … uptime=<s>` line.
 *
 * @param console The serial console.
 * @returns Milliseconds, or NaN without the line.
 */
export function guestUptimeAtInitMs(console: string): number {
  const m = /VT-BEGIN [^\r\n]*uptime=([\d.]+)/.exec(console);
  return m ? Math.round(Number(m[1]) * 1000) : NaN;
}

/** Resident memory of a process, with its guest RAM apart. */
export interface MemoryFootprint {
  /** Resident KiB of every mapping. */
  rssKiB: number;
  /** Resident KiB of the guest RAM mapping(s). */
  guestKiB: number;
  /** `rssKiB - guestKiB`: what the VMM itself uses. */
  overheadKiB: number;
}

/**
 * Splits a process's resident memory into guest RAM and the rest, from `/proc/<pid>/smaps`.
 * Guest RAM is the anonymous or memfd mapping(s) between `guestRamBytes` and `guestRamBytes`
 * + 4 MiB long (VMMs may pad it for alignment); nothing else in a VMM is that size.
 *
 * @param smaps The text of `/proc/<pid>/smaps`.
 * @param guestRamBytes The guest's RAM size.
 * @returns The footprint.
 */
export function memoryFootprint(smaps: string, guestRamBytes: number): MemoryFootprint {
  let rssKiB = 0;
  let guestKiB = 0;
  let inGuest = false;
  for (const line of smaps.split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (range) {
      const size = parseInt(range[2], 16) - parseInt(range[1], 16);
      const path = range[3];
      const anonymous = path === "" || path.startsWith("/memfd:") || path === "[heap]";
      inGuest = anonymous && size >= guestRamBytes && size <= guestRamBytes + (4 << 20);
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) {
      rssKiB += Number(rss[1]);
      if (inGuest) guestKiB += Number(rss[1]);
    }
  }
  return { rssKiB, guestKiB, overheadKiB: rssKiB - guestKiB };
}
