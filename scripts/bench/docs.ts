// Documents benchmark: Yjs documents replicated by Mesh's doc-sync (gossipsub + y-protocols sync)
// on N nodes in one process (real TCP on 127.0.0.1, Noise, yamux; each node with its own on-disk
// doc store, fsync on), against the same workload through one central y-websocket relay with N
// y-websocket clients, measured in the same run, rounds interleaved.
//
//   node scripts/bench/docs.ts [--sizes 10,50] [--rounds 2] [--writes 150] [--burst 2000]
//                              [--partition 1000] [--repo-updates 100000] [--cold-mb 10]
//                              [--no-fsync] [--skip repo,cold]
//
// No server implementation of y-websocket is installed (y-websocket 3 ships only the client;
// neither `y-websocket/bin/utils` nor `@y/websocket-server` is in node_modules), so the baseline is
// a minimal central relay written here with `ws` + y-protocols that behaves like the reference
// server's utils (one Y.Doc per room in memory, sync step 1 + awareness on connect, every update
// broadcast to every other connection). It keeps nothing on disk: the mesh side fsyncs every
// acknowledged write, the baseline does not.
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import net from 'node:net'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import { createLibp2p } from 'libp2p'
import WebSocket, { WebSocketServer } from 'ws'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as syncProtocol from 'y-protocols/sync'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'
import { openDocStore } from '../../node/doc-store.ts'
import { documents, documentsOf } from '../../node/documents.ts'
import { libp2pOptions } from '../../node/libp2p.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { docSync } from '../../protocols/doc-sync.ts'
import { mapLimit, median, percentile, prng, round, table } from './lib/stats.ts'
import type { DocStore } from '../../node/doc-store.ts'
import type { MeshServices } from '../../node/libp2p.ts'
import type { DocSync } from '../../protocols/doc-sync.ts'
import type { GossipSub } from '@libp2p/gossipsub'
import type { PeerScoreParams } from '@libp2p/gossipsub/score'
import type { PeerId } from '@libp2p/interface'
import type { Libp2p } from 'libp2p'

const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: '10,50' },
    rounds: { type: 'string', default: '2' },
    writes: { type: 'string', default: '150' },
    burst: { type: 'string', default: '2000' },
    partition: { type: 'string', default: '1000' },
    'repo-updates': { type: 'string', default: '100000' },
    'cold-mb': { type: 'string', default: '10' },
    'no-fsync': { type: 'boolean', default: false },
    skip: { type: 'string', default: '' }
  }
})
const SIZES = args.sizes.split(',').filter(Boolean).map(Number)
const ROUNDS = Number(args.rounds)
const WRITES = Number(args.writes)
const BURST = Number(args.burst)
const PARTITION = Number(args.partition)
const REPO_UPDATES = Number(args['repo-updates'])
const COLD_MB = Number(args['cold-mb'])
const FSYNC = !args['no-fsync']
const SKIP = new Set(args.skip.split(',').filter(Boolean))
const NETWORK = 'bench-docs'
const DOC = 'bench'
const WAIT_MS = 120_000
/** Unacknowledged writes a Mesh writer keeps in flight (a y-websocket client has no acknowledgement at all). */
const WINDOW = 500
const rand = prng(7)

// --- bytes on the wire: every TCP write in the process (libp2p's TCP and ws both write to net.Socket) ---

let wireBytes = 0
const socketWrite = net.Socket.prototype.write
net.Socket.prototype.write = function (this: net.Socket, chunk: any, ...rest: any[]) {
  wireBytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length
  return (socketWrite as any).call(this, chunk, ...rest)
} as any

// --- what both setups offer the workload -----------------------------------------------------

interface Replica {
  doc: Y.Doc
  /** Writes one small update on this replica; resolves when it is acknowledged. */
  write: (key: string, value: unknown) => Promise<void>
}

interface Setup {
  name: 'mesh' | 'central'
  replicas: Replica[]
  /** Cuts the replicas into two sides that cannot reach each other (central: one side offline). */
  split: () => Promise<void>
  /**
   * Lets the sides reach each other again and resolves at once: the reconnections run while
   * convergence is timed (in one process, a hundred handshakes at once take seconds of CPU, and a
   * replica need not wait for the slowest of them).
   */
  heal: () => Promise<void>
  /** Whether a side's replicas reach each other during the split (central: the offline side does not). */
  sideConnected: (side: number) => boolean
  /** Work done so far, summed over the nodes (mesh: doc-sync's counters), to print per phase. */
  counters?: () => Record<string, number>
  stop: () => Promise<void>
}

// --- Mesh: libp2p + doc-sync + doc store per node --------------------------------------------

interface MeshReplicaNode { libp2p: Libp2p<MeshServices>, store: DocStore, sync: DocSync, dir: string, side: number }

async function meshSetup (n: number): Promise<Setup> {
  const nodes: MeshReplicaNode[] = []
  const sideOf = new Map<string, number>()
  let splitNow = false
  const cross = (self: string, peer: PeerId): boolean => {
    const other = sideOf.get(peer.toString())
    return splitNow && other != null && other !== sideOf.get(self)
  }
  const dials: Array<[number, number]> = []
  let redials: Promise<unknown> = Promise.resolve()
  for (let i = 0; i < n; i++) {
    const privateKey = await generateKeyPair('Ed25519')
    const dir = await mkdtemp(join(tmpdir(), 'bench-docs-'))
    let selfId = ''
    const options = libp2pOptions({
      privateKey,
      network: NETWORK,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      connectionGater: {
        denyDialPeer: (peer) => cross(selfId, peer),
        denyInboundEncryptedConnection: (peer) => cross(selfId, peer),
        denyOutboundEncryptedConnection: (peer) => cross(selfId, peer)
      }
    })
    const libp2p = await createLibp2p(options)
    allowColocation(libp2p.services.pubsub!)
    selfId = libp2p.peerId.toString()
    const store = await openDocStore(dir, { fsync: FSYNC })
    const sync = docSync({ libp2p, store }, { network: NETWORK })
    await sync.start()
    const side = i % 2
    sideOf.set(selfId, side)
    nodes.push({ libp2p, store, sync, dir, side })
  }
  const stopAll = async (): Promise<void> => {
    await redials
    for (const nd of nodes) {
      await nd.sync.stop()
      await nd.libp2p.stop()
      await nd.store.close()
      await rm(nd.dir, { recursive: true, force: true })
    }
  }
  // A random connected graph: each node dials up to 4 earlier ones (gossipsub grows its mesh from there).
  for (let i = 1; i < n; i++) {
    const targets = new Set<number>([Math.floor(rand() * i)])
    while (targets.size < Math.min(4, i)) targets.add(Math.floor(rand() * i))
    for (const t of targets) dials.push([i, t])
  }
  // A mesh that does not form must not leave its nodes running and their folders behind.
  let docs: Y.Doc[]
  try {
    docs = await formMesh(n, nodes, dials)
  } catch (err) {
    await stopAll()
    throw err
  }
  return {
    name: 'mesh',
    replicas: nodes.map((nd, i) => ({
      doc: docs[i],
      write: async (key, value) => nd.sync.transact(DOC, d => { d.getMap('m').set(key, value) })
    })),
    sideConnected: () => true,
    counters () {
      const sum = (f: (st: DocSync['stats']) => number): number => nodes.reduce((a, nd) => a + f(nd.sync.stats), 0)
      return {
        gossipIn: sum(st => st.gossip.received),
        published: sum(st => st.gossip.published),
        notices: sum(st => st.gossip.notices),
        fetches: sum(st => st.gossip.fetches),
        relayed: sum(st => st.sync.relayed),
        sessions: sum(st => st.sync.sessions),
        syncKB: Math.round(sum(st => st.sync.bytesSent) / 1024)
      }
    },
    async split () {
      await redials
      splitNow = true
      await Promise.all(nodes.map(async nd => {
        for (const c of nd.libp2p.getConnections()) if (cross(nd.libp2p.peerId.toString(), c.remotePeer)) await c.close().catch(() => {})
      }))
    },
    async heal () {
      splitNow = false
      // The links that were there before the split come back (as a healed network would redial).
      redials = Promise.all(dials.filter(([i, t]) => nodes[i].side !== nodes[t].side)
        .map(async ([i, t]) => nodes[i].libp2p.dial(nodes[t].libp2p.getMultiaddrs()[0]).catch(() => {})))
    },
    stop: stopAll
  }
}

/** Dials the links, opens the document everywhere, and waits until one write reaches every node. */
async function formMesh (n: number, nodes: MeshReplicaNode[], dials: Array<[number, number]>): Promise<Y.Doc[]> {
  // Ten dials at a time, each tried up to three times: a loaded machine times some handshakes out.
  await mapLimit(dials, 10, async ([i, t]) => {
    for (let attempt = 1; ; attempt++) {
      try {
        await nodes[i].libp2p.dial(nodes[t].libp2p.getMultiaddrs()[0])
        return
      } catch (err) {
        if (attempt >= 3) throw err
      }
    }
  })
  const tOpen = performance.now()
  const docs = await Promise.all(nodes.map(async nd => nd.sync.open(DOC)))
  const ready = (nd: MeshReplicaNode): boolean => {
    const pubsub = nd.libp2p.services.pubsub!
    return pubsub.getSubscribers(nd.sync.topic(DOC)).length > 0 && gossipInternals(pubsub).getMeshPeers(nd.sync.topic(DOC)).length > 0
  }
  await waitFor(`mesh of ${n}: every node subscribed with gossip peers`, () => nodes.every(ready), 180_000)
    .catch((err) => { throw new Error(`${err.message} (${nodes.filter(ready).length} of ${n} ready)`) })
  const tMesh = performance.now()
  // A mesh peer each is not yet one connected mesh: a probe write must reach every replica.
  const probe = docs.map(d => d.getMap('m'))
  await nodes[0].sync.transact(DOC, d => { d.getMap('m').set('probe', 1) })
  await waitFor(`mesh of ${n}: a probe write on every replica`, () => probe.every(m => m.has('probe')), 60_000)
  const degree = nodes.map(nd => gossipInternals(nd.libp2p.services.pubsub!).getMeshPeers(nd.sync.topic(DOC)).length)
  console.error(`[${n} nodes] dialled ${dials.length} links; topic mesh on every node ${round(tMesh - tOpen)} ms after open, probe everywhere ${round(performance.now() - tMesh)} ms later; mesh degree ${Math.min(...degree)}-${Math.max(...degree)}, connections per node ${round(nodes.reduce((a, nd) => a + nd.libp2p.getConnections().length, 0) / n)}`)
  return docs
}

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
  // A new set: the default one is shared by every gossipsub instance in the process.
  params.IPColocationFactorWhitelist = new Set([...params.IPColocationFactorWhitelist, '127.0.0.1', '::1'])
}

/** What the bench reads of gossipsub beyond its exported interface (the class is not exported). */
function gossipInternals (pubsub: GossipSub): { getMeshPeers: (topic: string) => string[], score: { params: PeerScoreParams } } {
  return pubsub as any
}

// --- Central: one relay that behaves like y-websocket's reference server, N y-websocket clients ---

interface Relay { url: string, stop: () => Promise<void> }

async function centralRelay (): Promise<Relay> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false })
  await new Promise<void>(resolve => wss.once('listening', resolve))
  const rooms = new Map<string, { doc: Y.Doc, awareness: awarenessProtocol.Awareness, conns: Set<WebSocket> }>()
  const roomOf = (name: string): { doc: Y.Doc, awareness: awarenessProtocol.Awareness, conns: Set<WebSocket> } => {
    let room = rooms.get(name)
    if (room == null) {
      const doc = new Y.Doc({ gc: true })
      const awareness = new awarenessProtocol.Awareness(doc)
      awareness.setLocalState(null)
      const r = { doc, awareness, conns: new Set<WebSocket>() }
      doc.on('update', (update: Uint8Array) => {
        const e = encoding.createEncoder()
        encoding.writeVarUint(e, 0)
        syncProtocol.writeUpdate(e, update)
        const message = encoding.toUint8Array(e)
        for (const c of r.conns) if (c.readyState === WebSocket.OPEN) c.send(message)
      })
      awareness.on('update', ({ added, updated, removed }: any) => {
        const e = encoding.createEncoder()
        encoding.writeVarUint(e, 1)
        encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(awareness, [...added, ...updated, ...removed]))
        const message = encoding.toUint8Array(e)
        for (const c of r.conns) if (c.readyState === WebSocket.OPEN) c.send(message)
      })
      room = r
      rooms.set(name, room)
    }
    return room
  }
  wss.on('connection', (ws, req) => {
    const room = roomOf((req.url ?? '/').slice(1).split('?')[0])
    room.conns.add(ws)
    ws.binaryType = 'arraybuffer'
    ws.on('message', (data: ArrayBuffer) => {
      const d = decoding.createDecoder(new Uint8Array(data))
      const e = encoding.createEncoder()
      while (decoding.hasContent(d)) {
        const type = decoding.readVarUint(d)
        if (type === 0) {
          encoding.writeVarUint(e, 0)
          syncProtocol.readSyncMessage(d, e, room.doc, ws)
          if (encoding.length(e) > 1) ws.send(encoding.toUint8Array(e))
        } else if (type === 1) {
          awarenessProtocol.applyAwarenessUpdate(room.awareness, decoding.readVarUint8Array(d), ws)
        } else {
          break
        }
      }
    })
    ws.on('close', () => { room.conns.delete(ws) })
    const e = encoding.createEncoder()
    encoding.writeVarUint(e, 0)
    syncProtocol.writeSyncStep1(e, room.doc)
    ws.send(encoding.toUint8Array(e))
  })
  const { port } = wss.address() as net.AddressInfo
  return {
    url: `ws://127.0.0.1:${port}`,
    async stop () {
      for (const c of wss.clients) c.terminate()
      await new Promise<void>(resolve => wss.close(() => resolve()))
    }
  }
}

async function centralSetup (n: number): Promise<Setup> {
  const relay = await centralRelay()
  const providers: WebsocketProvider[] = []
  const docs: Y.Doc[] = []
  for (let i = 0; i < n; i++) {
    const doc = new Y.Doc()
    docs.push(doc)
    providers.push(new WebsocketProvider(relay.url, DOC, doc, { WebSocketPolyfill: WebSocket as any, disableBc: true }))
  }
  await waitFor(`central: ${n} clients synced`, () => providers.every(p => p.synced), 60_000)
  const offline = providers.filter((_, i) => i % 2 === 1)
  return {
    name: 'central',
    // A y-websocket client has no acknowledgement: a write is done once handed to the socket.
    replicas: docs.map(doc => ({ doc, write: async (key, value) => { doc.getMap('m').set(key, value) } })),
    sideConnected: (side) => side === 0,
    async split () {
      for (const p of offline) p.disconnect()
      await waitFor('half the clients offline', () => offline.every(p => !p.wsconnected))
    },
    async heal () {
      for (const p of offline) p.connect()
    },
    async stop () {
      for (const p of providers) p.destroy()
      for (const d of docs) d.destroy()
      await relay.stop()
    }
  }
}

// --- the workload ----------------------------------------------------------------------------

/** Counts keys arriving on every replica; `expect(prefix, count)` resolves when all have them. */
function arrivals (setup: Setup): { latencies: (key: string) => number[] | undefined, waitAll: (keys: string[], ms: number) => Promise<number>, stop: () => void } {
  const seen = new Map<string, number[]>()
  const stops: Array<() => void> = []
  setup.replicas.forEach((r, i) => {
    const map = r.doc.getMap('m')
    const f = (evt: Y.YMapEvent<unknown>): void => {
      const now = performance.now()
      for (const k of evt.keysChanged) {
        let times = seen.get(k)
        if (times == null) { times = new Array(setup.replicas.length).fill(NaN); seen.set(k, times) }
        if (Number.isNaN(times[i])) times[i] = now
      }
    }
    map.observe(f)
    stops.push(() => map.unobserve(f))
  })
  return {
    latencies: (key) => seen.get(key),
    async waitAll (keys, ms) {
      const deadline = performance.now() + ms
      for (;;) {
        let last = 0
        let complete = true
        for (const k of keys) {
          const t = seen.get(k)
          if (t == null || t.some(Number.isNaN)) { complete = false; break }
          for (const x of t) if (x > last) last = x
        }
        if (complete) return last
        if (performance.now() > deadline) throw new Error(`${setup.name}: not every replica got ${keys.length} keys within ${ms} ms`)
        await sleep(2)
      }
    },
    stop: () => { for (const s of stops) s() }
  }
}

let phase = 0

/** Writes one update at a time from rotating writers; per write, the time until every replica applied it. */
async function propagation (setup: Setup, writes: number): Promise<{ p50: number, p99: number, all: number[], cpuPerWrite: number }> {
  const tag = `p${phase++}`
  const watch = arrivals(setup)
  const all: number[] = []
  const cpu0 = process.cpuUsage()
  try {
    for (let i = 0; i < writes; i++) {
      const key = `${tag}-${i}`
      const writer = setup.replicas[i % setup.replicas.length]
      const t0 = performance.now()
      await writer.write(key, i)
      const last = await watch.waitAll([key], 30_000)
      all.push(last - t0)
      await sleep(5)
    }
  } finally { watch.stop() }
  // Every node shares this process's CPU: a write's latency here includes waiting for the work
  // of all the others, which real nodes would do in parallel.
  const cpu = process.cpuUsage(cpu0)
  return { p50: percentile(all, 0.5), p99: percentile(all, 0.99), all, cpuPerWrite: (cpu.user + cpu.system) / 1000 / writes }
}

/**
 * `count` updates as fast as the writers go (each keeps up to WINDOW = 500 unacknowledged), from one writer
 * or spread over all: updates/s until every replica has every one. Also bytes on the wire.
 */
async function throughput (setup: Setup, count: number, allWriters: boolean): Promise<{ perSecond: number, wirePerUpdatePerReceiver: number, rawPerUpdate: number }> {
  const tag = `t${phase++}`
  const watch = arrivals(setup)
  const writers = allWriters ? setup.replicas : [setup.replicas[0]]
  let raw = 0
  const offs = writers.map(w => {
    // Local writes carry no transaction origin on either side; remote ones carry their source.
    const f = (u: Uint8Array, origin: unknown): void => { if (origin == null) raw += u.length }
    w.doc.on('update', f)
    return () => w.doc.off('update', f)
  })
  const keys: string[] = []
  for (let i = 0; i < count; i++) keys.push(`${tag}-${i}`)
  await sleep(200)
  const wire0 = wireBytes
  const before = setup.counters?.()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  try {
    await Promise.all(writers.map(async (w, wi) => {
      let inflight: Array<Promise<void>> = []
      for (let i = wi; i < count; i += writers.length) {
        inflight.push(w.write(keys[i], i))
        if (inflight.length >= WINDOW) { await Promise.all(inflight); inflight = [] }
      }
      await Promise.all(inflight)
    }))
    const last = await watch.waitAll(keys, WAIT_MS)
    const wire = wireBytes - wire0
    const rawLocal = raw
    if (before != null) {
      const after = setup.counters!()
      const cpu = process.cpuUsage(cpu0)
      console.error(`  ${allWriters ? 'all writers' : 'one writer'}: ${Object.entries(after).map(([k, v]) => `${k} ${v - before[k]}`).join(', ')}; process CPU ${round((cpu.user + cpu.system) / 1000)} ms in ${round(last - t0)} ms`)
    }
    return {
      perSecond: count / ((last - t0) / 1000),
      wirePerUpdatePerReceiver: wire / (count * (setup.replicas.length - 1)),
      rawPerUpdate: rawLocal / count
    }
  } finally {
    watch.stop()
    for (const off of offs) off()
  }
}

/** Splits, makes `perSide` updates on each side, heals: time from the heal until every replica is equal. */
async function partition (setup: Setup, perSide: number): Promise<number> {
  const tag = `x${phase++}`
  const watch = arrivals(setup)
  try {
    await setup.split()
    const sides = [setup.replicas.filter((_, i) => i % 2 === 0), setup.replicas.filter((_, i) => i % 2 === 1)]
    const keys: string[] = []
    await Promise.all(sides.map(async (side, s) => {
      let inflight: Array<Promise<void>> = []
      for (let i = 0; i < perSide; i++) {
        const key = `${tag}-${s}-${i}`
        keys.push(key)
        inflight.push(side[i % side.length].write(key, i))
        if (inflight.length >= 100) { await Promise.all(inflight); inflight = [] }
      }
      await Promise.all(inflight)
    }))
    // Each side settles first, so what is measured is the healing alone.
    await Promise.all(sides.map(async (side, s) => {
      if (!setup.sideConnected(s)) return
      const mine = keys.filter(k => k.startsWith(`${tag}-${s}-`))
      const deadline = performance.now() + WAIT_MS
      while (!side.every(r => mine.every(k => r.doc.getMap('m').has(k)))) {
        if (performance.now() > deadline) throw new Error(`${setup.name}: side ${s} did not settle`)
        await sleep(10)
      }
    }))
    const t0 = performance.now()
    const before = setup.counters?.()
    const cpu0 = process.cpuUsage()
    await setup.heal()
    await watch.waitAll(keys, WAIT_MS)
    const sv = (d: Y.Doc): string => JSON.stringify([...Y.decodeStateVector(Y.encodeStateVector(d))].sort((a, b) => a[0] - b[0]))
    const first = sv(setup.replicas[0].doc)
    const deadline = performance.now() + WAIT_MS
    while (!setup.replicas.every(r => sv(r.doc) === first)) {
      if (performance.now() > deadline) throw new Error(`${setup.name}: state vectors did not converge`)
      await sleep(5)
    }
    const ms = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    if (before != null) {
      const after = setup.counters!()
      // When each replica had every key: a straggler far behind the median had no path but a late one.
      const complete = setup.replicas.map((_, i) => Math.max(...keys.map(k => watch.latencies(k)![i])) - t0).sort((a, b) => a - b)
      console.error(`  heal: replicas complete first ${round(complete[0])} median ${round(median(complete))} last ${round(complete[complete.length - 1])} ms; ${Object.entries(after).map(([k, v]) => `${k} ${v - before[k]}`).join(', ')}; process CPU ${round((cpu.user + cpu.system) / 1000)} ms in ${round(ms)} ms`)
    }
    return ms
  } finally { watch.stop() }
}

// --- repo size and cold start ---------------------------------------------------------------

async function dirSize (dir: string): Promise<number> {
  let total = 0
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size
  }
  return total
}

/** 100,000 small map updates through one node's doc store (compaction every 500 records). */
async function repoSize (updates: number): Promise<{ bytes: number, rawBytes: number, stateBytes: number, compactions: number, ms: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-docs-repo-'))
  const store = await openDocStore(dir, { fsync: FSYNC })
  const doc = new Y.Doc()
  let rawBytes = 0
  let batch: Array<Promise<void>> = []
  doc.on('update', (u: Uint8Array) => { rawBytes += u.length; batch.push(store.append(DOC, u)) })
  const t0 = performance.now()
  for (let i = 0; i < updates; i++) {
    // A working set of 1,000 keys rewritten over and over, as counters and presence-like state are.
    doc.getMap('m').set(`k${i % 1000}`, i)
    if (batch.length >= 500) { await Promise.all(batch); batch = [] }
  }
  await Promise.all(batch)
  const ms = performance.now() - t0
  const bytes = await dirSize(dir)
  const compactions = store.stats.compactions
  await store.close()
  await rm(dir, { recursive: true, force: true })
  return { bytes, rawBytes, stateBytes: Y.encodeStateAsUpdate(doc).length, compactions, ms }
}

/** A 10 MB document on one Mesh node (docs feature, Helia); a new node opens it: time until complete. */
async function coldStart (mb: number): Promise<{ snapshotMs: number, streamMs: number, centralMs: number, bytes: number }> {
  const dirs: string[] = []
  const nodes: MeshNode[] = []
  const start = async (bootstrap: string[] = []): Promise<MeshNode> => {
    const dir = await mkdtemp(join(tmpdir(), 'bench-docs-cold-'))
    dirs.push(dir)
    const node = new MeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      network: `${NETWORK}-cold`,
      bootstrap,
      storePath: { blocks: join(dir, 'blocks'), datastore: join(dir, 'datastore') },
      repoPath: dir,
      features: [['docs', documents]]
    })
    nodes.push(node)
    await node.start()
    return node
  }
  const relay = await centralRelay()
  try {
    const a = await start()
    const docsA = documentsOf(a)
    const doc = await docsA.open('cold')
    const chunk = 'x'.repeat(100_000)
    for (let i = 0; i < mb * 10; i++) await docsA.sync.transact('cold', d => { d.getText('t').insert(d.getText('t').length, chunk) })
    await docsA.store.compact('cold', doc)
    await waitFor('the snapshot offered', () => docsA.sync.snapshotOf('cold') != null, 60_000)
    const length = doc.getText('t').length
    const bytes = Y.encodeStateAsUpdate(doc).length
    const load = async (): Promise<number> => {
      const b = await start(a.libp2p.getMultiaddrs().map(String))
      await waitFor('the new node connected', () => b.libp2p.getConnections(a.peerId).length > 0)
      const t0 = performance.now()
      const replica = await documentsOf(b).open('cold')
      await waitFor('the new replica complete', () => replica.getText('t').length === length, 60_000)
      return performance.now() - t0
    }
    const snapshotMs = await load()
    // The same without the snapshot: the whole state as one sync step 2 over the stream.
    docsA.sync.setSnapshot('cold', undefined)
    const streamMs = await load()
    // Central: the relay holds the document; a new y-websocket client loads it.
    const seed = new Y.Doc()
    Y.applyUpdate(seed, Y.encodeStateAsUpdate(doc))
    const seeder = new WebsocketProvider(relay.url, 'cold', seed, { WebSocketPolyfill: WebSocket as any, disableBc: true })
    await waitFor('the seeder synced', () => seeder.synced, 60_000)
    const fresh = new Y.Doc()
    await sleep(500)
    const t0 = performance.now()
    const client = new WebsocketProvider(relay.url, 'cold', fresh, { WebSocketPolyfill: WebSocket as any, disableBc: true })
    await waitFor('the new client complete', () => fresh.getText('t').length === length, 60_000)
    const centralMs = performance.now() - t0
    client.destroy()
    seeder.destroy()
    return { snapshotMs, streamMs, centralMs, bytes }
  } finally {
    await relay.stop()
    for (const n of nodes) await n.stop()
    for (const d of dirs) await rm(d, { recursive: true, force: true })
  }
}

// --- helpers ---------------------------------------------------------------------------------

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

async function waitFor (what: string, check: () => boolean, ms = 30_000): Promise<void> {
  const deadline = performance.now() + ms
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

const load = (): string => loadavg().map(x => x.toFixed(2)).join(' ')

// --- main ------------------------------------------------------------------------------------

interface SizeResult {
  nodes: number
  mesh: Record<string, number>
  central: Record<string, number>
}

async function main (): Promise<void> {
  console.log(`documents benchmark; load average ${load()}; fsync ${FSYNC ? 'on' : 'off'}; ${ROUNDS} round(s), mesh and central interleaved, medians`)
  console.log('transport: real TCP on 127.0.0.1 (Noise, yamux) for the mesh, WebSocket over TCP on 127.0.0.1 for the central relay; all in one process')
  const results: SizeResult[] = []
  for (const n of SIZES) {
    const t0 = performance.now()
    const setups = [await meshSetup(n), await centralSetup(n)]
    console.error(`[${n} nodes] set up in ${round((performance.now() - t0) / 1000)} s; load ${load()}`)
    const figures = new Map<string, Map<string, number[]>>(setups.map(s => [s.name, new Map()]))
    const add = (s: Setup, k: string, v: number): void => {
      const m = figures.get(s.name)!
      m.set(k, [...(m.get(k) ?? []), v])
    }
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? setups : [...setups].reverse()
      for (const s of order) {
        const p = await propagation(s, WRITES)
        add(s, 'p50', p.p50)
        add(s, 'p99', p.p99)
        add(s, 'cpuPerWrite', p.cpuPerWrite)
        console.error(`[${n}] ${s.name} round ${r + 1}: propagation p50 ${round(p.p50)} p99 ${round(p.p99)} ms (process CPU ${round(p.cpuPerWrite)} ms per write); load ${load()}`)
      }
      for (const s of order) {
        const one = await throughput(s, BURST, false)
        add(s, 'oneWriter', one.perSecond)
        add(s, 'wireRatio', one.wirePerUpdatePerReceiver / one.rawPerUpdate)
        add(s, 'rawPerUpdate', one.rawPerUpdate)
        add(s, 'wirePerUpdatePerReceiver', one.wirePerUpdatePerReceiver)
        const all = await throughput(s, BURST, true)
        add(s, 'allWriters', all.perSecond)
        console.error(`[${n}] ${s.name} round ${r + 1}: one writer ${round(one.perSecond)}/s, all ${round(all.perSecond)}/s, wire ${round(one.wirePerUpdatePerReceiver)} B/update/receiver vs raw ${round(one.rawPerUpdate)}; load ${load()}`)
      }
      for (const s of order) {
        const ms = await partition(s, PARTITION)
        add(s, 'convergeMs', ms)
        console.error(`[${n}] ${s.name} round ${r + 1}: converged ${round(ms)} ms after the heal; load ${load()}`)
      }
    }
    for (const s of setups) await s.stop()
    const med = (name: string): Record<string, number> => Object.fromEntries([...figures.get(name)!].map(([k, v]) => [k, round(median(v), 2)]))
    results.push({ nodes: n, mesh: med('mesh'), central: med('central') })
  }

  const repo = SKIP.has('repo') ? undefined : await repoSize(REPO_UPDATES)
  if (repo != null) console.error(`repo: ${repo.bytes} bytes after ${REPO_UPDATES} updates (${repo.compactions} compactions, ${round(repo.ms)} ms); load ${load()}`)
  const cold = SKIP.has('cold') ? undefined : await coldStart(COLD_MB)
  if (cold != null) console.error(`cold start: snapshot ${round(cold.snapshotMs)} ms, stream ${round(cold.streamMs)} ms, central ${round(cold.centralMs)} ms; load ${load()}`)

  const verdict = (ok: boolean): string => ok ? 'meets' : 'MISSES'
  const rows: Array<Array<string | number>> = []
  for (const r of results) {
    rows.push([`${r.nodes} nodes: propagation p50 / p99 (ms)`, `${r.mesh.p50} / ${r.mesh.p99}`, `${r.central.p50} / ${r.central.p99}`, 'p99 < 50 ms', verdict(r.mesh.p99 < 50)])
    rows.push([`${r.nodes} nodes: updates/s, one writer`, r.mesh.oneWriter, r.central.oneWriter, '>= 5000', verdict(r.mesh.oneWriter >= 5000)])
    rows.push([`${r.nodes} nodes: updates/s, all writers`, r.mesh.allWriters, r.central.allWriters, '>= 5000', verdict(r.mesh.allWriters >= 5000)])
    rows.push([`${r.nodes} nodes: convergence after heal (ms), ${PARTITION}/side`, r.mesh.convergeMs, r.central.convergeMs, '< 1000 ms', verdict(r.mesh.convergeMs < 1000)])
    rows.push([`${r.nodes} nodes: wire B per update per receiver / raw B`, `${r.mesh.wirePerUpdatePerReceiver} / ${r.mesh.rawPerUpdate} = ${r.mesh.wireRatio}x`, `${r.central.wirePerUpdatePerReceiver} / ${r.central.rawPerUpdate} = ${r.central.wireRatio}x`, '<= 2x', verdict(r.mesh.wireRatio <= 2)])
  }
  if (repo != null) rows.push([`repo after ${REPO_UPDATES} updates (B)`, `${repo.bytes} (raw ${repo.rawBytes}, state ${repo.stateBytes})`, 'in memory', '~ state size', verdict(repo.bytes <= 1.5 * repo.stateBytes + 64 * 1024)])
  if (cold != null) rows.push([`new replica loads ${round(cold.bytes / 1e6)} MB doc (ms)`, `${round(cold.snapshotMs)} (snapshot) / ${round(cold.streamMs)} (stream)`, round(cold.centralMs), '-', '-'])
  console.log(table(['figure', 'mesh', 'central y-websocket', 'target', 'mesh'], rows))
  console.log(`load average at the end ${load()}`)
  console.log(JSON.stringify({ bench: 'docs', fsync: FSYNC, rounds: ROUNDS, loadavg: loadavg(), results, repo, cold }))
}

main().then(() => process.exit(0), (err) => {
  console.error(err)
  process.exit(1)
})
