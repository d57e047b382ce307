/**
 * The register-file cases of the conformance suite: virtio-mmio abuse (virtio 1.2 §4.2,
 * §3.1.1). Private to `testing/`.
 *
 * @module
 */

import { MMIO_CONFIG_OFFSET, MMIO_WINDOW_SIZE, MmioTransport } from "../transport/mmio.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FAILED,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  VIRTIO_F_VERSION_1,
} from "../devices/device.ts";
import { DriverQueue } from "./queue_driver.ts";
import type { Rig } from "./_conformance_harness.ts";
import { ALL, R } from "./_conformance_chains.ts";

/** A register-file case. */
export interface MmioCase {
  name: string;
  run(rig: Rig): void | Promise<void>;
}

/** Negotiate up to FEATURES_OK by hand. */
function negotiate(rig: Rig, features?: bigint): void {
  rig.w(R.Status, 0);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
  rig.driver.writeDriverFeatures(features ?? (rig.driver.deviceFeatures() & ALL));
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
}

/** Set queue 0 up with given raw values and go to DRIVER_OK; the device must not serve it. */
function badQueue(rig: Rig, num: number, desc: [number, number], avail: [number, number], used: [
  number,
  number,
]): void {
  negotiate(rig);
  for (let i = 0; i < rig.queueCount; i++) {
    const good = new DriverQueue(rig.memory, {
      size: Math.min(64, rig.transport.queues[i].maxSize),
      ringBase: 0x10000 + 0x10000 * i,
    });
    rig.w(R.QueueSel, i);
    rig.w(R.QueueNum, i === 0 ? num : good.size);
    rig.w(R.QueueDescLow, i === 0 ? desc[0] : good.descTable);
    rig.w(R.QueueDescHigh, i === 0 ? desc[1] : 0);
    rig.w(R.QueueDriverLow, i === 0 ? avail[0] : good.availRing);
    rig.w(R.QueueDriverHigh, i === 0 ? avail[1] : 0);
    rig.w(R.QueueDeviceLow, i === 0 ? used[0] : good.usedRing);
    rig.w(R.QueueDeviceHigh, i === 0 ? used[1] : 0);
    rig.w(R.QueueReady, 1);
  }
  // Nothing may be written anywhere from here: the set-up is not a valid one.
  rig.arm();
  rig.watch.arm();
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK);
  rig.instrument();
  for (let i = 0; i < rig.queueCount; i++) rig.kick(i);
  const s = rig.r(R.Status);
  if ((s & DEVICE_DRIVER_OK) !== 0 && (s & DEVICE_NEEDS_RESET) === 0 && rig.transport.isActive) {
    rig.failures.push(
      `queue 0 set up with size ${num} and rings at 0x${desc[1].toString(16)}_${
        desc[0].toString(16)
      }/0x${avail[0].toString(16)}/0x${used[0].toString(16)} was accepted: the device is live`,
    );
  }
}

/** The register-file cases, run once per device. */
export const MMIO: MmioCase[] = [
  {
    name: "status: DRIVER_OK before anything else",
    run(rig) {
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_DRIVER_OK);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER_OK);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_DRIVER_OK);
      if (rig.transport.isActive) rig.failures.push("the device activated without FEATURES_OK");
    },
  },
  {
    name: "status: bits cleared, FAILED, NEEDS_RESET written by the driver, all ones",
    run(rig) {
      negotiate(rig);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_NEEDS_RESET | DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      rig.w(R.Status, 0xff);
      rig.w(R.Status, DEVICE_FAILED);
      rig.w(
        R.Status,
        DEVICE_FAILED | DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK |
          DEVICE_DRIVER_OK,
      );
      rig.w(R.Status, 0xffffffff);
      rig.w(R.Status, 0x100 | DEVICE_ACKNOWLEDGE);
      rig.r(R.Status);
    },
  },
  {
    name: "status: FEATURES_OK with features the device never offered",
    run(rig) {
      // virtio 1.2 §2.2.2: the device must not accept them: FEATURES_OK reads back clear.
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      const offered = rig.driver.deviceFeatures();
      rig.driver.writeDriverFeatures(0xffff_ffff_ffff_ffffn);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
      if (offered !== 0xffff_ffff_ffff_ffffn && (rig.r(R.Status) & DEVICE_FEATURES_OK) !== 0) {
        rig.failures.push(
          "FEATURES_OK was accepted with every feature bit set (virtio 1.2 §2.2.2)",
        );
      }
      // Bits in pages past 1.
      negotiate(rig, featureBit(VIRTIO_F_VERSION_1));
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      rig.driver.writeDriverFeatures(offered & ALL);
      rig.w(R.DriverFeaturesSel, 7);
      rig.w(R.DriverFeatures, 1);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
      if ((rig.r(R.Status) & DEVICE_FEATURES_OK) !== 0) {
        rig.failures.push("FEATURES_OK was accepted with a feature bit in page 7");
      }
      // Without VERSION_1 on a modern device.
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      rig.driver.writeDriverFeatures(offered & ALL & ~featureBit(VIRTIO_F_VERSION_1));
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
      if ((rig.r(R.Status) & DEVICE_FEATURES_OK) !== 0) {
        rig.failures.push("FEATURES_OK was accepted without VIRTIO_F_VERSION_1 on a modern device");
      }
    },
  },
  {
    name: "features written after FEATURES_OK and after DRIVER_OK",
    run(rig) {
      rig.init();
      const before = rig.transport.core.driverFeatures;
      const acked = rig.device.ackedFeatures();
      rig.driver.writeDriverFeatures(0xffff_ffff_ffff_ffffn);
      rig.w(R.DeviceFeaturesSel, 0xffffffff);
      rig.r(R.DeviceFeatures);
      if (rig.transport.core.driverFeatures !== before || rig.device.ackedFeatures() !== acked) {
        rig.failures.push("features written after DRIVER_OK were taken");
      }
    },
  },
  {
    name: "queue size 0",
    run(rig) {
      badQueue(rig, 0, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
    },
  },
  {
    name: "queue size not a power of two",
    run(rig) {
      badQueue(rig, 3, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
    },
  },
  {
    name: "queue size above the maximum",
    run(rig) {
      const max = rig.transport.queues[0].maxSize;
      badQueue(rig, max * 2, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 0xffffffff, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
    },
  },
  {
    name: "rings outside guest memory",
    run(rig) {
      const end = rig.memorySize;
      badQueue(rig, 16, [end, 0], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [end - 2, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11000, 0], [end - 8, 0]);
      badQueue(rig, 16, [0x10000, 0xffffffff], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0xfffffff0, 0xffffffff], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11000, 0x200000], [0x12000, 0]);
    },
  },
  {
    name: "misaligned rings",
    run(rig) {
      badQueue(rig, 16, [0x10008, 0], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11001, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11000, 0], [0x12002, 0]);
    },
  },
  {
    name: "queue registers of queues that do not exist",
    run(rig) {
      negotiate(rig);
      for (const sel of [rig.queueCount, 0xffff, 0xffffffff]) {
        rig.w(R.QueueSel, sel);
        rig.r(R.QueueNumMax);
        rig.w(R.QueueNum, 16);
        rig.w(R.QueueDescLow, 0x10000);
        rig.w(R.QueueDescHigh, 0);
        rig.w(R.QueueDriverLow, 0x11000);
        rig.w(R.QueueDeviceLow, 0x12000);
        rig.w(R.QueueReady, 1);
        rig.r(R.QueueReady);
        rig.w(R.QueueReset, 1);
      }
      if (rig.r(R.QueueNumMax) !== 0) rig.failures.push("QueueNumMax of a missing queue is not 0");
    },
  },
  {
    name: "queue set-up after DRIVER_OK",
    run(rig) {
      rig.init();
      rig.arm();
      rig.w(R.QueueSel, 0);
      rig.w(R.QueueReady, 0);
      rig.w(R.QueueNum, 2);
      rig.w(R.QueueDescLow, rig.memorySize - 16);
      rig.w(R.QueueDriverLow, 0);
      rig.w(R.QueueDeviceLow, 0);
      rig.w(R.QueueReady, 1);
      rig.kick(0);
      const q = rig.transport.queues[0];
      if (q.descTable === rig.memorySize - 16 && q.ready) {
        rig.failures.push("a live queue was moved by register writes after DRIVER_OK");
      }
    },
  },
  {
    name: "notifications of queues that do not exist",
    run(rig) {
      rig.init();
      rig.arm();
      for (const v of [rig.queueCount, 0xffff, 0x7fffffff, 0xffffffff, 0x10000]) {
        rig.meter.cut();
        rig.w(R.QueueNotify, v);
      }
    },
  },
  {
    name: "notifications before DRIVER_OK and after reset",
    run(rig) {
      negotiate(rig);
      rig.arm();
      for (let i = 0; i < rig.queueCount; i++) rig.w(R.QueueNotify, i);
      rig.w(R.Status, 0);
      for (let i = 0; i < rig.queueCount; i++) rig.w(R.QueueNotify, i);
    },
  },
  {
    name: "configuration space out of range",
    run(rig) {
      rig.init();
      for (const off of [0, 1, 3, 0x7f, 0x100, 0xefc, 0xeff, 0xf00, 0x1000, 0xffffff]) {
        for (const width of [1, 2, 4, 8, 3, 0, 16]) {
          const buf = new Uint8Array(width).fill(0xa5);
          rig.call(
            `reading ${width} config bytes at ${off}`,
            () => rig.transport.read(MMIO_CONFIG_OFFSET + off, buf),
          );
          rig.call(
            `writing ${width} config bytes at ${off}`,
            () => rig.transport.write(MMIO_CONFIG_OFFSET + off, buf),
          );
        }
      }
      for (const off of [-4, -1, MMIO_WINDOW_SIZE, 2 ** 32, Number.MAX_SAFE_INTEGER, NaN]) {
        rig.call(
          `reading at window offset ${off}`,
          () => rig.transport.read(off, new Uint8Array(4)),
        );
        rig.call(
          `writing at window offset ${off}`,
          () => rig.transport.write(off, new Uint8Array(4)),
        );
      }
    },
  },
  {
    name: "control registers: bad widths, unaligned, read-only and write-only",
    run(rig) {
      rig.init();
      for (let off = 0; off < MMIO_CONFIG_OFFSET; off += 1) {
        for (const width of [1, 2, 8]) {
          const buf = new Uint8Array(width).fill(0xff);
          rig.call(
            `a ${width}-byte read at 0x${off.toString(16)}`,
            () => rig.transport.read(off, buf),
          );
          if (off === R.Status || off === R.QueueNotify) continue;
          rig.call(
            `a ${width}-byte write at 0x${off.toString(16)}`,
            () => rig.transport.write(off, buf),
          );
        }
      }
      for (
        const off of [
          R.MagicValue,
          R.Version,
          R.DeviceId,
          R.VendorId,
          R.QueueNumMax,
          R.InterruptStatus,
          R.ConfigGeneration,
          R.DeviceFeatures,
        ]
      ) {
        rig.w(off, 0xffffffff);
      }
      for (const off of [R.DriverFeatures, R.QueueNotify, R.InterruptAck, R.QueueDescLow]) {
        rig.r(off);
      }
      rig.w(R.InterruptAck, 0xffffffff);
      rig.w(R.ShmSel, 0xffffffff);
      rig.r(R.ShmLenLow);
      rig.r(R.ShmBaseHigh);
      rig.w(R.GuestPageSize, 3);
      rig.w(R.QueueAlign, 0);
      rig.w(R.QueuePfn, 0xffffffff);
    },
  },
  {
    name: "random register storm",
    run(rig) {
      let x = 0x9e3779b9;
      const next = () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return x >>> 0;
      };
      const regs = Object.values(R);
      rig.init();
      rig.arm();
      rig.watch.allow(0, rig.memorySize); // a storm may set any ring up: only crashes count
      for (let i = 0; i < 4000; i++) {
        const off = next() % 4 === 0 ? next() % 0x200 : regs[next() % regs.length];
        const v = next() % 3 === 0 ? next() : next() % 4 === 0 ? 0xffffffff : next() % 256;
        rig.meter.cut();
        if (next() % 2 === 0) rig.w(off, v);
        else rig.r(off);
      }
    },
  },
  {
    name: "legacy (version 1) layout with bad page numbers",
    run(rig) {
      // A legacy register file on the same device: PFNs past memory, bad alignment.
      const t = new MmioTransport(rig.device, rig.devMemory, { version: 1 });
      const call = (what: string, fn: () => void) => rig.call(what, fn);
      call("legacy set-up", () => {
        t.writeU32(R.Status, 0);
        t.writeU32(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
        t.writeU32(R.GuestPageSize, 4096);
        for (let i = 0; i < t.queues.length; i++) {
          t.writeU32(R.QueueSel, i);
          t.writeU32(R.QueueNum, 16);
          t.writeU32(R.QueueAlign, 4096);
          t.writeU32(R.QueuePfn, i === 0 ? 0xffffffff : 0x10 + i);
        }
        t.writeU32(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_DRIVER_OK);
        for (let i = 0; i < t.queues.length; i++) t.writeU32(R.QueueNotify, i);
        t.writeU32(R.Status, 0);
        t.writeU32(R.GuestPageSize, 0);
        t.writeU32(R.QueueAlign, 3);
      });
      if (t.isActive && (t.status & DEVICE_NEEDS_RESET) === 0) {
        rig.failures.push("a legacy queue at PFN 0xffffffff was accepted");
      }
    },
  },
];
