// Mesh's bitswap (node/bitswap-stream.ts): the holder streams one-block messages it frames itself,
// and the reader verifies each block with the digest bitswap computed on arrival. Both must stay
// wire-compatible with stock @helia/bitswap in both directions and move every byte intact.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { createHeliaLight } from 'helia'
import { sha256 } from 'multiformats/hashes/sha2'
import { after, before, describe, it } from 'node:test'
import { readModuleChunks, storeModule } from '../../node/artifacts.ts'
import { SharedBitswapStreams, hasherStats, sha256OnceHasher, withStreamingBitswap } from '../../node/bitswap-stream.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { waitFor } from '../helpers/process.ts'
import type { HeliaWithLibp2p } from '@helia/libp2p'

const MiB = 1024 * 1024

async function readAll (chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return Buffer.concat(parts)
}

/** Blocks per bitswap message a node receives, as its bitswap decoded them. */
function blocksPerMessage (helia: HeliaWithLibp2p): number[] {
  const broker = (helia as any).blockBrokers.find((b: any) => b.name === 'bitswap')
  const seen: number[] = []
  broker.bitswap.network.addEventListener('bitswap:message', (evt: any) => {
    if (evt.detail.message.blocks.length > 0) seen.push(evt.detail.message.blocks.length)
  })
  return seen
}

/** A plain Helia node over TCP/Noise/yamux, with stock bitswap or with Mesh's. */
async function heliaNode (meshBitswap: boolean): Promise<HeliaWithLibp2p> {
  const helia = createHeliaLight({ blockstore: new MemoryBlockstore(), datastore: new MemoryDatastore(), hashers: meshBitswap ? [sha256OnceHasher] : [] })
  const withSwap = withBitswap(withLibp2pLight(helia, {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() }
  }))
  const node = (meshBitswap ? withStreamingBitswap(withSwap) : withSwap) as HeliaWithLibp2p
  await node.start()
  return node
}

// MeshNodes hang up on peers outside their network, so the stock interop runs between plain Helia
// nodes, one of them with Mesh's bitswap; MeshNode to MeshNode checks how MeshNode wires it.
describe('Mesh bitswap', () => {
  let a: MeshNode
  let b: MeshNode
  let mesh: HeliaWithLibp2p
  let stock: HeliaWithLibp2p
  const timeout = (): AbortSignal => AbortSignal.timeout(20_000)

  before(async () => {
    a = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), config: {}, minPeers: 1 })
    await a.start()
    b = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), config: {}, minPeers: 1, bootstrap: [a.libp2p.getMultiaddrs()[0].toString()] })
    await b.start()
    mesh = await heliaNode(true)
    stock = await heliaNode(false)
    await stock.libp2p.dial(mesh.libp2p.getMultiaddrs()[0])
  })
  after(async () => { await Promise.all([a?.stop(), b?.stop(), mesh?.stop(), stock?.stop()]) })

  it('a stock node reads what a Mesh holder holds: every byte, one block per message', async () => {
    const bytes = randomBytes(5 * MiB + 17) // six 1 MiB leaves under a root
    const cid = await storeModule(unixfs(mesh), bytes)
    const messages = blocksPerMessage(stock)
    const got = await readAll(unixfs(stock).cat(cid, { signal: timeout() }))
    assert.ok(got.equals(bytes), 'the bytes changed in transit')
    // Stock holders pack up to 4 MiB of blocks in a message; Mesh's sends each block as it reads it.
    assert.ok(messages.length >= 7, `expected the root and six leaves in separate messages, got ${JSON.stringify(messages)}`)
    assert.ok(messages.every(n => n === 1), `a message carried more than one block: ${JSON.stringify(messages)}`)
  })

  it('a Mesh reader reads what a stock node holds, verifying each block with the digest bitswap computed', async () => {
    const bytes = randomBytes(2 * MiB + 3) // stock chunking (1 MiB): three leaves under a root
    const cid = await unixfs(stock).addBytes(bytes)
    const before = { ...hasherStats }
    const got = await readAll(unixfs(mesh).cat(cid, { signal: timeout() }))
    assert.ok(got.equals(bytes), 'the bytes changed in transit')
    assert.ok(hasherStats.reused - before.reused >= 4, `reused ${hasherStats.reused - before.reused} digests`)
  })

  it('a MeshNode reads from a MeshNode: every byte, streamed one block per message', async () => {
    const bytes = randomBytes(3 * MiB + 5)
    const cid = await storeModule(unixfs(a.helia), bytes)
    const messages = blocksPerMessage(b.helia as unknown as HeliaWithLibp2p)
    const got = await readAll(readModuleChunks(unixfs(b.helia), cid, { signal: timeout() }))
    assert.ok(got.equals(bytes), 'the bytes changed in transit')
    assert.ok(messages.length >= 5 && messages.every(n => n === 1), `blocks per message: ${JSON.stringify(messages)}`)
  })

  it('one bitswap stream per peer carries every message, and a reset stream is replaced', async () => {
    const bitswapStreams = (from: MeshNode, to: MeshNode, direction: 'inbound' | 'outbound'): number =>
      from.libp2p.getConnections(to.peerId).flatMap(c => c.streams)
        .filter(s => s.protocol === '/ipfs/bitswap/1.2.0' && s.direction === direction && s.status === 'open').length
    for (let i = 0; i < 2; i++) {
      const bytes = randomBytes(2 * MiB + i)
      const cid = await storeModule(unixfs(a.helia), bytes)
      assert.ok((await readAll(readModuleChunks(unixfs(b.helia), cid, { signal: timeout() }))).equals(bytes))
    }
    // Stock bitswap closes a stream after each message: none would be left open, and many used.
    assert.equal(bitswapStreams(a, b, 'outbound'), 1, 'A sends B its blocks on one stream')
    assert.equal(bitswapStreams(b, a, 'outbound'), 1, 'B sends A its wants on one stream')
    // B hangs up its end of A's stream: A's next blocks go out on a new one.
    for (const s of b.libp2p.getConnections(a.peerId).flatMap(c => c.streams)) {
      if (s.protocol === '/ipfs/bitswap/1.2.0' && s.direction === 'inbound') s.abort(new Error('test reset'))
    }
    const bytes = randomBytes(MiB + 9)
    const cid = await storeModule(unixfs(a.helia), bytes)
    assert.ok((await readAll(readModuleChunks(unixfs(b.helia), cid, { signal: timeout() }))).equals(bytes))
    assert.equal(bitswapStreams(a, b, 'outbound'), 1)
  })

  it('a shared stream closes once idle and is reopened on the next message', async () => {
    const received: number[] = []
    await stock.libp2p.handle('/ipfs/bitswap/1.2.0-test', async (stream) => {
      await stream.close() // as bitswap's receiver does: it only reads
      for await (const chunk of stream) received.push(chunk.byteLength)
    })
    // SharedBitswapStreams shares only bitswap's protocol ID; dial the test one through a wrapper.
    const dial = async (peer: any, _protocol: any, options: any): Promise<any> => mesh.libp2p.dialProtocol(peer, '/ipfs/bitswap/1.2.0-test', options)
    const streams = new SharedBitswapStreams(dial, 100)
    const peer = stock.libp2p.peerId
    await mesh.libp2p.dial(stock.libp2p.getMultiaddrs()[0])
    const open = (): number => mesh.libp2p.getConnections(peer).flatMap(c => c.streams).filter(s => s.protocol === '/ipfs/bitswap/1.2.0-test' && s.status === 'open').length
    const first = await streams.streamTo(peer)
    first.send(new Uint8Array(10))
    const second = await streams.streamTo(peer)
    second.send(new Uint8Array(20))
    assert.equal(open(), 1, 'two senders, one stream')
    await waitFor('the idle stream to close', () => open() === 0, 10_000, 10)
    const third = await streams.streamTo(peer)
    third.send(new Uint8Array(30))
    await waitFor('every byte to arrive', () => received.reduce((n, x) => n + x, 0) === 60, 10_000, 10)
    await stock.libp2p.unhandle('/ipfs/bitswap/1.2.0-test')
  })

  it('a Mesh reader cancels its wants with every peer it sent them to once the blocks came', async () => {
    // The bystander lacks the file. Stock bitswap (Helia 7) never sends a cancel, so a peer that
    // lacks the blocks keeps every want it was sent and re-checks them all on each message it gets.
    const bystander = await heliaNode(false)
    const ledgers = (holder: HeliaWithLibp2p): Map<unknown, { wants: Map<string, unknown> }> =>
      (holder as any).blockBrokers.find((b: any) => b.name === 'bitswap').bitswap.peerWantLists.ledgerMap
    try {
      await mesh.libp2p.dial(bystander.libp2p.getMultiaddrs()[0])
      await mesh.libp2p.dial(stock.libp2p.getMultiaddrs()[0])
      const bytes = randomBytes(3 * MiB + 1)
      const cid = await storeModule(unixfs(stock), bytes)
      const got = await readAll(readModuleChunks(unixfs(mesh), cid, { signal: timeout() }))
      assert.ok(got.equals(bytes))
      // The bystander did get the wants: the cancels, not a missed want list, empty its ledger.
      assert.ok(ledgers(bystander).has(mesh.libp2p.peerId), 'the bystander never heard from the reader')
      const wants = (holder: HeliaWithLibp2p): number => ledgers(holder).get(mesh.libp2p.peerId)?.wants.size ?? 0
      await waitFor('the bystander and the holder to drop every want', () => wants(bystander) === 0 && wants(stock) === 0, 10_000, 10)
    } finally {
      await bystander.stop()
    }
  })

  it('the hasher hashes bytes bitswap has not seen, honouring truncation', async () => {
    const bytes = randomBytes(1000)
    const before = hasherStats.hashed
    assert.deepEqual((await sha256OnceHasher.digest(bytes)).bytes, (await sha256.digest(bytes)).bytes)
    assert.deepEqual((await sha256OnceHasher.digest(bytes, { truncate: 20 })).digest, (await sha256.digest(bytes, { truncate: 20 })).digest)
    assert.equal(hasherStats.hashed - before, 2)
  })
})
