// Integration: a 20-node Mesh in one process (real TCP on 127.0.0.1, real Noise, the Mesh libp2p
// options) where every node knows only the seed. Peer discovery must work by DHT lookups alone,
// and keep working once the seed is gone.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { dhtProtocol } from '../../node/libp2p.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { mapLimit } from '../../scripts/bench/lib/stats.ts'
import type { PeerId } from '@libp2p/interface'

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

/** A lookup's answer names `to`, with one of the addresses it listens on. */
function assertFound (found: { peerId: string, addresses: string[] }, to: MeshNode, what: string): void {
  assert.equal(found.peerId, to.peerId.toString())
  const listening = to.libp2p.getMultiaddrs().map(ma => ma.decapsulateCode(421).toString())
  assert.ok(found.addresses.some(a => listening.includes(a.replace(/\/p2p\/[^/]+$/, ''))), what)
}

/** Every ordered pair of `nodes` looks the other up; returns the lookups that failed. */
async function lookUpAll (nodes: MeshNode[]): Promise<string[]> {
  const pairs = nodes.flatMap((from, i) => nodes.map((to, j) => [i, j] as const).filter(([, j]) => j !== i).map(([, j]) => [from, nodes[j], i, j] as const))
  const failures: string[] = []
  await mapLimit(pairs, 4, async ([from, to, i, j]) => {
    try {
      assertFound(await from.findPeer(to.peerId, { signal: AbortSignal.timeout(LOOKUP_TIMEOUT) }), to, `node ${i} got addresses of node ${j}`)
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

// A DHT query asks the routing-table peers nearest the target and stops when their answers name no
// one nearer. Here the only peer in Q's table (N1) never heard of T, while Q's other neighbour (N2,
// connected but not in the table) knows T: the query alone fails, and the lookup must still find T
// by asking the neighbours the query did not ask.
describe('a lookup whose DHT query ends without the target', () => {
  const nodes: MeshNode[] = []
  after(async () => { await Promise.all(nodes.map(async node => node.stop())) })
  const table = (node: MeshNode): any => (node.libp2p.services.dht as any).routingTable

  /** Q connected to N1 and N2, N2 connected to T; resolves once the tables named by `ready` hold them. */
  async function fourNodes (ready: (n: { q: MeshNode, n1: MeshNode, n2: MeshNode, t: MeshNode }) => Promise<boolean>): Promise<{ q: MeshNode, n1: MeshNode, n2: MeshNode, t: MeshNode }> {
    const [q, n1, n2, t] = await Promise.all(Array.from({ length: 4 }, async () => new MeshNode({ privateKey: await generateKeyPair('Ed25519'), gossip: false, minPeers: 0 })))
    nodes.push(q, n1, n2, t)
    for (const node of [q, n1, n2, t]) await node.start()
    await q.connect(n1.libp2p.getMultiaddrs()[0].toString())
    await q.connect(n2.libp2p.getMultiaddrs()[0].toString())
    await n2.connect(t.libp2p.getMultiaddrs()[0].toString())
    await waitFor('the routing tables to take their peers', async () => ready({ q, n1, n2, t }))
    return { q, n1, n2, t }
  }

  /** `node` drops `peers` from its routing table, its connections and, unless kept, its peer store. */
  async function forget (node: MeshNode, peers: PeerId[], keepAddresses = false): Promise<void> {
    for (const peer of peers) {
      await table(node).remove(peer)
      await node.libp2p.hangUp(peer)
      if (!keepAddresses) await node.libp2p.peerStore.delete(peer)
    }
  }

  it('asks the neighbours the query did not ask, and finds the target through them', async () => {
    const { q, n1, n2, t } = await fourNodes(async ({ q, n1, n2, t }) =>
      (await table(q).find(n1.peerId)) != null && (await table(q).find(n2.peerId)) != null && (await table(n2).find(t.peerId)) != null)
    await table(q).remove(n2.peerId)
    // Q's table stays as it is now: an identify push from N2 would otherwise put N2 back before the
    // query starts, and the query alone would find T (seen in CI).
    table(q).add = async () => {}
    // Q's own queries may have asked N2 already and heard of T (and dialled it): forget T too.
    await forget(q, [t.peerId])
    // N1 may have heard of N2 (and T) from Q's answers to its own queries; then the query would go on.
    await forget(n1, [n2.peerId, t.peerId])
    assert.equal(await n1.libp2p.peerStore.has(t.peerId), false, 'N1 must not know T')
    assert.equal(await n1.libp2p.peerStore.has(n2.peerId), false, 'N1 must not know N2')
    assert.equal(await q.libp2p.peerStore.has(t.peerId), false, 'Q must not know T')
    assert.deepEqual([...table(q).kb.toIterable()].map((c: any) => c.peerId.toString()), [n1.peerId.toString()], 'Q\'s table holds N1 alone')

    const found = await q.findPeer(t.peerId, { signal: AbortSignal.timeout(LOOKUP_TIMEOUT) })
    assertFound(found, t, 'T\'s listen address was found')
    assert.ok(found.queried >= 2, `both N1 (the query) and N2 (the second pass) were asked, got ${found.queried}`)
  })

  it('with every neighbour asked, dials peers it knows by address and asks them', async () => {
    const { q, n1, n2, t } = await fourNodes(async ({ q, n1, n2, t }) =>
      (await table(q).find(n1.peerId)) != null && (await table(n2).find(t.peerId)) != null)
    // Q keeps N2's address but neither its connection nor its table entry: only N1 is left to ask.
    table(q).add = async () => {}
    await forget(q, [n2.peerId], true)
    await forget(q, [t.peerId])
    await forget(n1, [n2.peerId, t.peerId])
    assert.equal(await n1.libp2p.peerStore.has(t.peerId), false, 'N1 must not know T')
    assert.equal(await q.libp2p.peerStore.has(t.peerId), false, 'Q must not know T')
    assert.ok(((await q.libp2p.peerStore.get(n2.peerId)).addresses.length) > 0, 'Q knows N2\'s address')
    assert.deepEqual(q.libp2p.getConnections().map(c => c.remotePeer.toString()), [n1.peerId.toString()], 'Q is connected to N1 alone')

    const found = await q.findPeer(t.peerId, { signal: AbortSignal.timeout(LOOKUP_TIMEOUT) })
    assertFound(found, t, 'T\'s listen address was found through N2')
    assert.ok(found.queried >= 2, `N1 (the query) and N2 (dialled by the second pass) were asked, got ${found.queried}`)
  })

  it('asks the peers its neighbours named, when no neighbour knows the target', async () => {
    // Q's table holds F alone, whose table is empty, so the query fails; Q's other neighbour N1
    // does not know T either, but names N2, who does.
    const { q, n1, n2, t } = await fourNodes(async ({ q, n1, n2, t }) =>
      (await table(q).find(n1.peerId)) != null && (await table(n2).find(t.peerId)) != null)
    await n1.connect(n2.libp2p.getMultiaddrs()[0].toString())
    await waitFor('N2 in N1\'s table', async () => (await table(n1).find(n2.peerId)) != null)
    const f = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), gossip: false, minPeers: 0 })
    nodes.push(f)
    await f.start()
    table(f).add = async () => {}
    const addToQ = table(q).add.bind(table(q))
    table(q).add = async () => {}
    table(n1).add = async () => {}
    await f.connect(q.libp2p.getMultiaddrs()[0].toString())
    await table(q).remove(n1.peerId)
    await addToQ(f.peerId)
    await forget(q, [n2.peerId, t.peerId])
    await forget(n1, [t.peerId])
    await forget(f, [t.peerId])
    assert.equal(await q.libp2p.peerStore.has(n2.peerId), false, 'Q must not know N2')
    assert.equal(await q.libp2p.peerStore.has(t.peerId), false, 'Q must not know T')
    assert.equal(await n1.libp2p.peerStore.has(t.peerId), false, 'N1 must not know T')
    assert.equal(await f.libp2p.peerStore.has(t.peerId), false, 'F must not know T')
    assert.equal(table(f).size, 0, 'F\'s table is empty')
    assert.deepEqual([...table(q).kb.toIterable()].map((c: any) => c.peerId.toString()), [f.peerId.toString()], 'Q\'s table holds F alone')

    const found = await q.findPeer(t.peerId, { signal: AbortSignal.timeout(LOOKUP_TIMEOUT) })
    assertFound(found, t, 'T\'s listen address was found through N2, whom N1 named')
    assert.ok(found.queried >= 3, `F (the query), N1 (its neighbour) and N2 (named by N1) were asked, got ${found.queried}`)
  })
})
