// A feature is a capability that runs inside a MeshNode (documents, descriptors, functions…), as
// a js-libp2p service runs inside libp2p: a factory gets the node and returns a small object the
// node starts after libp2p and Helia, and stops before them, in reverse order.
import type { MeshNode } from './mesh-node.ts'

export interface Feature {
  start?: () => Promise<void>
  stop?: () => Promise<void>
  /**
   * Stream protocols only members may use. Asked once, before the node starts, so the
   * membership gate covers them from the first connection.
   */
  gatedProtocols?: () => string[]
}

export interface FeatureInit {
  /** The node's repo; absent for in-memory nodes (simulations), which keep everything in memory. */
  repoPath?: string
  /** The repo's config, for per-node settings. */
  config?: Record<string, unknown>
}

/**
 * Called when the node is built, before it starts: keep to setting up. `node.libp2p` and
 * `node.helia` services exist only from `start()` on (Helia creates libp2p as it starts).
 */
export type FeatureFactory = (node: MeshNode, init: FeatureInit) => Feature

/** Features by name, in start order. */
export type FeatureList = Array<[name: string, factory: FeatureFactory]>
