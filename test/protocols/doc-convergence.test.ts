// Six in-process nodes on loopback TCP edit one document at random, are split in two (cross
// connections hung up, re-dials refused), edit on both sides, heal, and must all end equal.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { createLibp2p } from 'libp2p'
import * as Y from 'yjs'
import { openDocStore } from '../../node/doc-store.ts'
import { libp2pOptions } from '../../node/libp2p.ts'
import { docSync } from '../../protocols/doc-sync.ts'
import { tempDirs, waitFor } from '../helpers/process.ts'
import type { DocStore } from '../../node/doc-store.ts'
import type { MeshServices } from '../../node/libp2p.ts'
import type { DocSync } from '../../protocols/doc-sync.ts'
import type { PeerId } from '@libp2p/interface'
import type { Libp2p } from 'libp2p'

const NETWORK = 'doc-convergence'
const DOC = 'shared'

interface SimNode { id: string, side: number, libp2p: Libp2p<MeshServices>, store: DocStore, sync: DocSync, doc: Y.Doc }

describe('document convergence under a partition', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const nodes: SimNode[] = []
  let split = false
  const sideOf = new Map<string, number>()
  const across = (self: string, peer: PeerId): boolean => {
    const other = sideOf.get(peer.toString())
    return split && other != null && other !== sideOf.get(self)
  }

  before(async () => { dirs = await tempDirs() })
  after(async () => {
    for (const n of nodes) {
      await n.sync.stop()
      await n.libp2p.stop()
      await n.store.close()
    }
    await dirs.cleanup()
  })

  function state (doc: Y.Doc): string {
    const sorted = (o: Record<string, unknown>): Array<[string, unknown]> => Object.entries(o).sort((x, y) => x[0] < y[0] ? -1 : 1)
    return JSON.stringify({
      sv: [...Y.decodeStateVector(Y.encodeStateVector(doc))].sort((x, y) => x[0] - y[0]),
      map: sorted(doc.getMap('m').toJSON()),
      text: doc.getText('t').toString(),
      items: doc.getArray('a').toArray()
    })
  }

  async function randomEdits (n: SimNode, count: number, tag: string): Promise<void> {
    for (let i = 0; i < count; i++) {
      await n.sync.transact(DOC, (doc) => {
        const op = Math.floor(Math.random() * 4)
        const text = doc.getText('t')
        const arr = doc.getArray('a')
        if (op === 0) doc.getMap('m').set(`k${Math.floor(Math.random() * 5)}`, `${tag}-${n.id.slice(-4)}-${i}`)
        else if (op === 1) text.insert(Math.floor(Math.random() * (text.length + 1)), `${tag}${i}`)
        else if (op === 2 && text.length > 2) text.delete(Math.floor(Math.random() * (text.length - 1)), 1)
        else arr.insert(Math.floor(Math.random() * (arr.length + 1)), [`${tag}-${i}`])
      })
    }
  }

  async function converged (group: SimNode[], what: string): Promise<void> {
    await waitFor(what, () => group.every(n => state(n.doc) === state(group[0].doc)), 60_000)
  }

  it('six nodes converge after concurrent edits, a partition with edits on both sides, and a heal', async () => {
    for (let i = 0; i < 6; i++) {
      const privateKey = await generateKeyPair('Ed25519')
      const id = peerIdFromPrivateKey(privateKey).toString()
      sideOf.set(id, i < 3 ? 0 : 1)
      const libp2p = await createLibp2p(libp2pOptions({
        privateKey,
        network: NETWORK,
        listen: ['/ip4/127.0.0.1/tcp/0'],
        connectionGater: {
          denyDialPeer: (peer) => across(id, peer),
          denyInboundEncryptedConnection: (peer) => across(id, peer),
          denyOutboundEncryptedConnection: (peer) => across(id, peer)
        }
      }))
      const store = await openDocStore(await dirs.make('doc-conv-'), { fsync: false })
      const sync = docSync({ libp2p, store }, { network: NETWORK, antiEntropyIntervalMs: 2_000 })
      await sync.start()
      nodes.push({ id, side: i < 3 ? 0 : 1, libp2p, store, sync, doc: await sync.open(DOC) })
    }
    const connectAll = async (): Promise<void> => {
      for (const x of nodes) {
        for (const y of nodes) {
          if (x.id < y.id && x.libp2p.getConnections(y.libp2p.peerId).length === 0) await x.libp2p.dial(y.libp2p.getMultiaddrs()[0])
        }
      }
    }
    await connectAll()

    await Promise.all(nodes.map(async n => randomEdits(n, 15, 'a')))
    await converged(nodes, 'all six to converge after concurrent edits')

    split = true
    for (const x of nodes) {
      for (const y of nodes) if (x.side !== y.side) await x.libp2p.hangUp(y.libp2p.peerId).catch(() => {})
    }
    await waitFor('no connection across the split', () => nodes.every(x => x.libp2p.getConnections().every(c => sideOf.get(c.remotePeer.toString()) === x.side)))
    await Promise.all(nodes.map(async n => randomEdits(n, 15, `s${n.side}`)))
    const left = nodes.filter(n => n.side === 0)
    const right = nodes.filter(n => n.side === 1)
    await converged(left, 'the left side to converge')
    await converged(right, 'the right side to converge')
    assert.notEqual(state(left[0].doc), state(right[0].doc), 'the sides diverged while split')
    await assert.rejects(left[0].libp2p.dial(right[0].libp2p.getMultiaddrs()[0]), 'a dial across the split is refused')

    split = false
    await connectAll()
    await converged(nodes, 'all six to converge after the heal')
    assert.equal(nodes[0].doc.getArray('a').length >= 15, true)
  })
})
