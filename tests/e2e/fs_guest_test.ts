// A real Linux guest (QEMU TCG, its own virtiofs driver) mounts two shares served by our
// TypeScript virtio-fs device over vhost-user — one with cache=auto, one with cache=never —
// runs a file workload on them (create, write, read, rename, unlink, mkdir, symlink, hard
// link, xattrs, truncate, fallocate, FIFO, a 256 MiB file with checksums), and sees files the
// host changes under it. The host then checks its directories hold exactly what the guest
// made. One boot serves every check.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BootResult, ensureGuest, Sandbox } from "../../launcher/mod.ts";
import { FsDevice } from "../../devices/fs.ts";
import { getxattr } from "../../sys/mod.ts";

const BIG_MIB = 256;

const SCRIPT = `
step tools
command -v vt-xattr >/dev/null || fail "vt-xattr missing from the guest image"
step mount
mkdir -p /mnt/fs /mnt/never
mount -t virtiofs auto /mnt/fs
mount -t virtiofs never /mnt/never
grep -c virtiofs /proc/mounts
cd /mnt/fs
expect_eq "$(cat seeded.txt)" "seeded by the host" seeded
step create-write-read
echo hello > a.txt
printf 'second line\\n' >> a.txt
expect_eq "$(cat a.txt | wc -l)" 2 lines
expect_eq "$(head -n 1 a.txt)" hello first-line
step mkdir
mkdir -p d1/d2/d3 d1/gone
chmod 751 d1
expect_eq "$(stat -c %a d1)" 751 dir-mode
step rename
mv a.txt d1/b.txt
[ ! -e a.txt ] || fail "a.txt still there"
mv d1/gone d1/d2/moved
step symlink
ln -s d1/b.txt sl
expect_eq "$(readlink sl)" d1/b.txt readlink
expect_eq "$(head -n 1 sl)" hello through-link
ln -s /absolute/elsewhere dangling
step hardlink
ln d1/b.txt hl
expect_eq "$(stat -c %h d1/b.txt)" 2 nlink
expect_eq "$(stat -c %i hl)" "$(stat -c %i d1/b.txt)" same-inode
ln d1/b.txt hl-removed
rm hl-removed
expect_eq "$(stat -c %h d1/b.txt)" 2 nlink-after-unlink
step xattr
vt-xattr set d1/b.txt user.color blue
vt-xattr set d1/b.txt user.tmp x
expect_eq "$(vt-xattr get d1/b.txt user.color)" blue getxattr
expect_eq "$(vt-xattr list d1/b.txt | sort | tr '\\n' ' ')" "user.color user.tmp " listxattr
vt-xattr rm d1/b.txt user.tmp
expect_eq "$(vt-xattr list d1/b.txt)" user.color removexattr
step truncate
printf '0123456789abcdef' > trunc
truncate -s 100 trunc
expect_eq "$(stat -c %s trunc)" 100 grown
truncate -s 10 trunc
expect_eq "$(cat trunc)" 0123456789 shrunk
step fallocate
fallocate -l 1048576 falloc
expect_eq "$(stat -c %s falloc)" 1048576 fallocated
step fifo-unlink-rmdir
mkfifo fifo
[ -p fifo ] || fail "not a FIFO"
echo bye > unlinked; rm unlinked
rmdir d1/d2/d3
ls -la . d1 d1/d2
step large-file
# The data is made in the guest's RAM first (tmpfs), so its checksum is known apart from
# the share; then it is copied to the share in 1 MiB writes.
dd if=/dev/urandom of=/tmp/big bs=1M count=${BIG_MIB} 2>/dev/null
wsum=$(sha256sum /tmp/big | cut -d' ' -f1)
echo "VT-T big-start $(cut -d' ' -f1 /proc/uptime)"
dd if=/tmp/big of=/mnt/fs/big bs=1M 2>/dev/null
rm /tmp/big
sync
echo "VT-T big-written $(cut -d' ' -f1 /proc/uptime)"
expect_eq "$(stat -c %s big)" $((${BIG_MIB} * 1048576)) big-size
echo 3 > /proc/sys/vm/drop_caches
rsum=$(sha256sum big | cut -d' ' -f1)
echo "VT-T big-read $(cut -d' ' -f1 /proc/uptime)"
echo "VT-BIG-SUMS $wsum $rsum"
expect_eq "$rsum" "$wsum" "read-back checksum"
step host-changes
echo v1 > /mnt/fs/watch
echo v1 > /mnt/never/watch
expect_eq "$(cat /mnt/fs/watch)" v1 auto-v1
expect_eq "$(cat /mnt/never/watch)" v1 never-v1
echo VT-HOST-CHANGE-NOW
wait_for /mnt/never/changed 300
expect_eq "$(cat /mnt/never/watch)" "v2 from the host" never-sees-change
n=0
while [ "$(cat /mnt/fs/watch)" != "v2 from the host" ]; do
  n=$((n + 1)); [ $n -lt 100 ] || fail "cache=auto never saw the host's change"; sleep 0.1
done
echo "VT-AUTO-SAW-CHANGE after $n polls"
step umount
cd /
umount /mnt/fs
umount /mnt/never
`;

describe("virtio-fs: a real guest's file workload (QEMU TCG)", { timeout: 600_000 }, () => {
  let dir: string;
  let auto: string;
  let never: string;
  let result: BootResult;
  let box: Sandbox | undefined;
  let fsAuto: FsDevice;
  let fsNever: FsDevice;
  const errors: string[] = [];
  let hostChanged = false;

  before(async () => {
    await ensureGuest();
    dir = mkdtempSync(join(tmpdir(), "vt-fs-guest-"));
    auto = join(dir, "auto");
    never = join(dir, "never");
    mkdirSync(auto);
    mkdirSync(never);
    writeFileSync(join(auto, "seeded.txt"), "seeded by the host\n");
    const onError = (e: Error) => errors.push(e.message);
    fsAuto = new FsDevice({ sharedDir: auto, tag: "auto", cache: "auto", onError });
    fsNever = new FsDevice({ sharedDir: never, tag: "never", cache: "never", onError });
    box = await Sandbox.start({
      dir,
      devices: [
        {
          id: "fsa",
          kind: "fs",
          device: fsAuto,
          qemuProperties: "tag=auto",
          backendOptions: { onError },
        },
        {
          id: "fsn",
          kind: "fs",
          device: fsNever,
          qemuProperties: "tag=never",
          backendOptions: { onError },
        },
      ],
    });
    let seen = "";
    result = await box.boot({
      script: SCRIPT,
      timeoutSec: 300,
      // Room for the large file in the guest's tmpfs before it goes to the share.
      memory: "1G",
      onOutput: (chunk) => {
        seen += chunk;
        if (!hostChanged && seen.includes("VT-HOST-CHANGE-NOW")) {
          hostChanged = true;
          writeFileSync(join(never, "watch"), "v2 from the host\n");
          writeFileSync(join(auto, "watch"), "v2 from the host\n");
          writeFileSync(join(never, "changed"), "");
        }
      },
    });
    if (!result.passed) console.error(result.output);
    const t = (name: string) =>
      Number(new RegExp(`^VT-T ${name} ([\\d.]+)$`, "m").exec(result.output)?.[1]);
    const write = t("big-written") - t("big-start");
    const read = t("big-read") - t("big-written");
    console.log(
      `virtio-fs guest: ${BIG_MIB} MiB written in ${write.toFixed(1)} s ` +
        `(${(BIG_MIB / write).toFixed(1)} MiB/s), read back in ` +
        `${read.toFixed(1)} s (${(BIG_MIB / read).toFixed(1)} MiB/s) under TCG; ` +
        `whole run ${(result.elapsedMs / 1000).toFixed(1)} s`,
    );
  });

  after(async () => {
    await box?.stop();
    fsAuto?.remove();
    fsNever?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the guest mounts both shares and runs the whole workload", () => {
    assert.ok(result.passed, `failed at ${result.failedStep}\n${result.output.slice(-3000)}`);
    assert.deepEqual(errors, []);
  });

  it("the host directory holds exactly what the guest made", () => {
    assert.deepEqual(
      readdirSync(auto).sort(),
      ["big", "d1", "dangling", "falloc", "fifo", "hl", "seeded.txt", "sl", "trunc", "watch"],
    );
    assert.deepEqual(readdirSync(join(auto, "d1")).sort(), ["b.txt", "d2"]);
    assert.deepEqual(readdirSync(join(auto, "d1", "d2")), ["moved"]);
    assert.equal(readFileSync(join(auto, "d1", "b.txt"), "utf8"), "hello\nsecond line\n");
    assert.equal(statSync(join(auto, "d1")).mode & 0o777, 0o751);
    assert.equal(readlinkSync(join(auto, "sl")), "d1/b.txt");
    assert.equal(readlinkSync(join(auto, "dangling")), "/absolute/elsewhere");
    const b = statSync(join(auto, "d1", "b.txt"));
    assert.equal(b.nlink, 2);
    assert.equal(statSync(join(auto, "hl")).ino, b.ino);
    const v = new Uint8Array(16);
    assert.equal(
      new TextDecoder().decode(v.subarray(0, getxattr(join(auto, "hl"), "user.color", v))),
      "blue",
    );
    assert.equal(readFileSync(join(auto, "trunc"), "utf8"), "0123456789");
    assert.equal(statSync(join(auto, "falloc")).size, 1 << 20);
    assert.ok(lstatSync(join(auto, "fifo")).isFIFO());
  });

  it(`a ${BIG_MIB} MiB file: the guest's stream, the host's file and the guest's read-back agree`, () => {
    const sums = /^VT-BIG-SUMS ([0-9a-f]{64}) ([0-9a-f]{64})$/m.exec(result.output);
    assert.ok(sums, result.output.slice(-2000));
    const host = createHash("sha256").update(readFileSync(join(auto, "big"))).digest("hex");
    assert.equal(host, sums[1], "what the guest wrote is on the host");
    assert.equal(sums[2], sums[1], "what the guest read back is what it wrote");
    assert.ok(fsAuto.stats.bytesWritten >= BIG_MIB << 20);
  });

  it("a file changed on the host is seen by the guest (cache=never at once, cache=auto soon)", () => {
    assert.ok(hostChanged);
    assert.ok(result.steps.includes("host-changes"), result.output.slice(-2000));
    assert.match(result.output, /^VT-AUTO-SAW-CHANGE after \d+ polls$/m);
  });

  it("the guest's unmount ends both sessions", () => {
    assert.ok(result.steps.includes("umount"));
    assert.equal(fsAuto.server.initialized, false, "DESTROY received");
    assert.equal(fsAuto.stats.handles, 0);
    assert.equal(fsNever.stats.handles, 0);
  });
});
