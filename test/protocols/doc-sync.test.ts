// Real libp2p nodes on loopback TCP, each with its own on-disk document store.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import * as encoding from 'lib0/encoding'
import { createLibp2p } from 'libp2p'
import * as Y from 'yjs'
import { openDocStore } from '../../node/doc-store.ts'
import { libp2pOptions } from '../../node/libp2p.ts'
import { docSync } from '../../protocols/doc-sync.ts'
import { tempDirs, waitFor } from '../helpers/process.ts'
import type { DocStore } from '../../node/doc-store.ts'
import type { MeshServices } from '../../node/libp2p.ts'
import type { DocSync, DocSyncInit } from '../../protocols/doc-sync.ts'
import type { PrivateKey } from '@libp2p/interface'
import type { Libp2p } from 'libp2p'

const NETWORK = 'doc-test'

interface TestNode {
  libp2p: Libp2p<MeshServices>
  store: DocStore
  sync: DocSync
  dir: string
  privateKey: PrivateKey
  stop: () => Promise<void>
}

describe('document sync', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const running = new Set<TestNode>()

  async function makeNode (options: { dir?: string, privateKey?: PrivateKey, init?: Partial<DocSyncInit> } = {}): Promise<TestNode> {
    const privateKey = options.privateKey ?? await generateKeyPair('Ed25519')
    const dir = options.dir ?? await dirs.make('doc-sync-')
    const libp2p = await createLibp2p(libp2pOptions({ privateKey, network: NETWORK, listen: ['/ip4/127.0.0.1/tcp/0'] }))
    const store = await openDocStore(dir)
    const sync = docSync({ libp2p, store }, { network: NETWORK, maxMessageBytes: 64 * 1024, antiEntropyIntervalMs: 0, ...options.init })
    await sync.start()
    const node: TestNode = {
      libp2p,
      store,
      sync,
      dir,
      privateKey,
      stop: async () => {
        running.delete(node)
        await sync.stop()
        await libp2p.stop()
        await store.close()
      }
    }
    running.add(node)
    return node
  }

  async function connect (a: TestNode, b: TestNode): Promise<void> {
    await a.libp2p.dial(b.libp2p.getMultiaddrs()[0])
  }

  /** Waits until every node's topic for `docId` lists every other node. */
  async function meshed (nodes: TestNode[], docId: string): Promise<void> {
    await waitFor(`gossip subscriptions to ${docId}`, () => nodes.every(n => {
      const subs = n.libp2p.services.pubsub!.getSubscribers(n.sync.topic(docId)).map(String)
      return nodes.every(o => o === n || subs.includes(o.libp2p.peerId.toString()))
    }))
  }

  /** A replica's state in a form that does not depend on the order it learned things in. */
  function state (doc: Y.Doc): unknown {
    const sorted = (entries: Iterable<[any, any]>): Array<[any, any]> => [...entries].sort((x, y) => x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0)
    return {
      sv: sorted(Y.decodeStateVector(Y.encodeStateVector(doc))),
      text: doc.getText('t').toString(),
      map: sorted(Object.entries(doc.getMap('m').toJSON())),
      items: doc.getArray('a').toArray().slice().sort()
    }
  }

  async function converged (nodes: TestNode[], docId: string, check?: (doc: Y.Doc) => boolean): Promise<void> {
    const docs = await Promise.all(nodes.map(async n => n.sync.open(docId)))
    await waitFor(`${nodes.length} replicas of ${docId} to converge`, () => {
      const first = JSON.stringify(state(docs[0]))
      return docs.every(d => JSON.stringify(state(d)) === first) && (check == null || check(docs[0]))
    })
  }

  before(async () => { dirs = await tempDirs() })
  after(async () => {
    for (const n of [...running]) await n.stop()
    await dirs.cleanup()
  })

  let a: TestNode
  let b: TestNode
  let c: TestNode

  it('three nodes editing at once converge, and see each other\'s presence', async () => {
    a = await makeNode()
    b = await makeNode()
    c = await makeNode({ init: { antiEntropyIntervalMs: 300 } })
    await connect(a, b)
    await connect(b, c)
    await connect(a, c)
    for (const n of [a, b, c]) await n.sync.open('shared')
    await meshed([a, b, c], 'shared')
    await Promise.all([a, b, c].map(async (n, k) => {
      for (let i = 0; i < 20; i++) {
        await n.sync.transact('shared', (doc) => {
          doc.getText('t').insert(0, `${k}`)
          doc.getMap('m').set(`n${k}`, i)
          doc.getArray('a').push([`${k}-${i}`])
        })
      }
    }))
    await converged([a, b, c], 'shared', doc => doc.getArray('a').length === 60)
    const doc = await c.sync.open('shared')
    assert.equal(doc.getText('t').length, 60)
    assert.deepEqual(doc.getMap('m').toJSON(), { n0: 19, n1: 19, n2: 19 })

    a.sync.setAwareness('shared', { user: 'alice' })
    const aClient = (await a.sync.open('shared')).clientID
    await waitFor('B and C to see A\'s presence', () =>
      [b, c].every(n => (n.sync.awareness('shared').getStates().get(aClient) as any)?.user === 'alice'))
  })

  it('a replica shows no presence of its own, and passes on over gossip only what was news to it', async () => {
    // A document only B holds, so what B is handed here stays out of the others' replicas.
    const doc = await b.sync.open('solo')
    assert.equal(b.sync.awareness('solo').getLocalState(), null, 'a replica is not an editor')
    const topic = b.sync.topic('solo')
    const validate = b.libp2p.services.pubsub!.topicValidators.get(topic)!
    const gossip = (update: Uint8Array): any => {
      const e = encoding.createEncoder()
      encoding.writeVarUint(e, 0)
      encoding.writeVarUint(e, 2)
      encoding.writeVarUint8Array(e, update)
      return { type: 'signed', from: a.libp2p.peerId, topic, data: encoding.toUint8Array(e), sequenceNumber: 1n, signature: new Uint8Array(64), key: a.libp2p.peerId.publicKey }
    }
    const elsewhere = new Y.Doc()
    elsewhere.getMap('m').set('news', 1)
    const update = Y.encodeStateAsUpdate(elsewhere)
    assert.equal(await validate(a.libp2p.peerId, gossip(update)), 'accept', 'news goes on')
    assert.equal(doc.getMap('m').get('news'), 1, 'and is applied once validated')
    assert.equal(await validate(a.libp2p.peerId, gossip(update)), 'ignore', 'old news stops here')
    elsewhere.getMap('m').delete('news')
    assert.equal(await validate(a.libp2p.peerId, gossip(Y.encodeStateAsUpdate(elsewhere))), 'accept', 'a deletion is news too')
    assert.equal(doc.getMap('m').has('news'), false)
    await b.sync.close('solo')
  })

  it('a node restarted on its store catches up on what it missed', async () => {
    await c.sync.transact('shared', doc => { doc.getMap('m').set('before-stop', 'c') })
    const { dir, privateKey } = c
    await c.stop()
    await a.sync.transact('shared', doc => { doc.getArray('a').push(['while-c-was-away-a']) })
    await b.sync.transact('shared', doc => { doc.getMap('m').set('while-c-was-away', 'b') })
    await converged([a, b], 'shared', d => d.getMap('m').get('while-c-was-away') === 'b' && d.getArray('a').length === 61)

    c = await makeNode({ dir, privateKey, init: { antiEntropyIntervalMs: 300 } })
    const doc = await c.sync.open('shared')
    assert.equal(doc.getMap('m').get('before-stop'), 'c', 'its own acknowledged write came back from disk')
    assert.equal(doc.getArray('a').length, 60, 'nothing new before it reconnects')
    await connect(c, a)
    await converged([a, b, c], 'shared', d => d.getArray('a').length === 61)
    assert.ok(c.sync.stats.sync.updatesApplied > 0)
    assert.equal(doc.getMap('m').get('while-c-was-away'), 'b')
  })

  it('anti-entropy repairs a gossip message a node never got', async () => {
    // Every pair connected first: a B-C connection that forms mid-test (the DHT dials peers it
    // hears of) runs a catch-up sync that may deliver the update before anti-entropy does.
    if (b.libp2p.getConnections(c.libp2p.peerId).length === 0) await connect(c, b)
    await meshed([a, b, c], 'shared')
    // …and the catch-up sessions of those connections over (a sync queued now runs after them).
    for (const [x, y] of [[a, c], [b, c], [c, a], [c, b]]) await x.sync.syncWith(y.libp2p.peerId)
    // C's gossip for the document is lost from now on; only the periodic state-vector exchange can fix it.
    const pubsub = c.libp2p.services.pubsub!
    const topic = c.sync.topic('shared')
    const original = pubsub.topicValidators.get(topic)!
    let lost = 0
    pubsub.topicValidators.set(topic, () => { lost++; return 'ignore' as any })
    const repairedBefore = c.sync.stats.antiEntropy.repaired
    const appliedBefore = c.sync.stats.sync.updatesApplied
    await a.sync.transact('shared', doc => { doc.getMap('m').set('gossip-lost', true) })
    await waitFor('B to get the update by gossip', async () => (await b.sync.open('shared')).getMap('m').get('gossip-lost') === true)
    await waitFor('anti-entropy to bring it to C', async () => (await c.sync.open('shared')).getMap('m').get('gossip-lost') === true)
    assert.ok(lost > 0, 'C did drop the gossip')
    // Usually the periodic round repairs it; but gossipsub re-announces subscriptions when it
    // reopens a stream, and doc-sync answers that with a catch-up session, which may get there
    // first. Either way the update came by a sync, not by gossip. (A round counts its repairs when
    // its session ends, a moment after the document changed.)
    await waitFor('the repair counted', () => c.sync.stats.antiEntropy.repaired > repairedBefore || c.sync.stats.sync.updatesApplied > appliedBefore)
    pubsub.topicValidators.set(topic, original)
    await converged([a, b, c], 'shared')
  })

  it('a large update goes on gossip as a notice; each node fetches its bytes from whoever passed the notice on', async () => {
    // A line: X - Y - Z. Z hears of X's update only from Y, so it can have it only if Y fetched it
    // before passing the notice on, and fetched it from Y.
    const [x, y, z] = [await makeNode(), await makeNode(), await makeNode()]
    await connect(x, y)
    await connect(y, z)
    for (const n of [x, y, z]) await n.sync.open('big')
    await meshed([x, y], 'big')
    await meshed([y, z], 'big')
    await x.sync.transact('big', d => { for (let i = 0; i < 400; i++) d.getMap('m').set(`key-${i}`, `value-${i}`) })
    await converged([x, y, z], 'big', d => d.getMap('m').size === 400)
    assert.equal(x.sync.stats.gossip.notices, 1, 'the update went out as one notice')
    assert.ok(y.sync.stats.gossip.fetches >= 1 && z.sync.stats.gossip.fetches >= 1, 'Y and Z fetched it')
    assert.ok(z.sync.stats.sync.updateBytesReceived > 4096, 'Z got the bytes over the sync stream')
    assert.equal(y.sync.stats.sync.relayed, 0, 'a fetched update is not relayed again: the notice was passed on')

    // A notice that names structs its sender does not have: Z asks Y, learns nothing, drops it.
    const zDoc = await z.sync.open('big')
    const before = JSON.stringify(state(zDoc))
    const fetches = z.sync.stats.gossip.fetches
    const notice = (sv: Array<[number, number]>): Uint8Array => {
      const e = encoding.createEncoder()
      encoding.writeVarUint(e, 100)
      const inner = encoding.createEncoder()
      encoding.writeVarUint(inner, sv.length)
      for (const [client, clock] of sv) { encoding.writeVarUint(inner, client); encoding.writeVarUint(inner, clock) }
      encoding.writeVarUint8Array(e, encoding.toUint8Array(inner))
      return encoding.toUint8Array(e)
    }
    await y.libp2p.services.pubsub!.publish(y.sync.topic('big'), notice([[123456, 1_000_000]]))
    await waitFor('Z to ask Y for what the notice names', () => z.sync.stats.gossip.fetches > fetches)
    const malformed = z.sync.stats.dropped.malformed ?? 0
    await y.libp2p.services.pubsub!.publish(y.sync.topic('big'), notice([]))
    await waitFor('an empty notice counted', () => (z.sync.stats.dropped.malformed ?? 0) > malformed)
    assert.equal(JSON.stringify(state(zDoc)), before, 'nothing reached the document')
    await x.sync.transact('big', d => { d.getMap('m').set('after', true) })
    await waitFor('Z to keep replicating', () => zDoc.getMap('m').get('after') === true)

    // A fetch only pulls. Z holds an edit Y never got (Y drops Z's gossip); fetching the next
    // notice from Y must not hand it over: Z's news travels as Z's own gossip, not inside every
    // session Z starts (with every node writing, that sent each batch several times).
    const yPubsub = y.libp2p.services.pubsub!
    const topic = y.sync.topic('big')
    const original = yPubsub.topicValidators.get(topic)!
    yPubsub.topicValidators.set(topic, (peer, msg) => msg.type === 'signed' && msg.from.equals(z.libp2p.peerId) ? 'ignore' as any : original(peer, msg))
    await z.sync.transact('big', d => { d.getMap('m').set('z-only', 'z'.repeat(3000)) })
    const zSent = z.sync.stats.sync.bytesSent
    const zFetches = z.sync.stats.gossip.fetches
    await x.sync.transact('big', d => { for (let i = 0; i < 400; i++) d.getMap('m').set(`second-${i}`, i) })
    await waitFor('Z to get the second batch', () => zDoc.getMap('m').get('second-399') === 399)
    assert.ok(z.sync.stats.gossip.fetches > zFetches, 'Z fetched the second batch')
    assert.ok(z.sync.stats.sync.bytesSent - zSent < 1000, `Z sent only its state vector, not its 3 KB edit (${z.sync.stats.sync.bytesSent - zSent} B)`)
    yPubsub.topicValidators.set(topic, original)
    for (const n of [x, y, z]) await n.stop()
  })

  it('malformed and oversized messages are dropped and counted; the document is untouched', async () => {
    const mallory = await makeNode()
    await connect(mallory, a)
    const topic = a.sync.topic('shared')
    const pubsub = mallory.libp2p.services.pubsub!
    await waitFor('Mallory to see A subscribed', () => pubsub.getSubscribers(topic).some(p => p.equals(a.libp2p.peerId)))
    const doc = await a.sync.open('shared')
    const before = JSON.stringify(state(doc))
    const dropped = (reason: string): number => a.sync.stats.dropped[reason] ?? 0
    const message = (write: (e: encoding.Encoder) => void): Uint8Array => {
      const e = encoding.createEncoder()
      write(e)
      return encoding.toUint8Array(e)
    }

    await pubsub.publish(topic, new Uint8Array([0xff, 0xff, 0xff]))
    await waitFor('a malformed message counted', () => dropped('malformed') >= 1)
    await pubsub.publish(topic, new Uint8Array(100 * 1024).fill(7))
    await waitFor('an oversized message counted', () => dropped('oversized') >= 1)
    await pubsub.publish(topic, message(e => {
      encoding.writeVarUint(e, 0)
      encoding.writeVarUint(e, 2)
      encoding.writeVarUint8Array(e, new Uint8Array([5, 200, 1, 2, 3, 4, 9, 9, 9]))
    }))
    await waitFor('a garbage Yjs update counted', () => dropped('invalid-update') >= 1)
    await pubsub.publish(topic, message(e => {
      encoding.writeVarUint(e, 0)
      encoding.writeVarUint(e, 0)
      encoding.writeVarUint8Array(e, Y.encodeStateVector(new Y.Doc()))
    }))
    await waitFor('a sync step on gossip counted', () => dropped('unexpected-message') >= 1)

    // The sync stream: a frame that claims 100 MiB, then a frame that is not a sync message.
    const huge = await mallory.libp2p.dialProtocol(a.libp2p.peerId, a.sync.protocol)
    huge.send(message(e => { encoding.writeVarUint(e, 2); encoding.writeVarUint(e, 1); encoding.writeVarUint(e, 0) }))
    huge.send(message(e => encoding.writeVarUint(e, 100 * 1024 * 1024)))
    await waitFor('an oversized frame counted', () => dropped('oversized') >= 2)
    const garbage = await mallory.libp2p.dialProtocol(a.libp2p.peerId, a.sync.protocol)
    garbage.send(message(e => { encoding.writeVarUint(e, 2); encoding.writeVarUint(e, 1); encoding.writeVarUint(e, 0) }))
    garbage.send(message(e => { encoding.writeVarUint(e, 3); encoding.writeUint8(e, 0xff); encoding.writeUint8(e, 0xff); encoding.writeUint8(e, 0xff) }))
    await waitFor('a malformed frame counted', () => dropped('malformed') >= 2)

    assert.equal(JSON.stringify(state(doc)), before, 'nothing reached the document')
    await b.sync.transact('shared', d => { d.getMap('m').set('still-works', true) })
    await waitFor('A to keep replicating', () => doc.getMap('m').get('still-works') === true)
    await mallory.stop()
  })

  it('only named writers change a document, and a zone-bound one stays in its zones', async () => {
    const writerKey = await generateKeyPair('Ed25519')
    const writer = peerIdFromPrivateKey(writerKey).toString()
    const init: Partial<DocSyncInit> = {
      writers: (id) => id === 'locked' ? [writer] : undefined,
      allowedZones: (id) => id === 'eu-only' ? ['eu-west'] : undefined,
      nodeZone: 'us-east'
    }
    const w = await makeNode({ privateKey: writerKey, init })
    const r = await makeNode({ init })
    await connect(w, r)
    await w.sync.open('locked')
    const readerDoc = await r.sync.open('locked')
    await meshed([w, r], 'locked')
    await assert.rejects(r.sync.transact('locked', d => { d.getMap('m').set('x', 1) }), /may not write/)
    // Editing the Y.Doc directly bypasses transact; the writer still refuses it.
    readerDoc.getMap('m').set('forged', true)
    await r.sync.flushed('locked')
    await waitFor('the forged update refused', () => (w.sync.stats.dropped['not-writer'] ?? 0) >= 1)
    await w.sync.transact('locked', d => { d.getMap('m').set('real', true) })
    await waitFor('the reader gets the writer\'s edit', () => readerDoc.getMap('m').get('real') === true)
    assert.equal((await w.sync.open('locked')).getMap('m').get('forged'), undefined)

    await assert.rejects(w.sync.open('eu-only'), /may only live in zones eu-west/)
    assert.deepEqual(w.sync.docs(), ['locked'])
    assert.deepEqual((await w.store.list()).map(e => e.docId), ['locked'])
    await w.stop()
    await r.stop()
  })
})
