// Integration: real Mesh nodes on TCP 127.0.0.1. A connection that breaks (aborted with an error,
// as a failed link or a partition is seen) is dialled again; one a peer closes on purpose is not.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { dhtProtocol } from '../../node/libp2p.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { waitFor } from '../helpers/process.ts'

describe('reconnecting broken links', () => {
  const nodes: MeshNode[] = []
  let a: MeshNode
  let graceful: MeshNode
  let broken: MeshNode

  before(async () => {
    // minPeers 0: the keeper's own top-up dials stay out of the way, so any redial is the reconnector's.
    const make = async (bootstrap: string[] = []): Promise<MeshNode> => {
      const node = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), gossip: false, minPeers: 0, bootstrap })
      nodes.push(node)
      await node.start()
      return node
    }
    graceful = await make()
    broken = await make()
    a = await make([graceful, broken].map(n => n.libp2p.getMultiaddrs()[0].toString()))
    await waitFor('A to identify both peers as DHT peers', async () => {
      const known = await Promise.all([graceful, broken].map(async n => a.libp2p.peerStore.get(n.peerId).catch(() => undefined)))
      return known.every(p => p?.protocols.includes(dhtProtocol(a.network)) === true)
    })
  })

  after(async () => { await Promise.all(nodes.map(async n => n.stop())) })

  it('dials a peer again after its link breaks, and leaves one that hung up alone', async () => {
    await graceful.libp2p.hangUp(a.peerId)
    for (const c of broken.libp2p.getConnections(a.peerId)) c.abort(new Error('link down'))
    const reconnected = (): number => a.reconnects!.stats().reconnected + broken.reconnects!.stats().reconnected
    await waitFor('the reconnector to bring the broken link back', () =>
      reconnected() >= 1 && a.libp2p.getConnections(broken.peerId).some(c => c.status === 'open'), 20_000)
    // Recorded as broken within milliseconds of the close; the reconnect took at least 0.5 s.
    assert.equal(a.reconnects!.stats().broken, 1, 'only the broken link was taken for a failure')
    assert.equal(graceful.reconnects!.stats().broken, 0)
    assert.equal(a.libp2p.getConnections(graceful.peerId).length, 0, 'the peer that hung up is not dialled again')
  })
})
