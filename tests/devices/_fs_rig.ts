// A virtio-fs device activated on queues laid out by the driver harness, in guest memory
// that is a real mapping (so reads and writes take the vectored preadv/pwritev path), with
// a FUSE session on top. Every test gets a fresh host directory holding `share/` (what the
// device serves) and `outside/` (what it must never reach).

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory, GuestRegion } from "../../memory/guest_memory.ts";
import { SplitQueue } from "../../queue/split.ts";
import { DriverQueue } from "../../testing/queue_driver.ts";
import { DeviceQueueTransport, FuseSession } from "../../testing/fuse_client.ts";
import {
  featureBit,
  VIRTIO_F_VERSION_1,
  VirtioDeviceConfig,
  type VirtioError,
  VirtioQueueConfig,
} from "../../devices/device.ts";
import { FsDevice, type FsDeviceOptions } from "../../devices/fs.ts";
import { type Mapping, mmapAnonymous } from "../../sys/mod.ts";

export const MiB = 1 << 20;

/** What a test gets. */
export interface FsRig {
  dir: string;
  share: string;
  outside: string;
  device: FsDevice;
  memory: GuestMemory;
  drivers: DriverQueue[];
  session: FuseSession;
  errors: VirtioError[];
  notified: number[];
  /** Stop the device and release its descriptors and memory (the directory stays). */
  stop(): void;
  /** Stop, then remove the directory. */
  close(): void;
}

const QUEUE_SIZE = 128;
const REGION = 4 * MiB;

/** Build a rig: `options` for the device (its `sharedDir` defaults to the rig's share). */
export function fsRig(
  options: Partial<FsDeviceOptions> = {},
  setup?: (share: string, outside: string) => void,
  beforeActivate?: (device: FsDevice) => GuestRegion[] | void,
): FsRig {
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-fs-"));
  const share = join(dir, "share");
  const outside = join(dir, "outside");
  mkdirSync(share);
  mkdirSync(outside);
  writeFileSync(join(outside, "secret"), "outside secret\n");
  setup?.(share, outside);
  const errors: VirtioError[] = [];
  const device = new FsDevice({
    sharedDir: share,
    tag: "rig",
    onError: (e) => errors.push(e),
    ...options,
  });
  const queues = 1 + device.numRequestQueues;
  const mapping: Mapping = mmapAnonymous(REGION * (queues + 1));
  const extra = beforeActivate?.(device) ?? [];
  const memory = new GuestMemory([
    new GuestRegion({ base: 0, buffer: mapping.buffer }),
    ...extra,
  ]);
  const drivers: DriverQueue[] = [];
  const qcs: VirtioQueueConfig[] = [];
  const notified: number[] = new Array(queues).fill(0);
  for (let i = 0; i < queues; i++) {
    const base = REGION * (i + 1);
    const driver = new DriverQueue(memory, {
      size: QUEUE_SIZE,
      ringBase: base,
      bufferBase: base + 0x10000,
      bufferEnd: base + REGION,
    });
    const q = new SplitQueue(QUEUE_SIZE);
    driver.program(q);
    drivers.push(driver);
    qcs.push(new VirtioQueueConfig(i, q, { notify: () => notified[i]++ }));
  }
  device.setAckedFeatures(1, Number(featureBit(VIRTIO_F_VERSION_1) >> 32n));
  device.activate(
    new VirtioDeviceConfig({
      memory,
      queues: qcs,
      deviceChangeNotifier: { notify() {} },
      ackedFeatures: device.ackedFeatures(),
    }),
  );
  const session = new FuseSession(new DeviceQueueTransport(device, drivers));
  return {
    dir,
    share,
    outside,
    device,
    memory,
    drivers,
    session,
    errors,
    notified,
    stop() {
      if (!mapping.mapped) return;
      device.reset();
      device.remove();
      mapping.unmap();
    },
    close() {
      this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
