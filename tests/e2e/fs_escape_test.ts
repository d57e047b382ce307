// Escape attempts from inside a real Linux guest (QEMU TCG) against our virtio-fs device:
// `..` chains, symbolic links to the host's outside files, to /etc, to /proc/self/root and
// /proc/self/cwd, a directory swapped for a link to the outside while the guest reads
// through it (on the host, and in the guest), hard links, renames out of the mount, xattrs,
// truncation and device nodes. The host then checks that nothing outside the shared
// directory changed and nothing there was read (access times first, then names, contents
// and extended attributes), and that the guest never saw an outside canary.

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
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BootResult, ensureGuest, Sandbox } from "../../launcher/mod.ts";
import { FsDevice } from "../../devices/fs.ts";
import { listxattr, setxattr } from "../../sys/mod.ts";

const CANARY = "CANARY-OUTSIDE-5b1e0c";
const DAY = 86400;

/** The guest script: each attempt is recorded, whatever it returns. */
function script(outside: string): string {
  return `
step mount
mkdir -p /mnt/fs
mount -t virtiofs esc /mnt/fs
cd /mnt/fs
n=0
try() {
  n=$((n + 1))
  out=$("$@" 2>&1 | head -c 300 | tr '\\n' '|')
  rc=$?
  echo "VT-ESC $n [$*] => $out"
}
step escapes
try cat /mnt/fs/../outside/secret
try cat /mnt/fs/../../outside/secret
try cat "/mnt/fs/$(printf '../%.0s' $(seq 40))${outside.slice(1)}/secret"
try cat /mnt/fs/planted-abs
try cat /mnt/fs/planted-rel/secret
try ls /mnt/fs/planted-rel/dir
try cat /mnt/fs/planted-proc
try ls /mnt/fs/planted-cwd/
try sh -c 'ln -s /etc /mnt/fs/etc-link && ls /mnt/fs/etc-link/'
try sh -c 'ln -s /proc/self/root /mnt/fs/root-link && ls /mnt/fs/root-link/'
try sh -c 'ln -s ../../../../../outside/secret /mnt/fs/up-chain && cat /mnt/fs/up-chain'
try ln /init /mnt/fs/init-hard
try ln /mnt/fs/planted-abs /mnt/fs/planted-abs-hard
try mv /mnt/fs/victim /mnt/fs/../victim-moved-out
try mv /mnt/fs/planted-rel /mnt/fs/../planted-rel-moved-out
try vt-xattr get /mnt/fs/planted-abs user.mark
try vt-xattr lget /mnt/fs/planted-abs user.mark
try vt-xattr lset /mnt/fs/planted-abs user.mark pwned
try vt-xattr set /mnt/fs/planted-dir/secret user.mark pwned
try sh -c 'echo pwned > /mnt/fs/planted-abs'
try truncate -s 0 /mnt/fs/planted-abs
try chmod 777 /mnt/fs/planted-abs
try touch -h /mnt/fs/planted-abs
try mknod /mnt/fs/sda b 8 0
try mknod /mnt/fs/mem c 1 1
try sh -c 'ln -s loop /mnt/fs/loop && cat /mnt/fs/loop'
try sh -c 'cd /mnt/fs && cd ../.. && pwd'
try readlink /mnt/fs/planted-abs
try cat /mnt/fs/planted-dir/secret
try ls -la /mnt/fs/planted-dir/
step host-swap-race
echo VT-SWAP-START
inside=0
i=0
while [ $i -lt 300 ]; do
  c=$(cat /mnt/fs/hswap/secret 2>/dev/null || true)
  case "$c" in *CANARY*) echo "VT-LEAK host-swap $c" ;; inside) inside=$((inside + 1)) ;; esac
  i=$((i + 1))
done
echo VT-SWAP-STOP
echo "VT-SWAP-READS inside=$inside of 300"
step guest-swap-race
mkdir -p /mnt/fs/gswap.dir
echo inside > /mnt/fs/gswap.dir/secret
( j=0; while [ $j -lt 300 ]; do
    mv /mnt/fs/gswap.dir /mnt/fs/gswap 2>/dev/null; mv /mnt/fs/gswap /mnt/fs/gswap.dir 2>/dev/null
    ln -s ../outside /mnt/fs/gswap 2>/dev/null; rm -f /mnt/fs/gswap 2>/dev/null
    j=$((j + 1)); done ) &
i=0
while [ $i -lt 300 ]; do
  c=$(cat /mnt/fs/gswap/secret 2>/dev/null || true)
  case "$c" in *CANARY*) echo "VT-LEAK guest-swap $c" ;; esac
  i=$((i + 1))
done
wait
echo "VT-ESCAPES $n"
step umount
cd /
umount /mnt/fs
`;
}

function paths(root: string, skip: string): string[] {
  const out = [root];
  for (const name of readdirSync(root).sort()) {
    const child = join(root, name);
    if (child === skip) continue;
    if (lstatSync(child).isDirectory()) out.push(...paths(child, skip));
    else out.push(child);
  }
  return out;
}

function metadata(list: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of list) {
    const st = lstatSync(p, { bigint: true });
    out[p] = [st.mode, st.size, st.nlink, st.ino, st.mtimeNs, st.atimeNs, st.ctimeNs].join(" ");
  }
  return out;
}

function contents(root: string, skip: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of paths(root, skip)) {
    const st = lstatSync(p);
    let what = `${st.mode}`;
    if (st.isFile()) what += " " + createHash("sha256").update(readFileSync(p)).digest("hex");
    if (st.isSymbolicLink()) what += " -> " + readlinkSync(p);
    if (st.isFile() || st.isDirectory()) {
      const list = new Uint8Array(4096);
      what += " " + new TextDecoder().decode(list.subarray(0, listxattr(p, list)));
    }
    out[p] = what;
  }
  return out;
}

describe("virtio-fs: escape attempts from a real guest (QEMU TCG)", { timeout: 600_000 }, () => {
  let base: string;
  let share: string;
  let outside: string;
  let result: BootResult;
  let box: Sandbox | undefined;
  let device: FsDevice;
  let watched: string[];
  let beforeMeta: Record<string, string>;
  let beforeContents: Record<string, string>;
  let swaps = 0;
  const errors: string[] = [];

  before(async () => {
    await ensureGuest();
    base = mkdtempSync(join(tmpdir(), "vt-fs-escape-"));
    share = join(base, "share");
    outside = join(base, "outside");
    mkdirSync(share);
    mkdirSync(join(outside, "dir"), { recursive: true });
    writeFileSync(join(outside, "secret"), `${CANARY} secret\n`);
    writeFileSync(join(outside, "dir", "deep"), `${CANARY} deep\n`);
    setxattr(join(outside, "secret"), "user.mark", new TextEncoder().encode(CANARY));
    writeFileSync(join(base, "neighbour.txt"), `${CANARY} next to the share\n`);
    // Links planted on the host, pointing out of the share by every route.
    symlinkSync(join(outside, "secret"), join(share, "planted-abs"));
    symlinkSync("../outside", join(share, "planted-rel"));
    symlinkSync(outside, join(share, "planted-dir"));
    symlinkSync(`/proc/self/root${outside}/secret`, join(share, "planted-proc"));
    symlinkSync("/proc/self/cwd", join(share, "planted-cwd"));
    writeFileSync(join(share, "victim"), "inside victim\n");
    mkdirSync(join(share, "hswap"));
    writeFileSync(join(share, "hswap", "secret"), "inside");

    watched = paths(base, share);
    beforeContents = contents(base, share);
    const now = Date.now() / 1000;
    for (const p of watched) {
      if (!lstatSync(p).isSymbolicLink()) utimesSync(p, now - 2 * DAY, now - 3 * DAY);
    }
    beforeMeta = metadata(watched);

    // cache=never: every path walk of the guest reaches the server (no cached entries).
    device = new FsDevice({
      sharedDir: share,
      tag: "esc",
      cache: "never",
      onError: (e) => errors.push(e.message),
    });
    box = await Sandbox.start({
      devices: [{ id: "esc", kind: "fs", device, qemuProperties: "tag=esc" }],
    });
    let seen = "";
    let timer: ReturnType<typeof setInterval> | undefined;
    const swap = () => {
      // The host flips hswap between the directory and a link to the outside.
      const dirPath = join(share, "hswap");
      const parked = join(share, "hswap.parked");
      try {
        if (lstatSync(dirPath).isDirectory()) {
          renameSync(dirPath, parked);
          symlinkSync("../outside", dirPath);
        } else {
          unlinkSync(dirPath);
          renameSync(parked, dirPath);
        }
        swaps++;
      } catch { /* the guest is between two calls: try again on the next tick */ }
    };
    result = await box.boot({
      script: script(outside),
      timeoutSec: 300,
      onOutput: (chunk) => {
        seen += chunk;
        if (timer === undefined && seen.includes("VT-SWAP-START")) timer = setInterval(swap, 1);
        if (timer !== undefined && seen.includes("VT-SWAP-STOP")) {
          clearInterval(timer);
          timer = undefined;
          seen = "";
        }
      },
    });
    if (timer !== undefined) clearInterval(timer);
    if (!result.passed) console.error(result.output);
  });

  after(async () => {
    await box?.stop();
    device?.remove();
    if (base) rmSync(base, { recursive: true, force: true });
  });

  it("the guest ran every attempt (at least 20) and both races", () => {
    assert.ok(result.passed, `failed at ${result.failedStep}\n${result.output.slice(-3000)}`);
    const n = Number(/^VT-ESCAPES (\d+)$/m.exec(result.output)?.[1]);
    assert.ok(n >= 20, `${n} attempts`);
    assert.ok(swaps > 10, `the host swapped the directory ${swaps} times`);
    assert.match(result.output, /^VT-SWAP-READS inside=\d+ of 300$/m);
  });

  it("the guest never saw an outside file's content, name listing or xattr", () => {
    const lines = result.output.split("\n");
    const leaks = lines.filter((l) => l.includes(CANARY) || l.startsWith("VT-LEAK"));
    assert.deepEqual(leaks, []);
    const attempt = (pattern: RegExp) =>
      lines.find((l) => l.startsWith("VT-ESC ") && pattern.test(l)) ?? "";
    // The outside directory's entries never appear in a listing through a link.
    assert.doesNotMatch(attempt(/ls \/mnt\/fs\/planted-rel\/dir/), /deep/);
    // Device nodes are refused by the server; the link's xattrs are the link's.
    assert.match(attempt(/mknod \/mnt\/fs\/sda/), /not permitted/i);
    assert.match(attempt(/vt-xattr lget/), /errno=61/);
    assert.match(attempt(/vt-xattr lset/), /errno=1\b/);
  });

  it("nothing outside the share was read or changed on the host", () => {
    // Access times first: they show any read (the tree was aged past relatime's window).
    assert.deepEqual(metadata(watched), beforeMeta);
    assert.deepEqual(contents(base, share), beforeContents);
  });

  it("what the guest could change stayed inside the share", () => {
    assert.ok(
      lstatSync(join(share, "planted-abs-hard")).isSymbolicLink(),
      "a link of the link itself",
    );
    assert.equal(readlinkSync(join(share, "planted-abs-hard")), join(outside, "secret"));
    assert.deepEqual(errors, []);
  });
});
