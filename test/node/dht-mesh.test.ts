// Integration: a 20-node Mesh in one process (real TCP on 127.0.0.1, real Noise, the Mesh libp2p
// options) where every node knows only the seed. Peer discovery must work by DHT lookups alone,
// and keep working once the seed is gone.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { dhtProtocol } from '../../node/libp2p.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { mapLimit } from '../../scripts/bench/lib/stats.ts'

const SIZE = 20
const LOOKUP_TIMEOUT = 10_000

/** Polls `check` until it holds; fails with `what` after `timeoutMs`. */
async function waitFor (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/** Every ordered pair of `nodes` looks the other up; returns the lookups that failed. */
async function lookUpAll (nodes: MeshNode[]): Promise<string[]> {
  const pairs = nodes.flatMap((from, i) => nodes.map((to, j) => [i, j] as const).filter(([, j]) => j !== i).map(([, j]) => [from, nodes[j], i, j] as const))
  const failures: string[] = []
  await mapLimit(pairs, 4, async ([from, to, i, j]) => {
    try {
      const found = await from.findPeer(to.peerId, { signal: AbortSignal.timeout(LOOKUP_TIMEOUT) })
      assert.equal(found.peerId, to.peerId.toString())
      const listening = to.libp2p.getMultiaddrs().map(ma => ma.decapsulateCode(421).toString())
      assert.ok(found.addresses.some(a => listening.includes(a.replace(/\/p2p\/[^/]+$/, ''))), `node ${i} got addresses of node ${j}`)
    } catch (err: any) {
      failures.push(`node ${i} -> node ${j}: ${err.message}`)
    }
  })
  return failures
}

describe(`a ${SIZE}-node DHT mesh bootstrapped from one seed`, () => {
  let seed: MeshNode
  let others: MeshNode[] = []

  before(async () => {
    seed = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), gossip: false })
    await seed.start()
    const bootstrap = [seed.libp2p.getMultiaddrs()[0].toString()]
    others = await Promise.all(Array.from({ length: SIZE - 1 }, async () =>
      new MeshNode({ privateKey: await generateKeyPair('Ed25519'), gossip: false, bootstrap })))
    await Promise.all(others.map(async node => node.start()))
    // Joined: every node has identified the seed as a DHT peer, so the seed is in its routing table.
    await waitFor('every node to identify the seed', async () => {
      const seen = await Promise.all(others.map(async node => {
        const peer = await node.libp2p.peerStore.get(seed.peerId).catch(() => undefined)
        return peer?.protocols.includes(dhtProtocol(node.network)) === true
      }))
      return seen.every(Boolean)
    })
  })

  after(async () => {
    await Promise.all([seed, ...others].map(async node => node?.stop()))
  })

  it('every node finds every other node by a DHT lookup', async () => {
    const failures = await lookUpAll([seed, ...others])
    assert.deepEqual(failures, [], `${failures.length} of ${SIZE * (SIZE - 1)} lookups failed`)
  })

  it('after the seed stops, the remaining nodes still find each other', async () => {
    await seed.stop()
    await waitFor('every node to notice the seed is gone', () =>
      others.every(node => node.libp2p.getConnections(seed.peerId).length === 0))
    const failures = await lookUpAll(others)
    assert.deepEqual(failures, [], `${failures.length} of ${(SIZE - 1) * (SIZE - 2)} lookups failed`)
  })
})
