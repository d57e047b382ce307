// The seed's notifier factories backed by an eventfd (a vhost-user call fd, a KVM irqfd).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventFd } from "../../sys/mod.ts";
import {
  createDeviceNotifier,
  createQueueNotifier,
  InterruptStatus,
  VIRTIO_INTR_CONFIG,
  VIRTIO_INTR_VRING,
} from "../../devices/device.ts";

describe("eventfd-backed interrupt notifiers", () => {
  it("createQueueNotifier(eventfd) signals the eventfd and sets the VRING bit", () => {
    const efd = new EventFd();
    try {
      const status = new InterruptStatus();
      const n = createQueueNotifier(efd, status);
      n.notify();
      n.notify();
      assert.equal(efd.read(), 2n);
      assert.equal(status.value, VIRTIO_INTR_VRING);
      assert.equal(efd.read(), 0n);
    } finally {
      efd.close();
    }
  });

  it("createDeviceNotifier(eventfd) wakes a waiter and sets the CONFIG bit", async () => {
    const efd = new EventFd();
    try {
      const status = new InterruptStatus();
      const waiting = efd.wait();
      setTimeout(() => createDeviceNotifier(efd, status).notify(), 10);
      assert.equal(await waiting, 1n);
      assert.equal(status.value, VIRTIO_INTR_CONFIG);
    } finally {
      efd.close();
    }
  });
});
