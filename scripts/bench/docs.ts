// Documents benchmark: Yjs documents replicated by Mesh's doc-sync (gossipsub + y-protocols sync)
// on N nodes (real TCP on 127.0.0.1, Noise, yamux; each node with its own on-disk doc store, fsync
// on), against the same workload through one central y-websocket relay with N y-websocket clients,
// measured in the same run, rounds interleaved.
//
//   node scripts/bench/docs.ts [--sizes 10,50] [--rounds 3] [--writes 150] [--burst 10000]
//                              [--partition 1000] [--repo-updates 100000] [--cold-mb 10]
//                              [--threads 2] [--no-fsync] [--skip repo,cold]
//
// `--burst` updates per throughput phase: 10,000 (2,000 until 2026-12-06), so that a phase lasts
// seconds and its fixed costs (a notice's first trip hop by hop, the first message of each writer)
// are not most of what it times: with 2,000, a 50-node one-writer phase lasted 350-560 ms.
//
// The replicas live in `--threads` worker threads (default: one per core), in contiguous blocks
// (`docs-shard.ts`), so that N nodes on one machine use all its cores as N machines would; with
// `--threads 1` they all take turns on one event loop, which is how the bench ran until
// 2026-12-06. The central relay runs in the main thread, its clients in the shards like the nodes.
//
// No server implementation of y-websocket is installed (y-websocket 3 ships only the client;
// neither `y-websocket/bin/utils` nor `@y/websocket-server` is in node_modules), so the baseline is
// a minimal central relay written here with `ws` + y-protocols that behaves like the reference
// server's utils (one Y.Doc per room in memory, sync step 1 + awareness on connect, every update
// broadcast to every other connection). It keeps nothing on disk: the mesh side fsyncs every
// acknowledged write, the baseline does not.
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import net from 'node:net'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import WebSocket, { WebSocketServer } from 'ws'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as syncProtocol from 'y-protocols/sync'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'
import { openDocStore } from '../../node/doc-store.ts'
import { documents, documentsOf } from '../../node/documents.ts'
import { tuneGarbageCollection } from '../../node/gc-tuning.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { median, percentile, prng, round, table } from './lib/stats.ts'
import { countWireBytes } from './lib/wire.ts'
import { WorkerClient } from './lib/worker-client.ts'
import type { ShardData } from './docs-shard.ts'

const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: '10,50' },
    rounds: { type: 'string', default: '3' },
    writes: { type: 'string', default: '150' },
    burst: { type: 'string', default: '10000' },
    partition: { type: 'string', default: '1000' },
    'repo-updates': { type: 'string', default: '100000' },
    'cold-mb': { type: 'string', default: '10' },
    threads: { type: 'string', default: String(availableParallelism()) },
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
const THREADS = Math.max(1, Number(args.threads))
const FSYNC = !args['no-fsync']
const SKIP = new Set(args.skip.split(',').filter(Boolean))
const NETWORK = 'bench-docs'
const DOC = 'bench'
const WAIT_MS = 120_000
const rand = prng(7)
/** Wall-clock milliseconds, the same clock in every thread. */
const now = (): number => performance.timeOrigin + performance.now()
// Nodes run V8 as `mesh start` runs it (node/gc-tuning.ts; MESH_V8_DEFAULT_GC=1 for V8's default).
tuneGarbageCollection()

/** Bytes this thread (the central relay) writes to sockets; the shards count their own. */
const wireBytes = countWireBytes()

// --- the shards: worker threads hosting the replicas ----------------------------------------

/** The worker threads of one setup, their replicas in contiguous blocks, and the keys they saw arrive. */
class Shards {
  readonly workers: WorkerClient[] = []
  readonly blocks: number[][] = []
  /** key → shards that have it on every replica, and when the last of them got it. */
  private readonly arrived = new Map<string, { shards: number, last: number }>()
  readonly n: number

  constructor (n: number, data: Omit<ShardData, 'indices'>) {
    this.n = n
    const k = Math.min(THREADS, n)
    for (let s = 0; s < k; s++) {
      const indices: number[] = []
      for (let i = Math.floor(s * n / k); i < Math.floor((s + 1) * n / k); i++) indices.push(i)
      this.blocks.push(indices)
      this.workers.push(new WorkerClient(new URL('./docs-shard.ts', import.meta.url), { ...data, indices } satisfies ShardData, (m: any) => {
        for (const [key, t] of (m.arrived ?? []) as Array<[string, number]>) {
          const a = this.arrived.get(key)
          if (a == null) this.arrived.set(key, { shards: 1, last: t })
          else { a.shards++; a.last = Math.max(a.last, t) }
        }
      }))
    }
  }

  shardOf (index: number): number {
    return this.blocks.findIndex(b => b.includes(index))
  }

  async call<T = unknown> (shard: number, op: string, args?: unknown): Promise<T> {
    return await this.workers[shard].call<T>(op, args)
  }

  async all<T = unknown> (op: string, args?: (shard: number) => unknown): Promise<T[]> {
    return Promise.all(this.workers.map(async (_, s) => this.call<T>(s, op, args?.(s))))
  }

  /** Resolves with the time the last of `keys` reached its last replica. */
  async waitAll (keys: string[], ms: number): Promise<number> {
    const deadline = performance.now() + ms
    for (;;) {
      let last = 0
      let complete = true
      for (const k of keys) {
        const a = this.arrived.get(k)
        if (a == null || a.shards < this.workers.length) { complete = false; break }
        if (a.last > last) last = a.last
      }
      if (complete) return last
      if (performance.now() > deadline) throw new Error(`not every replica got ${keys.length} keys within ${ms} ms`)
      await sleep(2)
    }
  }

  async forget (prefix: string): Promise<void> {
    for (const k of this.arrived.keys()) if (k.startsWith(prefix)) this.arrived.delete(k)
    await this.all('forget', () => ({ prefix }))
  }

  async stop (): Promise<void> {
    try {
      await this.all('stop')
    } finally {
      await Promise.all(this.workers.map(async w => w.terminate()))
    }
  }
}

// --- what both setups offer the workload -----------------------------------------------------

interface Setup {
  name: 'mesh' | 'central'
  shards: Shards
  /** Writes one small update on replica i; resolves when it is acknowledged. */
  write: (i: number, key: string, value: unknown) => Promise<void>
  /** Cuts the replicas into two sides that cannot reach each other (central: one side offline). */
  split: () => Promise<void>
  /**
   * Lets the sides reach each other again and resolves at once: the reconnections run while
   * convergence is timed (a hundred handshakes at once take seconds of CPU, and a replica need
   * not wait for the slowest of them).
   */
  heal: () => Promise<void>
  /** Whether a side's replicas reach each other during the split (central: the offline side does not). */
  sideConnected: (side: number) => boolean
  /** Work done so far, summed over the nodes (mesh: doc-sync's counters), to print per phase. */
  counters?: () => Promise<Record<string, number>>
  stop: () => Promise<void>
}

function shardedWrite (shards: Shards): Setup['write'] {
  return async (i, key, value) => shards.call(shards.shardOf(i), 'write', { index: i, key, value })
}

// --- Mesh: libp2p + doc-sync + doc store per node, in the shards -------------------------------

async function meshSetup (n: number): Promise<Setup> {
  const shards = new Shards(n, { kind: 'mesh', network: NETWORK, doc: DOC, fsync: FSYNC })
  try {
    const started = (await shards.all<Array<{ index: number, peerId: string, addr: string }>>('start')).flat()
    const addr = new Map(started.map(s => [s.index, s.addr]))
    // A random connected graph: each node dials up to 4 earlier ones (gossipsub grows its mesh from there).
    const dials: Array<[number, number]> = []
    for (let i = 1; i < n; i++) {
      const targets = new Set<number>([Math.floor(rand() * i)])
      while (targets.size < Math.min(4, i)) targets.add(Math.floor(rand() * i))
      for (const t of targets) dials.push([i, t])
    }
    const linksOf = (s: number, which: Array<[number, number]>): Array<[number, string]> =>
      which.filter(([i]) => shards.shardOf(i) === s).map(([i, t]) => [i, addr.get(t)!])
    const tForm = performance.now()
    await shards.all('form', s => ({ sides: started.map(x => [x.peerId, x.index % 2]), links: linksOf(s, dials) }))
    const tMesh = performance.now()
    // A mesh peer each is not yet one connected mesh: a probe write must reach every replica.
    await shards.call(0, 'write', { index: 0, key: 'probe', value: 1 })
    await shards.waitAll(['probe'], 60_000)
    const stats = (await shards.all<Array<{ degree: number, connections: number }>>('meshStats')).flat()
    const degree = stats.map(x => x.degree)
    console.error(`[${n} nodes] ${shards.workers.length} thread(s); dialled ${dials.length} links and formed the topic mesh in ${round(tMesh - tForm)} ms, probe everywhere ${round(performance.now() - tMesh)} ms later; mesh degree ${Math.min(...degree)}-${Math.max(...degree)}, connections per node ${round(stats.reduce((a, x) => a + x.connections, 0) / n)}`)
    const crossDials = dials.filter(([i, t]) => i % 2 !== t % 2)
    return {
      name: 'mesh',
      shards,
      write: shardedWrite(shards),
      sideConnected: () => true,
      async counters () {
        const all = await shards.all<Record<string, number>>('counters')
        return Object.fromEntries(Object.keys(all[0]).map(k => [k, all.reduce((a, c) => a + c[k], 0)]))
      },
      async split () { await shards.all('split') },
      // The links that were there before the split come back (as a healed network would redial).
      async heal () { await shards.all('heal', s => ({ links: linksOf(s, crossDials) })) },
      stop: async () => shards.stop()
    }
  } catch (err) {
    // A mesh that does not form must not leave its nodes running and their folders behind.
    await shards.stop().catch(() => {})
    throw err
  }
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
  const shards = new Shards(n, { kind: 'central', network: NETWORK, doc: DOC, fsync: FSYNC, relayUrl: relay.url })
  try {
    await shards.all('start')
  } catch (err) {
    await shards.stop().catch(() => {})
    await relay.stop()
    throw err
  }
  return {
    name: 'central',
    shards,
    write: shardedWrite(shards),
    sideConnected: (side) => side === 0,
    async split () { await shards.all('split') },
    async heal () { await shards.all('heal', () => ({ links: [] })) },
    async stop () {
      try { await shards.stop() } finally { await relay.stop() }
    }
  }
}

// --- the workload ----------------------------------------------------------------------------

let phase = 0

async function totalWireBytes (setup: Setup): Promise<number> {
  return wireBytes() + (await setup.shards.all<number>('wireBytes')).reduce((a, b) => a + b, 0)
}

/** Writes one update at a time from rotating writers; per write, the time until every replica applied it. */
async function propagation (setup: Setup, writes: number): Promise<{ p50: number, p99: number, all: number[], cpuPerWrite: number }> {
  const tag = `p${phase++}-`
  const all: number[] = []
  // The previous round's heal redials in the background; writes timed during those handshakes
  // measured them (two writes of 150 at 210-310 ms), not propagation.
  await setup.shards.all('settle')
  const before = await setup.counters?.()
  const cpu0 = process.cpuUsage()
  try {
    for (let i = 0; i < writes; i++) {
      const key = `${tag}${i}`
      const t0 = now()
      await setup.write(i % setup.shards.n, key, i)
      const last = await setup.shards.waitAll([key], 30_000)
      all.push(last - t0)
      await sleep(5)
    }
  } finally { await setup.shards.forget(tag) }
  if (before != null) {
    const after = await setup.counters!()
    const slowest = [...all].sort((a, b) => b - a).slice(0, 3).map(x => round(x)).join(', ')
    console.error(`  propagation: slowest ${slowest} ms; ${Object.entries(after).map(([k, v]) => `${k} ${v - before[k]}`).join(', ')}`)
  }
  // The nodes share this machine's cores: a write's latency here includes waiting for the work
  // of all the others, which real nodes would do in parallel.
  const cpu = process.cpuUsage(cpu0)
  return { p50: percentile(all, 0.5), p99: percentile(all, 0.99), all, cpuPerWrite: (cpu.user + cpu.system) / 1000 / writes }
}

/** `keys` spread over `writers` round robin, grouped by the shard that hosts each writer. */
function writeMany (setup: Setup, writers: number[], keys: string[]): Promise<number[]> {
  // One pass over the keys: this runs inside the timed phase.
  const mine = writers.map((): string[] => [])
  keys.forEach((k, i) => mine[i % writers.length].push(k))
  const perShard = setup.shards.workers.map((): Array<[number, string[]]> => [])
  writers.forEach((w, wi) => perShard[setup.shards.shardOf(w)].push([w, mine[wi]]))
  return setup.shards.all<number>('writeMany', s => ({ writers: perShard[s] }))
}

/**
 * `count` updates as fast as the writers go (each keeps up to WINDOW = 500 unacknowledged), from one writer
 * or spread over all: updates/s until every replica has every one. Also bytes on the wire.
 */
async function throughput (setup: Setup, count: number, allWriters: boolean): Promise<{ perSecond: number, wirePerUpdatePerReceiver: number, rawPerUpdate: number }> {
  const tag = `t${phase++}-`
  const n = setup.shards.n
  const writers = allWriters ? Array.from({ length: n }, (_, i) => i) : [0]
  const keys: string[] = []
  for (let i = 0; i < count; i++) keys.push(`${tag}${i}`)
  await sleep(200)
  const wire0 = await totalWireBytes(setup)
  const before = await setup.counters?.()
  const cpu0 = process.cpuUsage()
  const t0 = now()
  try {
    const raw = (await writeMany(setup, writers, keys)).reduce((a, b) => a + b, 0)
    const last = await setup.shards.waitAll(keys, WAIT_MS)
    const cpu = process.cpuUsage(cpu0)
    const wire = await totalWireBytes(setup) - wire0
    if (before != null) {
      const after = (await setup.counters!())
      console.error(`  ${allWriters ? 'all writers' : 'one writer'}: ${Object.entries(after).map(([k, v]) => `${k} ${v - before[k]}`).join(', ')}; process CPU ${round((cpu.user + cpu.system) / 1000)} ms in ${round(last - t0)} ms`)
    }
    return {
      perSecond: count / ((last - t0) / 1000),
      wirePerUpdatePerReceiver: wire / (count * (n - 1)),
      rawPerUpdate: raw / count
    }
  } finally { await setup.shards.forget(tag) }
}

/** Splits, makes `perSide` updates on each side, heals: time from the heal until every replica is equal. */
async function partition (setup: Setup, perSide: number): Promise<number> {
  const tag = `x${phase++}-`
  const { shards } = setup
  try {
    await setup.split()
    const sides = [0, 1].map(s => Array.from({ length: shards.n }, (_, i) => i).filter(i => i % 2 === s))
    const keysOf = sides.map((_, s) => Array.from({ length: perSide }, (_, i) => `${tag}${s}-${i}`))
    await Promise.all(sides.map(async (side, s) => writeMany(setup, side, keysOf[s])))
    // Each side settles first, so what is measured is the healing alone.
    await Promise.all(sides.map(async (_, s) => {
      if (!setup.sideConnected(s)) return
      const deadline = performance.now() + WAIT_MS
      while (!(await shards.all<boolean>('hasAll', () => ({ keys: keysOf[s], side: s }))).every(Boolean)) {
        if (performance.now() > deadline) throw new Error(`${setup.name}: side ${s} did not settle`)
        await sleep(10)
      }
    }))
    const keys = keysOf.flat()
    const before = await setup.counters?.()
    const cpu0 = process.cpuUsage()
    const t0 = now()
    await setup.heal()
    await shards.waitAll(keys, WAIT_MS)
    const deadline = performance.now() + WAIT_MS
    for (;;) {
      const svs = (await shards.all<string[]>('stateVectors')).flat()
      if (svs.every(sv => sv === svs[0])) break
      if (performance.now() > deadline) throw new Error(`${setup.name}: state vectors did not converge`)
      await sleep(5)
    }
    const ms = now() - t0
    const cpu = process.cpuUsage(cpu0)
    if (before != null) {
      const after = await setup.counters!()
      // When each replica had every key: a straggler far behind the median had no path but a late one.
      const complete = (await shards.all<number[]>('lastArrivals', () => ({ keys }))).flat().map(t => t - t0).sort((a, b) => a - b)
      console.error(`  heal: replicas complete first ${round(complete[0])} median ${round(median(complete))} last ${round(complete[complete.length - 1])} ms; ${Object.entries(after).map(([k, v]) => `${k} ${v - before[k]}`).join(', ')}; process CPU ${round((cpu.user + cpu.system) / 1000)} ms in ${round(ms)} ms`)
    }
    return ms
  } finally { await shards.forget(tag) }
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
  console.log(`transport: real TCP on 127.0.0.1 (Noise, yamux) for the mesh, WebSocket over TCP on 127.0.0.1 for the central relay; replicas in ${THREADS} worker thread(s) of one process, the relay in the main thread`)
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
  console.log(JSON.stringify({ bench: 'docs', fsync: FSYNC, threads: THREADS, rounds: ROUNDS, loadavg: loadavg(), results, repo, cold }))
}

main().then(() => process.exit(0), (err) => {
  console.error(err)
  process.exit(1)
})
