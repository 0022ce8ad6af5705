// A shard of the documents benchmark: a worker thread that hosts some of the replicas (Mesh nodes,
// or y-websocket clients of the central relay) and runs the coordinator's commands on them
// (`docs.ts`). One thread per core lets the N nodes of one machine use all of its cores, as N real
// machines would, instead of taking turns on one event loop; the nodes still talk only over real
// TCP on 127.0.0.1. Times are wall-clock (`performance.timeOrigin + performance.now()`), the same
// clock in every thread.
//
// Messages: the coordinator sends `{ id, op, args }` and gets `{ id, value }` or `{ id, error }`;
// the shard also posts `{ arrived: [[key, time], …] }` once a key is on every replica it hosts.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parentPort, workerData } from 'node:worker_threads'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'
import { openDocStore } from '../../node/doc-store.ts'
import { libp2pOptions } from '../../node/libp2p.ts'
import { docSync } from '../../protocols/doc-sync.ts'
import { waitFor } from '../demo/cluster.ts'
import { countWireBytes } from './lib/wire.ts'
import type { DocStore } from '../../node/doc-store.ts'
import type { MeshServices } from '../../node/libp2p.ts'
import type { DocSync } from '../../protocols/doc-sync.ts'
import type { GossipSub } from '@libp2p/gossipsub'
import type { PeerScoreParams } from '@libp2p/gossipsub/score'
import type { PeerId } from '@libp2p/interface'
import type { Libp2p } from 'libp2p'

export interface ShardData {
  kind: 'mesh' | 'central'
  /** The global indices of the replicas this shard hosts; replica i is on side i % 2 when split. */
  indices: number[]
  network: string
  doc: string
  fsync: boolean
  /** Central only: the relay's ws:// URL. */
  relayUrl?: string
}

/** Unacknowledged writes a Mesh writer keeps in flight (a y-websocket client has no acknowledgement at all). */
export const WINDOW = 500

const data = workerData as ShardData
const port = parentPort!
const now = (): number => performance.timeOrigin + performance.now()

const wireBytes = countWireBytes()

interface Replica {
  index: number
  doc: Y.Doc
  write: (key: string, value: unknown) => Promise<void>
}

interface MeshReplicaNode { libp2p: Libp2p<MeshServices>, store: DocStore, sync: DocSync, dir: string, side: number }

const replicas: Replica[] = []
const nodes: MeshReplicaNode[] = []
const providers: WebsocketProvider[] = []
/** Mesh: every node's side, by peer ID (all shards'), and whether the sides are cut apart. */
const sideOf = new Map<string, number>()
let splitNow = false
let connectionsBeforeSplit = 0
const connectionCount = (): number => nodes.reduce((a, nd) => a + nd.libp2p.getConnections().length, 0)
let redials: Promise<unknown> = Promise.resolve()

// --- arrivals: when each key reached each hosted replica -------------------------------------

/** key → arrival time on each hosted replica (NaN until it arrives), and on how many it has. */
const seen = new Map<string, { times: number[], count: number }>()
let arrived: Array<[string, number]> = []
let flushing = false

function watch (r: Replica, slot: number): void {
  r.doc.getMap('m').observe((evt: Y.YMapEvent<unknown>) => {
    const t = now()
    for (const k of evt.keysChanged) {
      let s = seen.get(k)
      if (s == null) { s = { times: new Array(replicas.length).fill(NaN), count: 0 }; seen.set(k, s) }
      if (!Number.isNaN(s.times[slot])) continue
      s.times[slot] = t
      if (++s.count === replicas.length) arrived.push([k, t])
    }
    if (arrived.length > 0 && !flushing) {
      flushing = true
      setImmediate(() => {
        flushing = false
        port.postMessage({ arrived })
        arrived = []
      })
    }
  })
}

// --- mesh ------------------------------------------------------------------------------------

const cross = (self: string, peer: PeerId): boolean => {
  const other = sideOf.get(peer.toString())
  return splitNow && other != null && other !== sideOf.get(self)
}

async function startMesh (): Promise<Array<{ index: number, peerId: string, addr: string }>> {
  for (const index of data.indices) {
    const privateKey = await generateKeyPair('Ed25519')
    const dir = await mkdtemp(join(tmpdir(), 'bench-docs-'))
    let selfId = ''
    const libp2p = await createLibp2p(libp2pOptions({
      privateKey,
      network: data.network,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      connectionGater: {
        denyDialPeer: (peer) => cross(selfId, peer),
        denyInboundEncryptedConnection: (peer) => cross(selfId, peer),
        denyOutboundEncryptedConnection: (peer) => cross(selfId, peer)
      }
    }))
    allowColocation(libp2p.services.pubsub!)
    selfId = libp2p.peerId.toString()
    let sync: DocSync | undefined
    const store = await openDocStore(dir, { fsync: data.fsync, liveDoc: (id) => sync?.opened(id) })
    sync = docSync({ libp2p, store }, { network: data.network })
    await sync.start()
    nodes.push({ libp2p, store, sync, dir, side: index % 2 })
  }
  return nodes.map((nd, i) => ({ index: data.indices[i], peerId: nd.libp2p.peerId.toString(), addr: nd.libp2p.getMultiaddrs()[0].toString() }))
}

const nodeAt = (index: number): MeshReplicaNode => nodes[data.indices.indexOf(index)]

/**
 * Gossipsub scores down every peer of a node once more than 10 of them share one IP address (P6,
 * IP colocation: -5 × surplus²): with 12 it no longer gossips to them, with 14 it ignores them
 * (graylist), and it grafts only peers scoring 0 or more. Every node of this bench is 127.0.0.1, so
 * at 50 nodes the busier nodes, with 15-30 connections, refuse every mesh peer and the topic never
 * forms (measured: 10 of 50 nodes with a mesh after 75 s; with loopback exempt, all 50 in 1.4 s).
 * Loopback is exempted here, in the scores the node already has, until node/libp2p.ts does it.
 */
function allowColocation (pubsub: GossipSub): void {
  const params = gossipInternals(pubsub).score.params
  if (params.IPColocationFactorWeight === 0) return
  // A new set: the default one is shared by every gossipsub instance in the thread.
  params.IPColocationFactorWhitelist = new Set([...params.IPColocationFactorWhitelist, '127.0.0.1', '::1'])
}

/** What the bench reads of gossipsub beyond its exported interface (the class is not exported). */
function gossipInternals (pubsub: GossipSub): { getMeshPeers: (topic: string) => string[], score: { params: PeerScoreParams } } {
  return pubsub as any
}

/** Dials (this shard's end of) links, each tried up to three times: a loaded machine times some handshakes out. */
async function dialAll (links: Array<[number, string]>, limit: number, tries: number): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, links.length) }, async () => {
    while (next < links.length) {
      const [from, addr] = links[next++]
      for (let attempt = 1; ; attempt++) {
        try {
          await nodeAt(from).libp2p.dial(multiaddr(addr))
          break
        } catch (err) {
          if (attempt >= tries) throw err
        }
      }
    }
  }))
}

const meshReady = (nd: MeshReplicaNode): boolean => {
  const pubsub = nd.libp2p.services.pubsub!
  const topic = nd.sync.topic(data.doc)
  return pubsub.getSubscribers(topic).length > 0 && gossipInternals(pubsub).getMeshPeers(topic).length > 0
}

// --- central ---------------------------------------------------------------------------------

function startCentral (): void {
  for (const index of data.indices) {
    const doc = new Y.Doc()
    providers.push(new WebsocketProvider(data.relayUrl!, data.doc, doc, { WebSocketPolyfill: WebSocket as any, disableBc: true }))
    // A y-websocket client has no acknowledgement: a write is done once handed to the socket.
    replicas.push({ index, doc, write: async (key, value) => { doc.getMap('m').set(key, value) } })
  }
  replicas.forEach(watch)
}

/** The central side's split: the odd replicas go offline (the relay is one side). */
const offline = (): WebsocketProvider[] => providers.filter((_, i) => data.indices[i] % 2 === 1)

// --- commands --------------------------------------------------------------------------------

const replicaAt = (index: number): Replica => replicas[data.indices.indexOf(index)]

const ops: Record<string, (args: any) => Promise<unknown>> = {
  async start () {
    if (data.kind === 'central') {
      startCentral()
      await waitFor(`central: ${providers.length} clients synced`, () => providers.every(p => p.synced), 60_000, 10)
      return []
    }
    return startMesh()
  },
  /** Mesh: learns every node's side, dials this shard's links, opens the document, waits for a gossip mesh. */
  async form ({ sides, links }: { sides: Array<[string, number]>, links: Array<[number, string]> }) {
    for (const [id, side] of sides) sideOf.set(id, side)
    await dialAll(links, 10, 3)
    for (const nd of nodes) {
      const doc = await nd.sync.open(data.doc)
      replicas.push({ index: data.indices[replicas.length], doc, write: async (key, value) => nd.sync.transact(data.doc, d => { d.getMap('m').set(key, value) }) })
    }
    replicas.forEach(watch)
    await waitFor('every node subscribed with gossip peers', () => nodes.every(meshReady), 180_000, 10)
      .catch((err) => { throw new Error(`${err.message} (${nodes.filter(meshReady).length} of ${nodes.length} ready)`) })
  },
  async meshStats () {
    return nodes.map(nd => ({
      degree: gossipInternals(nd.libp2p.services.pubsub!).getMeshPeers(nd.sync.topic(data.doc)).length,
      connections: nd.libp2p.getConnections().length
    }))
  },
  async write ({ index, key, value }: { index: number, key: string, value: unknown }) {
    await replicaAt(index).write(key, value)
  },
  /** Each writer writes its keys keeping up to WINDOW unacknowledged; resolves with the bytes of their local updates. */
  async writeMany ({ writers }: { writers: Array<[number, string[]]> }) {
    let raw = 0
    await Promise.all(writers.map(async ([index, keys]) => {
      const r = replicaAt(index)
      // Local writes carry no transaction origin on either side; remote ones carry their source.
      const f = (u: Uint8Array, origin: unknown): void => { if (origin == null) raw += u.length }
      r.doc.on('update', f)
      try {
        let inflight: Array<Promise<void>> = []
        for (const key of keys) {
          inflight.push(r.write(key, 1))
          if (inflight.length >= WINDOW) { await Promise.all(inflight); inflight = [] }
        }
        await Promise.all(inflight)
      } finally { r.doc.off('update', f) }
    }))
    return raw
  },
  /** Per hosted replica, the time the last of `keys` reached it. */
  async lastArrivals ({ keys }: { keys: string[] }) {
    return replicas.map((_, slot) => Math.max(...keys.map(k => seen.get(k)?.times[slot] ?? NaN)))
  },
  async forget ({ prefix }: { prefix: string }) {
    for (const k of seen.keys()) if (k.startsWith(prefix)) seen.delete(k)
  },
  async hasAll ({ keys, side }: { keys: string[], side: number }) {
    return replicas.filter(r => r.index % 2 === side).every(r => keys.every(k => r.doc.getMap('m').has(k)))
  },
  async stateVectors () {
    return replicas.map(r => JSON.stringify([...Y.decodeStateVector(Y.encodeStateVector(r.doc))].sort((a, b) => a[0] - b[0])))
  },
  async counters () {
    const sum = (f: (st: DocSync['stats']) => number): number => nodes.reduce((a, nd) => a + f(nd.sync.stats), 0)
    return {
      gossipIn: sum(st => st.gossip.received),
      published: sum(st => st.gossip.published),
      notices: sum(st => st.gossip.notices),
      fetches: sum(st => st.gossip.fetches),
      relayed: sum(st => st.sync.relayed),
      sessions: sum(st => st.sync.sessions),
      antiEntropy: sum(st => st.antiEntropy.sessions),
      connections: connectionCount(),
      syncKB: Math.round(sum(st => st.sync.bytesSent) / 1024),
      compactions: nodes.reduce((a, nd) => a + nd.store.stats.compactions, 0)
    }
  },
  async wireBytes () {
    return wireBytes()
  },
  async split () {
    if (data.kind === 'central') {
      for (const p of offline()) p.disconnect()
      await waitFor('half the clients offline', () => offline().every(p => !p.wsconnected), 30_000, 10)
      return
    }
    await redials
    connectionsBeforeSplit = connectionCount()
    splitNow = true
    await Promise.all(nodes.map(async nd => {
      for (const c of nd.libp2p.getConnections()) if (cross(nd.libp2p.peerId.toString(), c.remotePeer)) await c.close().catch(() => {})
    }))
  },
  /** Lets the sides reach each other again; mesh: redials `links` (this shard's cross links) in the background. */
  async heal ({ links }: { links: Array<[number, string]> }) {
    if (data.kind === 'central') {
      for (const p of offline()) p.connect()
      return
    }
    splitNow = false
    redials = Promise.all(links.map(async ([from, addr]) => nodeAt(from).libp2p.dial(multiaddr(addr)).catch(() => {})))
  },
  /**
   * Resolves once the links a heal redials are back, and as many connections as before the split
   * (libp2p reconnects some peers itself, with backoff, seconds later): the next phase starts on a
   * settled mesh. Gives up waiting after 15 s.
   */
  async settle () {
    await redials
    await waitFor('connections back', () => connectionCount() >= connectionsBeforeSplit, 15_000, 10).catch(() => {})
  },
  async stop () {
    await redials
    for (const p of providers) p.destroy()
    for (const r of replicas) if (data.kind === 'central') r.doc.destroy()
    for (const nd of nodes) {
      await nd.sync.stop()
      await nd.libp2p.stop()
      await nd.store.close()
      await rm(nd.dir, { recursive: true, force: true })
    }
  }
}

port.on('message', ({ id, op, args }: { id: number, op: string, args: unknown }) => {
  ops[op](args).then(
    (value) => port.postMessage({ id, value }),
    (err: any) => port.postMessage({ id, error: String(err?.stack ?? err) })
  )
})
