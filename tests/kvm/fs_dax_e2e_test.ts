// End to end on KVM: virtio-fs with a DAX window on OUR VMM (kvm/vmm.ts). The device asks for
// device memory (getResourceRequirements), the VMM places it and inserts it as a memory slot
// (VirtioRegionHandler), the MMIO transport announces it as shared memory region 0 (virtio 1.2
// §4.2.2, §5.11.6.5), and Debian's stock cloud kernel mounts the share with `dax=always`: file
// pages are then mapped into the guest with FUSE_SETUPMAPPING instead of copied by READ/WRITE.
// The guest reads a host file and overwrites bytes inside another (writes inside the file's size
// go through the mapping; only size-extending writes would be FUSE_WRITE); the host sees the
// bytes in its file without any WRITE request. Needs /dev/kvm (scripts/test.sh runs tests/kvm/
// inside a nested-KVM guest where the host has none). Runs under Deno and Bun.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvmUnavailableReason } from "../../sys/mod.ts";
import { MicroVm } from "../../kvm/mod.ts";
import { FsDevice } from "../../devices/fs.ts";
import { ensureGuest, scriptCpio } from "../../launcher/qemu.ts";
import { concatBytes } from "../../testing/mod.ts";

const GREETING = "hello-dax-from-host";
const WRITTEN = "written-through-dax";
const DAX_WINDOW = 64 << 20;

const SCRIPT = `
step mount
mount -t virtiofs vtdax /mnt -o dax=always
grep virtiofs /proc/mounts | sed 's/^/VT-MOUNT: /'
grep -q 'dax=always' /proc/mounts || fail "the share is not mounted with dax=always"
step dax-read
expect_eq "$(head -c ${GREETING.length} /mnt/in.txt)" "${GREETING}" "first bytes of in.txt"
step dax-write
printf '${WRITTEN}' | dd of=/mnt/out.bin bs=1 seek=4096 conv=notrunc 2>/dev/null
sync
expect_eq "$(dd if=/mnt/out.bin bs=1 skip=4096 count=${WRITTEN.length} 2>/dev/null)" "${WRITTEN}" "read back"
step unmount
umount /mnt
`;

test("virtio-fs with a DAX window on MicroVm: the stock kernel maps file pages into the guest", {
  skip: kvmUnavailableReason() === undefined ? false : `skipped: ${kvmUnavailableReason()}`,
  timeout: 10 * 60_000,
}, async () => {
  const guest = await ensureGuest();
  const dir = mkdtempSync(join(tmpdir(), "vt-kvm-dax-"));
  const shared = join(dir, "share");
  mkdirSync(shared);
  const greeting = new Uint8Array(64 << 10);
  greeting.set(new TextEncoder().encode(GREETING));
  writeFileSync(join(shared, "in.txt"), greeting);
  writeFileSync(join(shared, "out.bin"), new Uint8Array(1 << 20));
  const fs = new FsDevice({ sharedDir: shared, tag: "vtdax", daxWindowSize: DAX_WINDOW });
  let console = "";
  const errors: Error[] = [];
  const vm = MicroVm.create({
    kernel: new Uint8Array(readFileSync(guest.kernel)),
    initrd: concatBytes(new Uint8Array(readFileSync(guest.initramfs)), scriptCpio(SCRIPT)),
    cmdline: "console=ttyS0 panic=-1 pci=off quiet",
    memorySize: 256 << 20,
    devices: [fs],
    console: (text) => (console += text),
    onError: (e) => errors.push(e),
  });
  // The window exists once the VMM has given the device its resources (in create).
  const window = fs.daxWindow;
  assert.ok(window !== undefined, "the device has its DAX window after MicroVm.create");
  let setups = 0;
  let writableSetups = 0;
  const setup = window.setup.bind(window);
  window.setup = (...args: Parameters<typeof window.setup>) => {
    setups++;
    if (args[2].writable) writableSetups++;
    return setup(...args);
  };
  try {
    const result = await vm.run({ timeoutMs: 5 * 60_000 });
    const show = `\nreason ${result.reason}${result.detail ? ` (${result.detail})` : ""}, ` +
      `${result.elapsedMs.toFixed(0)} ms, ${setups} SETUPMAPPINGs (${writableSetups} writable)` +
      `\nstats ${JSON.stringify(fs.stats)}` +
      `\n--- console ---\n${console}\n--- errors ---\n${errors.join("\n")}`;
    assert.match(console, /VT-RESULT: PASS/, show);
    assert.equal(result.reason, "poweroff", show);
    assert.ok(setups > 0, `the guest mapped file ranges through the window${show}`);
    const out = readFileSync(join(shared, "out.bin"));
    assert.equal(new TextDecoder().decode(out.subarray(4096, 4096 + WRITTEN.length)), WRITTEN);
    // The bytes came through the mapping, not through FUSE_WRITE.
    assert.equal(fs.stats.bytesWritten, 0, `no WRITE carried the data${show}`);
    assert.deepEqual(errors, [], show);
  } finally {
    vm.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
