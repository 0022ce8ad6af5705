// Two started Mesh nodes on @libp2p/memory, A bootstrapped to B, for protocol tests.
import { generateKeyPair } from '@libp2p/crypto/keys'
import { memory } from '@libp2p/memory'
import { MeshNode } from '../../node/mesh-node.ts'

/** `latencyMs`: the memory transport delays each direction of a connection by the listener's latency. */
export async function memoryPair (latencyMs: number): Promise<{ a: MeshNode, b: MeshNode }> {
  const tag = Math.random().toString(36).slice(2)
  const make = async (name: string, bootstrap: string[] = []): Promise<MeshNode> => {
    const node = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), listen: [`/memory/${tag}-${name}`], bootstrap, transports: [memory({ latency: latencyMs })], gossip: false })
    await node.start()
    return node
  }
  const b = await make('b')
  const a = await make('a', [`/memory/${tag}-b`])
  return { a, b }
}
