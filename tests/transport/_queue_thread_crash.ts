// A queue-thread handler module whose Worker dies: an uncaught error is thrown on the Worker's
// event loop while the module loads (tests/transport/queue_thread_test.ts).

import type { QueueHandler } from "../../devices/queue_thread.ts";

setTimeout(() => {
  throw new Error("queue thread test crash");
}, 0);
await new Promise((resolve) => setTimeout(resolve, 200));

/**
 * Never reached in practice: the Worker dies first.
 * @returns A handler completing every chain empty.
 */
export function createQueueHandler(): QueueHandler {
  return { handle: () => 0 };
}
