// End to end on KVM: the devices that shape guest memory — virtio-balloon, virtio-mem and
// virtio-pmem — on OUR VMM (kvm/vmm.ts) with Debian's stock cloud kernel and the busybox
// initramfs of the test guest (launcher/guest/build.sh), found through ACPI like every device.
// The guest prints markers; the host answers each by changing a target and measuring what the
// VMM process holds of guest memory (resident pages from /proc/self/pagemap), so every check is
// on both sides:
//
// Boot 1, over virtio-mmio (balloon without free page reporting or DEFLATE_ON_OOM, virtio-mem,
// pmem):
//   - balloon: the host sets a 128 MiB target, MemTotal falls by as much and the RAM the VMM
//     holds falls by about that much; target 0, MemTotal comes back and the memory is usable;
//     statistics arrive on the interval.
//   - virtio-mem: requested size 128 MiB, new memory blocks come online above 4 GiB and
//     MemTotal grows; the guest uses them (resident in the device's mapping); requested size 0,
//     MemTotal shrinks and the device's mapping is no longer resident.
//   - pmem: /dev/pmem0, mkfs.ext2 + mount -o dax, a file written, synced (FLUSH), power off:
//     the host file holds the data.
// Boot 2, over virtio-pci (balloon with free page reporting and DEFLATE_ON_OOM, the same pmem
// file; device memory then lies after the 64-bit PCI window):
//   - pmem: the file from boot 1 is there.
//   - free page reporting: memory the guest frees is released without a target.
//   - DEFLATE_ON_OOM: with most memory in the balloon, the guest allocates more than it has,
//     takes pages back from the balloon, and the host sees the deflate requests.
// Needs /dev/kvm (scripts/test.sh runs tests/kvm/ inside a nested-KVM guest where the host has
// none). Runs under Deno and Bun.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { kvmUnavailableReason, mappedAddressOf } from "../../sys/mod.ts";
import { MicroVm, type RunResult } from "../../kvm/mod.ts";
import { BalloonDevice } from "../../devices/balloon.ts";
import { MemDevice } from "../../devices/mem.ts";
import { PmemDevice } from "../../devices/pmem.ts";
import type { VirtioDevice } from "../../devices/device.ts";
import { ensureGuest, scriptCpio } from "../../launcher/qemu.ts";
import { concatBytes } from "../../testing/mod.ts";
import { residentBytes } from "../devices/_rss.ts";

const MiB = 1 << 20;
const RAM = 512 * MiB;
const BALLOON_TARGET = 128 * MiB;
const MEM_REGION = 256 * MiB;
const MEM_REQUEST = 128 * MiB;
const PMEM_SIZE = 64 * MiB;
const OOM_TARGET = 384 * MiB;
const MARKER = `pmem-data-${Date.now().toString(36)}`;
const CMDLINE = "console=ttyS0 panic=-1 quiet memhp_default_state=online_movable";

const skip = kvmUnavailableReason() === undefined ? false : `skipped: ${kvmUnavailableReason()}`;

// Shell helpers for both boots (busybox ash).
const HELPERS = `
memtotal() { awk '/^MemTotal:/ {print $2}' /proc/meminfo; }
memavail() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
vmstat() { awk -v k="$1" '$1 == k {print $2}' /proc/vmstat; }
# wait_until TENTHS CONDITION: poll a shell condition.
wait_until() {
  n="$1"; shift
  while ! eval "$*"; do
    n=$((n - 1)); [ "$n" -gt 0 ] || fail "timeout waiting for: $*"; sleep 0.1
  done
}
# touch_memory LEAVE_MIB: allocate (and so make resident on the host) all available memory but
# LEAVE_MIB, then free it.
touch_memory() {
  m=$(( $(memavail) / 1024 - $1 ))
  dd if=/dev/zero of=/tmp/fill bs=1M count=$m 2>/dev/null || true
  rm -f /tmp/fill
}
mount -o remount,size=95% /tmp
mkdir -p /mnt
step devices
wait_for /sys/bus/virtio/devices/virtio1 100
ids="$(cat /sys/bus/virtio/devices/*/device | tr '\\n' ' ')"
echo "VT-DEVICE-IDS: $ids"
`;

function boot1Script(): string {
  return HELPERS + `
case "$ids" in *0x0005*) ;; *) fail "no virtio-balloon among: $ids" ;; esac
case "$ids" in *0x0018*) ;; *) fail "no virtio-mem among: $ids" ;; esac
case "$ids" in *0x001b*) ;; *) fail "no virtio-pmem among: $ids" ;; esac

step balloon-inflate
touch_memory 48
t0=$(memtotal)
echo "VT-BALLOON-READY memtotal=$t0"
wait_until 3000 '[ $(memtotal) -le $((t0 - ${BALLOON_TARGET / 1024})) ]'
echo "VT-BALLOON-INFLATED memtotal=$(memtotal) balloon_inflate=$(vmstat balloon_inflate)"
step balloon-deflate
wait_until 3000 '[ $(memtotal) -ge $t0 ]'
touch_memory 48
echo "VT-BALLOON-DEFLATED memtotal=$(memtotal) balloon_deflate=$(vmstat balloon_deflate)"

step mem-plug
bs=$(( 0x$(cat /sys/devices/system/memory/block_size_bytes) ))
first=$(( 0x100000000 / bs ))
hot() {
  for d in /sys/devices/system/memory/memory*; do
    i=\${d##*memory}; [ "$i" -ge "$first" ] && [ "$(cat $d/online 2>/dev/null)" = 1 ] && printf '%s ' "$i"
  done
  return 0
}
m0=$(memtotal)
echo "VT-MEM-READY memtotal=$m0 block_size=$bs online_above_4g=[$(hot)]"
wait_until 3000 '[ $(memtotal) -ge $((m0 + ${MEM_REQUEST / 1024} - 1024)) ]'
blocks="$(hot)"
[ -n "$blocks" ] || fail "no memory block online above 4 GiB"
echo "VT-MEM-PLUGGED memtotal=$(memtotal) blocks=[$blocks] zones=[$(cat /sys/devices/system/memory/memory$first/valid_zones)]"
dd if=/dev/zero of=/tmp/fill bs=1M count=$(( $(memavail) / 1024 - 48 )) 2>/dev/null || true
echo "VT-MEM-TOUCHED avail=$(memavail)"
rm -f /tmp/fill
step mem-unplug
wait_until 3000 '[ $(memtotal) -le $((m0 + 1024)) ]'
echo "VT-MEM-UNPLUGGED memtotal=$(memtotal) online_above_4g=[$(hot)]"

step pmem
wait_for /dev/pmem0 100
echo "VT-PMEM-SIZE $(cat /sys/block/pmem0/size)"
mkfs.ext2 -b 4096 /dev/pmem0 >/dev/null
if mount -t ext2 -o dax /dev/pmem0 /mnt 2>/tmp/dax.err; then dax=1; else
  echo "VT-PMEM-NODAX $(cat /tmp/dax.err)"; mount -t ext2 /dev/pmem0 /mnt; dax=0
fi
echo "VT-PMEM-MOUNT dax=$dax $(grep pmem0 /proc/mounts)"
echo "${MARKER}" > /mnt/hello
sync
umount /mnt
echo "VT-PMEM-WRITTEN uptime=$(cut -d' ' -f1 /proc/uptime)"
`;
}

function boot2Script(): string {
  return HELPERS + `
case "$ids" in *0x0005*) ;; *) fail "no virtio-balloon among: $ids" ;; esac
case "$ids" in *0x001b*) ;; *) fail "no virtio-pmem among: $ids" ;; esac

step pmem-read
wait_for /dev/pmem0 100
mount -t ext2 -o dax /dev/pmem0 /mnt 2>/dev/null || mount -t ext2 /dev/pmem0 /mnt
expect_eq "$(cat /mnt/hello)" "${MARKER}" "the file written by the first boot"
echo "VT-PMEM-READ ok uptime=$(cut -d' ' -f1 /proc/uptime)"
umount /mnt

step free-page-reporting
m=$(( $(memavail) / 1024 - 48 ))
dd if=/dev/zero of=/tmp/fill bs=1M count=$m 2>/dev/null || true
echo "VT-REPORT-FILLED mib=$m"
rm -f /tmp/fill
echo "VT-REPORT-FREED"

step deflate-on-oom
wait_until 3000 '[ "$(vmstat balloon_inflate)" -ge ${Math.floor((OOM_TARGET / 4096) * 0.9)} ]'
a=$(( $(memavail) / 1024 ))
echo "VT-OOM-INFLATED avail_mib=$a memtotal=$(memtotal)"
dd if=/dev/zero of=/tmp/oom bs=1M count=$((a + 64)) 2>/dev/null || fail "dd failed"
echo "VT-OOM-DONE balloon_deflate=$(vmstat balloon_deflate)"
[ "$(vmstat balloon_deflate)" -gt 0 ] || fail "the balloon did not deflate"
rm -f /tmp/oom
`;
}

/**
 * Calls each handler once, the first time a console line contains its marker; a handler that
 * throws stops the VM and fails the test.
 */
class Director {
  text = "";
  failure: unknown;
  #pending = "";
  readonly #done = new Set<string>();
  constructor(
    readonly handlers: Record<string, (line: string) => void>,
    readonly onFailure: () => void,
  ) {}
  feed = (chunk: string): void => {
    // VT_E2E_CONSOLE=1 shows the guest's console as it runs.
    if (process.env.VT_E2E_CONSOLE === "1") process.stderr.write(chunk);
    this.text += chunk;
    this.#pending += chunk;
    const lines = this.#pending.split("\n");
    this.#pending = lines.pop()!;
    for (const line of lines) {
      for (const [marker, handler] of Object.entries(this.handlers)) {
        if (this.#done.has(marker) || !line.includes(marker)) continue;
        this.#done.add(marker);
        try {
          handler(line);
        } catch (err) {
          this.failure ??= err;
          this.onFailure();
        }
      }
    }
  };
}

interface Boot {
  vm: MicroVm;
  result: RunResult;
  console: string;
  errors: Error[];
}

async function boot(
  transport: "mmio" | "pci",
  script: string,
  devices: VirtioDevice[],
  handlers: (vm: () => MicroVm) => Record<string, (line: string) => void>,
): Promise<Boot> {
  const guest = await ensureGuest();
  const errors: Error[] = [];
  const ref: { vm?: MicroVm } = {};
  const director = new Director(handlers(() => ref.vm!), () => ref.vm?.stop());
  const vm = MicroVm.create({
    kernel: new Uint8Array(readFileSync(guest.kernel)),
    initrd: concatBytes(new Uint8Array(readFileSync(guest.initramfs)), scriptCpio(script)),
    cmdline: transport === "pci" ? CMDLINE : `${CMDLINE} pci=off`,
    transport,
    memorySize: RAM,
    devices,
    console: director.feed,
    onError: (e) => errors.push(e),
  });
  ref.vm = vm;
  try {
    const result = await vm.run({ timeoutMs: 12 * 60_000 });
    if (director.failure !== undefined) throw director.failure;
    const show = `\nreason ${result.reason}, ${result.elapsedMs.toFixed(0)} ms` +
      `\n--- console ---\n${director.text}\n--- errors ---\n${errors.join("\n")}`;
    assert.match(director.text, /VT-RESULT: PASS/, show);
    assert.equal(result.reason, "poweroff", show);
    return { vm, result, console: director.text, errors };
  } finally {
    vm.close();
  }
}

const timers = new Set<ReturnType<typeof setInterval>>();

/** Run `then` once `ready()` holds, checking every 100 ms for at most 5 minutes. */
function waitThen(ready: () => boolean, then: () => void): void {
  const started = Date.now();
  const timer = setInterval(() => {
    if (!ready() && Date.now() - started < 300_000) return;
    clearInterval(timer);
    timers.delete(timer);
    then();
  }, 100);
  timers.add(timer);
}

function ramResident(vm: MicroVm): number {
  const ram = vm.memory.regions[0];
  return residentBytes(BigInt(mappedAddressOf(ram.bytes)!), ram.size);
}

/** The guest uptime a marker line reports (`uptime=S`). */
function uptime(console: string, marker: string): string {
  return new RegExp(`${marker}.*uptime=([0-9.]+)`).exec(console)?.[1] ?? "?";
}

function mib(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}

test(
  "balloon, virtio-mem and pmem on our VMM with the stock Debian kernel: targets followed by the guest and by the VMM's resident memory, data kept across boots",
  { skip, timeout: 40 * 60_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "vt-memdev-e2e-"));
    const image = join(dir, "pmem.img");
    writeFileSync(image, new Uint8Array(0));
    truncateSync(image, PMEM_SIZE); // sparse

    const figures: string[] = [];
    try {
      // ---- boot 1 ------------------------------------------------------------------------
      const balloon = new BalloonDevice({ statsIntervalMs: 500 });
      const mem = new MemDevice({ regionSize: MEM_REGION });
      const pmem = new PmemDevice({ path: image });
      const rss: Record<string, number> = {};
      const memRss = () => residentBytes(mem.mapping!.address, MEM_REGION);
      let b1: Boot;
      try {
        b1 = await boot("mmio", boot1Script(), [balloon, mem, pmem], (vm) => ({
          "VT-BALLOON-READY": () => {
            rss.beforeInflate = ramResident(vm());
            balloon.setTargetPages(BALLOON_TARGET / 4096);
          },
          "VT-BALLOON-INFLATED": () => {
            // The guest counts pages out of MemTotal before the device acknowledges the last
            // request, and updates actual after: wait (bounded) for both.
            const target = BALLOON_TARGET / 4096;
            waitThen(
              () => balloon.pagesInBalloon === target && balloon.actualPages === target,
              () => {
                rss.inflated = ramResident(vm());
                rss.inflatedActual = balloon.actualPages;
                rss.inflatedHeld = balloon.pagesInBalloon;
                balloon.setTargetPages(0);
              },
            );
          },
          "VT-BALLOON-DEFLATED": () => {
            rss.deflated = ramResident(vm());
          },
          "VT-MEM-READY": () => {
            rss.memBefore = memRss();
            mem.setRequestedSize(MEM_REQUEST);
          },
          "VT-MEM-TOUCHED": () => {
            rss.memTouched = memRss();
            rss.memPlugged = mem.pluggedSize;
            mem.setRequestedSize(0);
          },
          "VT-MEM-UNPLUGGED": () => {
            rss.memUnplugged = memRss();
          },
        }));
      } finally {
        balloon.remove();
        mem.remove();
        pmem.remove();
      }
      const show = `\n${JSON.stringify(rss)}\n--- console ---\n${b1.console}`;
      // Balloon: the guest gave 128 MiB and the VMM holds about that much less of its RAM.
      assert.equal(rss.inflatedActual, BALLOON_TARGET / 4096, show);
      assert.equal(rss.inflatedHeld, BALLOON_TARGET / 4096, show);
      const inflateDrop = rss.beforeInflate - rss.inflated;
      assert.ok(inflateDrop >= 0.75 * BALLOON_TARGET, `RSS fell by ${mib(inflateDrop)}${show}`);
      assert.equal(balloon.pagesInBalloon, 0, "deflated back to an empty balloon");
      assert.ok(
        rss.deflated - rss.inflated >= 0.5 * BALLOON_TARGET,
        `deflated pages reused${show}`,
      );
      const c = balloon.counters;
      assert.ok(c.releasedBytes >= BALLOON_TARGET, show);
      assert.equal(c.ignoredOutsideRam + c.ignoredDeviceMemory + c.ignoredDuplicates, 0, show);
      assert.ok(c.statsUpdates >= 2, `stats updates: ${c.statsUpdates}`);
      const stats = balloon.stats!;
      assert.ok(stats.totalMemory! > 256 * MiB && stats.totalMemory! <= RAM, JSON.stringify(stats));
      assert.ok(stats.freeMemory !== undefined && stats.availableMemory !== undefined);
      // virtio-mem: plugged, used, unplugged and given back.
      assert.ok(rss.memPlugged >= MEM_REQUEST - 4 * MiB, show);
      assert.ok(rss.memTouched >= 64 * MiB, `device memory resident ${mib(rss.memTouched)}${show}`);
      assert.ok(rss.memUnplugged <= 8 * MiB, `after unplug ${mib(rss.memUnplugged)}${show}`);
      assert.equal(mem.pluggedSize, 0);
      assert.ok(mem.counters.plugs > 0 && mem.counters.unplugs + mem.counters.unplugAlls > 0);
      assert.equal(mem.counters.errors, 0);
      // pmem: the data is in the host file.
      assert.match(b1.console, /VT-PMEM-WRITTEN/, show);
      assert.ok(pmem.counters.flushes >= 1, `flushes: ${pmem.counters.flushes}`);
      assert.ok(
        readFileSync(image).includes(new TextEncoder().encode(MARKER)),
        "host file has data",
      );
      const dax = /VT-PMEM-MOUNT dax=(\d)/.exec(b1.console)?.[1];
      figures.push(
        `balloon: RAM resident ${mib(rss.beforeInflate)} -> ${mib(rss.inflated)} after a ` +
          `${mib(BALLOON_TARGET)} inflate (-${mib(inflateDrop)}), ${mib(rss.deflated)} after ` +
          `deflate + reuse; ${c.statsUpdates} stats updates`,
        `virtio-mem: ${mib(rss.memPlugged)} plugged, device memory resident ${
          mib(rss.memTouched)
        } when used, ${mib(rss.memUnplugged)} after unplug`,
        `pmem: dax=${dax}, ${pmem.counters.flushes} flushes, mkfs + write + sync done at ${
          uptime(b1.console, "VT-PMEM-WRITTEN")
        } s of guest uptime; boot 1 whole run ${(b1.result.elapsedMs / 1000).toFixed(1)} s`,
      );

      // ---- boot 2 ------------------------------------------------------------------------
      const balloon2 = new BalloonDevice({ freePageReporting: true, deflateOnOom: true });
      const pmem2 = new PmemDevice({ path: image });
      const r2: Record<string, number> = {};
      let b2: Boot;
      try {
        b2 = await boot("pci", boot2Script(), [balloon2, pmem2], (vm) => ({
          "VT-REPORT-FILLED": (line) => {
            r2.filled = Number(/mib=(\d+)/.exec(line)?.[1] ?? 0) * MiB;
            r2.beforeFree = ramResident(vm());
            r2.releasedBefore = balloon2.counters.releasedBytes;
            r2.pmemAddress = pmem2.address ?? -1;
          },
          "VT-REPORT-FREED": () => {
            // Wait (bounded) until the reported pages are released, then start the OOM phase.
            const released = () => balloon2.counters.releasedBytes - r2.releasedBefore;
            waitThen(() => released() >= 0.5 * r2.filled, () => {
              r2.reported = released();
              r2.afterFree = ramResident(vm());
              balloon2.setTargetPages(OOM_TARGET / 4096);
            });
          },
        }));
      } finally {
        balloon2.remove();
        pmem2.remove();
      }
      const show2 = `\n${JSON.stringify(r2)}\n--- console ---\n${b2.console}`;
      assert.match(b2.console, /VT-PMEM-READ ok/, show2);
      // On the PCI machine device memory starts after the 64-bit window (4 GiB + 4 GiB).
      assert.equal(r2.pmemAddress, 0x2_0000_0000, show2);
      assert.ok(
        r2.reported >= 0.5 * r2.filled,
        `reported and released ${mib(r2.reported)}${show2}`,
      );
      const reportDrop = r2.beforeFree - r2.afterFree;
      assert.ok(reportDrop >= 0.4 * r2.filled, `RSS fell by ${mib(reportDrop)}${show2}`);
      const c2 = balloon2.counters;
      assert.ok(c2.deflatedPages > 0, `deflated pages: ${c2.deflatedPages}${show2}`);
      assert.ok(c2.reports > 0);
      figures.push(
        `free page reporting: ${mib(r2.filled)} freed in the guest, ${
          mib(r2.reported)
        } reported and released, RAM resident ${mib(r2.beforeFree)} -> ${mib(r2.afterFree)}`,
        `DEFLATE_ON_OOM: ${c2.deflatedPages} pages deflated under OOM`,
        `pmem boot 2 (virtio-pci): kernel to init ${
          uptime(b2.console, "VT-BEGIN")
        } s, the file read back ` +
          `from /dev/pmem0 (mounted with DAX when allowed) at ${
            uptime(b2.console, "VT-PMEM-READ")
          } s ` +
          `of guest uptime; whole run ${(b2.result.elapsedMs / 1000).toFixed(1)} s`,
      );
      console.log(`[memdev e2e]\n  ${figures.join("\n  ")}`);
    } finally {
      for (const t of timers) clearInterval(t);
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
