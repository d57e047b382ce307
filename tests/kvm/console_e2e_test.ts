// End to end on KVM: the console device on OUR VMM (kvm/vmm.ts) with Debian's stock cloud kernel
// (virtio_console is a module of its; launcher/guest/build.sh puts it in the initramfs), in one
// boot. Port 0 is a console (hvc0, also a kernel console through console=hvc0) and port 1 a named
// port. Checked from both sides:
// - emergency write: before any module is loaded the guest writes emerg_wr through /dev/mem (the
//   device is unconfigured then); the bytes reach port 0's readable;
// - guest → host: `echo` to /dev/hvc0 and to the named port, a kernel message on hvc0;
// - host → guest: a line typed on the console (read from hvc0), a line on the named port, written
//   when the guest opens the port for reading;
// - open/close: the host sees the guest open and close the named port (twice);
// - names: the guest finds the port by /sys/class/virtio-ports/*/name, as /dev/vport0p1;
// - resize: the guest's `stty size` on hvc0 follows the host's resize (RESIZE control message).
// Needs /dev/kvm (scripts/test.sh runs tests/kvm/ inside a nested-KVM guest where the host has
// none). Runs under Deno and Bun.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { kvmUnavailableReason } from "../../sys/mod.ts";
import { DEFAULT_MMIO_BASE, MicroVm } from "../../kvm/mod.ts";
import { ConsoleDevice, type ConsolePort } from "../../devices/console.ts";
import { ensureGuest, scriptCpio } from "../../launcher/qemu.ts";
import { concatBytes } from "../../testing/mod.ts";

const PORT_NAME = "org.virtio-ts.test";
const FROM_HOST = "hello from the host";
const TYPED = "typed on the console";
// emerg_wr: config space (0x100) + 8, in the device's window (the console is device 0).
const EMERG_WR = DEFAULT_MMIO_BASE + 0x100 + 8;

const SCRIPT = `
step emergency-write
for c in 86 84 45 69 77 69 82 71 10; do devmem 0x${EMERG_WR.toString(16)} 32 $c; done
step modules
while read -r ko; do insmod "$ko" 2>/dev/null || true; done </etc/vt-modules
step hvc0
wait_for /dev/hvc0 100
echo "VT-HVC-HELLO" >/dev/hvc0
echo "<2>VT-KMSG-ON-HVC" >/dev/kmsg
step port-name
dev=""
n=0
while [ -z "$dev" ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null || true)" = "${PORT_NAME}" ] && dev="/dev/\${p##*/}"
  done
  [ -n "$dev" ] && break
  n=$((n + 1))
  [ $n -lt 100 ] || fail "no port named ${PORT_NAME}: $(ls /sys/class/virtio-ports)"
  sleep 0.1
done
echo "VT-PORT-DEV: $dev"
wait_for "$dev"
step guest-to-host
echo "VT-PORT-HELLO" >"$dev"
step host-to-guest
read -r line <"$dev"
echo "VT-GOT: $line"
expect_eq "$line" "${FROM_HOST}" "line read from the port"
step hvc-input
exec 3<>/dev/hvc0
stty -echo <&3
echo "VT-HVC-READY" >&3
read -r typed <&3
echo "VT-TYPED: $typed"
expect_eq "$typed" "${TYPED}" "line read from hvc0"
step resize
wait_size() {
  n=0
  while [ "$(stty size <&3)" != "$1" ]; do
    n=$((n + 1))
    [ $n -lt 100 ] || fail "hvc0 size stays '$(stty size <&3)', expected '$1'"
    sleep 0.1
  done
}
wait_size "25 80"
echo "VT-RESIZE-READY" >&3
wait_size "40 132"
echo "VT-RESIZED: $(stty size <&3)"
exec 3>&-
`;

/** Read a port's output as text in the background; `onText` sees the whole text so far. */
function readText(port: ConsolePort, onText: (text: string) => void): { text: () => string } {
  const dec = new TextDecoder();
  let text = "";
  const reader = port.readable.getReader();
  void (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      text += dec.decode(value, { stream: true });
      onText(text);
    }
  })();
  return { text: () => text };
}

test(
  "the console device on MicroVm: hvc0, a named port both ways, open/close, resize and emergency write with the stock kernel",
  {
    skip: kvmUnavailableReason() === undefined ? false : `skipped: ${kvmUnavailableReason()}`,
    timeout: 10 * 60_000,
  },
  async () => {
    const guest = await ensureGuest();
    const enc = new TextEncoder();
    const dev = new ConsoleDevice({
      ports: [{ console: true, cols: 80, rows: 25 }, { name: PORT_NAME }],
    });
    const hvc = dev.port(0)!;
    const agent = dev.port(1)!;

    // Port 0: answer the guest's prompts.
    const hvcWriter = hvc.writable.getWriter();
    let typed: Promise<void> | undefined;
    let resized = false;
    const hvcOut = readText(hvc, (text) => {
      if (typed === undefined && text.includes("VT-HVC-READY")) {
        typed = hvcWriter.write(enc.encode(`${TYPED}\n`));
      }
      if (!resized && text.includes("VT-RESIZE-READY")) {
        resized = true;
        dev.resize(132, 40);
      }
    });

    // The named port: the guest writes on its first open, reads on its second.
    const agentWriter = agent.writable.getWriter();
    const agentEvents: string[] = [];
    let sent: Promise<void> | undefined;
    agent.addEventListener("open", () => {
      agentEvents.push("open");
      if (agentEvents.filter((e) => e === "open").length === 2) {
        sent = agentWriter.write(enc.encode(`${FROM_HOST}\n`));
      }
    });
    agent.addEventListener("close", () => agentEvents.push("close"));
    const agentOut = readText(agent, () => {});

    let serial = "";
    const errors: Error[] = [];
    const vm = MicroVm.create({
      kernel: new Uint8Array(readFileSync(guest.kernel)),
      initrd: concatBytes(new Uint8Array(readFileSync(guest.initramfs)), scriptCpio(SCRIPT)),
      // hvc0 joins as a kernel console once virtio_console is loaded; ttyS0 stays /dev/console.
      cmdline: "console=hvc0 console=ttyS0 panic=-1 pci=off quiet vt_nomod=1",
      memorySize: 256 << 20,
      devices: [dev],
      console: (text) => (serial += text),
      onError: (e) => errors.push(e),
    });
    try {
      assert.equal(vm.windows[0].base, DEFAULT_MMIO_BASE);
      const result = await vm.run({ timeoutMs: 5 * 60_000 });
      const show =
        `\nreason ${result.reason}${result.detail ? ` (${result.detail})` : ""}, ${
          result.elapsedMs.toFixed(0)
        } ms` +
        `\n--- serial ---\n${serial}\n--- hvc0 ---\n${hvcOut.text()}` +
        `\n--- ${PORT_NAME} ---\n${agentOut.text()}\n--- events ---\n${agentEvents}` +
        `\n--- errors ---\n${errors.join("\n")}\n--- stats ---\n${JSON.stringify(dev.stats)}`;
      assert.match(serial, /VT-RESULT: PASS/, show);
      assert.equal(result.reason, "poweroff", show);
      // Emergency write before the driver existed.
      assert.match(hvcOut.text(), /^VT-EMERG\n/, show);
      assert.equal(dev.stats.emergencyWrites, 9, show);
      // Guest → host.
      assert.match(hvcOut.text(), /VT-HVC-HELLO\r?\n/, show);
      assert.match(hvcOut.text(), /VT-KMSG-ON-HVC/, `the kernel console reaches hvc0${show}`);
      assert.equal(agentOut.text(), "VT-PORT-HELLO\n", show);
      assert.match(serial, /VT-PORT-DEV: \/dev\/vport0p1/, show);
      // Host → guest.
      assert.match(serial, new RegExp(`VT-GOT: ${FROM_HOST}`), show);
      assert.match(serial, new RegExp(`VT-TYPED: ${TYPED}`), show);
      assert.ok(sent !== undefined && typed !== undefined, show);
      await Promise.all([sent, typed]);
      // Open/close of the named port, seen by the host.
      assert.deepEqual(agentEvents.slice(0, 4), ["open", "close", "open", "close"], show);
      // Resize.
      assert.match(serial, /VT-RESIZED: 40 132/, show);
      assert.deepEqual(errors, [], show);
      assert.equal(Object.values(dev.stats.dropped).reduce((a, b) => a + b, 0), 0, show);
    } finally {
      vm.close();
      dev.remove();
    }
  },
);
