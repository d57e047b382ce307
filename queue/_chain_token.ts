/**
 * The queue layer's private proof that a descriptor chain was validated: only modules of
 * queue/ import it, and `DescriptorChain` refuses to be built without it.
 *
 * @module
 */

/** Passed by `pop()` to the `DescriptorChain` constructor. */
export const CHAIN_TOKEN: symbol = Symbol("virtio-ts validated descriptor chain");
