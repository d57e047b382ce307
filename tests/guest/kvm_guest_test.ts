// The nested-KVM runner (scripts/kvm-guest.sh): it boots its QEMU TCG guest, where /dev/kvm
// exists, runs the command in this project folder and hands back its output and exit status,
// and leaves no run folder behind. scripts/test.sh relies on it for the KVM tests where the
// host has no /dev/kvm.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { qemuAvailable } from "../../launcher/qemu.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const NESTED_CACHE = join(
  process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"),
  "virtio-ts",
  "nested",
);

function runFolders(): string[] {
  try {
    return readdirSync(NESTED_CACHE).filter((f) => f.startsWith("run."));
  } catch {
    return [];
  }
}

test(
  "scripts/kvm-guest.sh runs a command where /dev/kvm exists and returns its output and status",
  {
    skip: process.arch === "x64" && qemuAvailable() ? false : "skipped: needs x86-64 and QEMU",
    timeout: 10 * 60_000,
  },
  () => {
    const before = runFolders();
    const r = spawnSync("bash", [
      join(ROOT, "scripts", "kvm-guest.sh"),
      "sh",
      "-c",
      'test -c /dev/kvm || exit 9; echo "in $(pwd): it\'s $VT_PROBE"; echo to-stderr >&2; exit 7',
    ], {
      cwd: ROOT,
      encoding: "utf8",
      env: { ...process.env, VT_PROBE: "a 'quoted' $value" },
    });
    assert.equal(r.status, 7, `exit status\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /to-stderr/);
    assert.ok(r.stdout.includes(`in ${ROOT}: it's a 'quoted' $value`), r.stdout);
    assert.deepEqual(runFolders(), before, "the run folder is removed");
  },
);
