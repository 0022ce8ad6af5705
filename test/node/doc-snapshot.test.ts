// Cold start from IPFS: a compacted document's snapshot is in Helia, and a node that never had
// the document fetches it by CID over bitswap, then syncs only what came after it.
// Two in-process Mesh nodes (real TCP on 127.0.0.1, Noise, Helia, bitswap) running the docs feature.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import * as encoding from 'lib0/encoding'
import { CID } from 'multiformats/cid'
import * as Y from 'yjs'
import { DATA_MAP, documents, documentsOf } from '../../node/documents.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { tempDirs, waitFor } from '../helpers/process.ts'

describe('document cold start from an IPFS snapshot', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const nodes: MeshNode[] = []

  async function startNode (bootstrap: string[] = []): Promise<MeshNode> {
    const dir = await dirs.make('doc-snap-')
    const node = new MeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      network: 'doc-snapshot',
      bootstrap,
      storePath: { blocks: join(dir, 'blocks'), datastore: join(dir, 'datastore') },
      repoPath: dir,
      features: [['docs', documents]]
    })
    nodes.push(node)
    await node.start()
    return node
  }

  before(async () => { dirs = await tempDirs() })
  after(async () => {
    for (const n of nodes) await n.stop()
    await dirs.cleanup()
  })

  it('a new replica loads the snapshot by CID and receives only the difference', async () => {
    const a = await startNode()
    const docsA = documentsOf(a)
    const doc = await docsA.open('big')
    // ~400 KB of history, compacted: the snapshot goes into A's blockstore (more than one chunk).
    for (let i = 0; i < 40; i++) {
      await docsA.sync.transact('big', d => { d.getText('t').insert(0, `${i}:`.padEnd(10_000, String.fromCharCode(97 + i % 26))) })
    }
    await docsA.store.compact('big', doc)
    await waitFor('A to offer the snapshot', () => docsA.sync.snapshotOf('big') != null)
    const ref = docsA.sync.snapshotOf('big')!
    assert.ok(ref.bytes > 300_000, `snapshot of ${ref.bytes} bytes`)
    // What came after the snapshot: the difference a new replica must get over the stream.
    for (let i = 0; i < 5; i++) await docsA.set('big', `after${i}`, i)
    const full = Y.encodeStateAsUpdate(doc).length

    const b = await startNode(a.libp2p.getMultiaddrs().map(String))
    await waitFor('B connected to A', () => b.libp2p.getConnections(a.peerId).length > 0)
    const docsB = documentsOf(b)
    const replica = await docsB.open('big')
    await waitFor('B to hold A\'s whole document', () =>
      replica.getText('t').length === doc.getText('t').length && replica.getMap(DATA_MAP).get('after4') === 4)
    assert.equal(replica.getText('t').toString(), doc.getText('t').toString())

    const stats = docsB.sync.stats
    assert.ok(stats.snapshot.fetched >= 1, 'B fetched the snapshot')
    assert.equal(stats.snapshot.bytesFetched, ref.bytes * stats.snapshot.fetched)
    assert.equal(stats.snapshot.fetchFailed, 0)
    assert.ok(await b.helia.blockstore.has(CID.parse(ref.cid)), 'the snapshot root is in B\'s blockstore')
    assert.ok(docsA.sync.stats.snapshot.offered >= 1, 'A offered it')
    // Everything B received as sync step 2 / updates: the difference, far smaller than the state.
    assert.ok(stats.sync.updateBytesReceived < full / 20,
      `step 2 bytes ${stats.sync.updateBytesReceived} against a full state of ${full}`)
  })

  it('a replica that already has the snapshot\'s content is not offered it again', async () => {
    const [a, b] = nodes
    const docsA = documentsOf(a)
    const offered = docsA.sync.stats.snapshot.offered
    const fetched = documentsOf(b).sync.stats.snapshot.fetched
    await docsA.set('big', 'later', true)
    await waitFor('B to see the later write', async () => (await documentsOf(b).open('big')).getMap(DATA_MAP).get('later') === true)
    await documentsOf(b).sync.syncWith(a.peerId, ['big'])
    assert.equal(docsA.sync.stats.snapshot.offered, offered)
    assert.equal(documentsOf(b).sync.stats.snapshot.fetched, fetched)
  })

  it('bad snapshot offers are dropped and counted; the document is untouched', async () => {
    const [a, b] = nodes
    const sync = documentsOf(a).sync
    const doc = await sync.open('big')
    const before = Y.encodeStateAsUpdate(doc)
    const dropped = (reason: string): number => sync.stats.dropped[reason] ?? 0
    const bytes = (write: (e: encoding.Encoder) => void): Uint8Array => {
      const e = encoding.createEncoder()
      write(e)
      return encoding.toUint8Array(e)
    }
    const frame = (body: Uint8Array): Uint8Array => bytes(e => encoding.writeVarUint8Array(e, body))
    const header = (flags: number): Uint8Array => frame(bytes(e => { encoding.writeVarUint(e, 1); encoding.writeVarUint(e, 0); encoding.writeVarUint(e, flags) }))
    const offer = (cid: string, size: number): Uint8Array => frame(bytes(e => {
      encoding.writeVarString(e, 'big')
      encoding.writeVarUint(e, 0)
      encoding.writeVarUint(e, 3)
      encoding.writeVarUint8Array(e, bytes(p => {
        encoding.writeVarString(p, cid)
        encoding.writeVarUint(p, size)
        const sv = new Y.Doc()
        sv.clientID = 999
        sv.getMap('x').set('y', 1)
        encoding.writeVarUint8Array(p, Y.encodeStateVector(sv))
      }))
    }))

    // An offer in a session whose initiator did not ask for snapshots.
    const unasked = await b.libp2p.dialProtocol(a.peerId, sync.protocol)
    unasked.send(header(0))
    unasked.send(offer('bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy', 10))
    await waitFor('an unasked-for offer counted', () => dropped('unexpected-snapshot') >= 1)
    // Offers A cannot use: a CID that does not parse, and a size past the limit.
    const failedBefore = sync.stats.snapshot.fetchFailed
    const bad = await b.libp2p.dialProtocol(a.peerId, sync.protocol)
    bad.send(header(1))
    bad.send(offer('not a cid', 10))
    bad.send(offer('bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy', 2 ** 40))
    await waitFor('both failed fetches counted', () => sync.stats.snapshot.fetchFailed >= failedBefore + 2)
    assert.ok(dropped('oversized') >= 1)
    assert.deepEqual(Y.encodeStateAsUpdate(doc), before, 'nothing reached the document')
    await documentsOf(b).set('big', 'still-works', true)
    await waitFor('A to keep replicating', () => doc.getMap(DATA_MAP).get('still-works') === true)
  })
})
