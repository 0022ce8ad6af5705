// DHT benchmark: meshes of N nodes in one process (real TCP on 127.0.0.1, real Noise), each node
// bootstrapped to one seed, for Mesh's libp2p configuration and js-libp2p's defaults as a baseline.
//
//   node scripts/bench/dht.ts [--sizes 25,50,100] [--pairs 200] [--only mesh|baseline]
//                             [--concurrency 1] [--idle 5] [--formation-timeout 60]
//
// Every (configuration, size) runs in a fresh child process, so RSS and CPU figures belong to that
// mesh alone. Lookups run one at a time by default: every node shares this process's one JS
// thread, so concurrent lookups would measure how long each waits for the others' CPU, which
// lookups from separate machines never do (--concurrency N shows that too). The parent prints a table and, last, one JSON line with every figure.
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import { MeshNode } from '../../node/mesh-node.ts'
import { cpuOver, MB, runChild as runChildProcess, memory, memoryDelta } from './lib/process.ts'
import { mapLimit, mean, percentile, prng, round, table } from './lib/stats.ts'
import type { KadDHT } from '@libp2p/kad-dht'
import type { PeerId } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Libp2p } from 'libp2p'

type Config = 'mesh' | 'baseline'

const JOIN_CONCURRENCY = 10

const FORMATION_DEFINITION = `formation = wall time from starting the seed until (a) every node has started ` +
  `(${JOIN_CONCURRENCY} at a time) and holds a connection to the seed and (b) one full round of n DHT lookups ` +
  '(16 at a time, 10 s timeout, useCache false; a random derangement, so every node looks up one other node and ' +
  'is looked up once) all succeed; a round with a failure is repeated with a new derangement.'

const BASELINE_CHANGES = 'baseline = tcp+noise+yamux+identify+ping+kadDHT, all defaults except kadDHT ' +
  '{ peerInfoMapper: passthroughMapper, clientMode: false } (without them kad-dht drops 127.0.0.1 addresses and ' +
  'never serves queries, so no lookup can succeed on loopback); nodes join by dialing the seed, retried until ' +
  'it accepts (the default inbound rate limit of 5 connections/s per host rejects most of a burst).'

interface Result {
  config: Config
  nodes: number
  formationMs: number
  formationRounds: number
  pairs: number
  ok: number
  p50: number
  p95: number
  p99: number
  queriedMean: number
  rssPerNodeMB: number
  heapPerNodeMB: number
  externalPerNodeMB: number
  arrayBuffersPerNodeMB: number
  idleCpuPerNodePct: number
  connectionsPerNode: number
  /** Where formation's time goes: CPU the process spent, connections opened, and one connection's CPU. */
  formationCpuMs: number
  connectionsOpened: number
  connectionCpuMs: number
  /** The slowest 5% of measured lookups, and what happened during them. */
  tail: TailLookup[]
}

/** One slow lookup: how long, how many connections were opened meanwhile, GC pauses meanwhile. */
interface TailLookup { ms: number, ok: boolean, queried: number, dials: number, gcMs: number }

/** One node under test, whichever configuration. */
interface BenchNode {
  peerId: PeerId
  libp2p: Libp2p<{ dht: KadDHT }>
  start: () => Promise<void>
  stop: () => Promise<void>
  findPeer: (peer: PeerId, signal: AbortSignal) => Promise<{ queried: number }>
}

async function meshNode (bootstrap: string[]): Promise<BenchNode> {
  const node = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), gossip: false, bootstrap })
  return {
    // Helia builds libp2p on start: read through the node.
    get peerId () { return node.peerId },
    get libp2p () { return node.libp2p },
    start: async () => node.start(),
    stop: async () => node.stop(),
    findPeer: async (peer, signal) => node.findPeer(peer, { signal })
  }
}

async function baselineNode (): Promise<BenchNode> {
  const libp2p = await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    start: false,
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({ peerInfoMapper: passthroughMapper, clientMode: false })
    }
  })
  return {
    peerId: libp2p.peerId,
    libp2p,
    start: async () => libp2p.start(),
    stop: async () => libp2p.stop(),
    findPeer: async (peer, signal) => {
      // The same loop as MeshNode.findPeer: count answers until the target shows up.
      let queried = 0
      for await (const event of libp2p.services.dht.findPeer(peer, { useCache: false, signal })) {
        if (event.name === 'PEER_RESPONSE') queried++
        if (event.name === 'FINAL_PEER') return { queried }
      }
      throw new Error('not found')
    }
  }
}

/** Dials the seed until a connection is open (the seed may reject a burst of inbound connections). */
async function join (node: BenchNode, seed: Multiaddr, deadline: number): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    if (node.libp2p.getConnections().some(c => c.remoteAddr.equals(seed) && c.status === 'open')) return
    try {
      await node.libp2p.dial(seed, { signal: AbortSignal.timeout(10_000) })
      return
    } catch (err) {
      if (Date.now() > deadline) throw err
      await new Promise(resolve => setTimeout(resolve, Math.min(2000, 100 * 2 ** attempt) * (0.5 + Math.random())))
    }
  }
}

async function lookup (from: BenchNode, to: BenchNode, timeoutMs: number): Promise<{ ok: boolean, ms: number, queried: number }> {
  const t0 = performance.now()
  try {
    const { queried } = await from.findPeer(to.peerId, AbortSignal.timeout(timeoutMs))
    return { ok: true, ms: performance.now() - t0, queried }
  } catch {
    return { ok: false, ms: performance.now() - t0, queried: 0 }
  }
}

/**
 * CPU (both ends, ms) of one new connection in this configuration, up to identify on both sides:
 * one isolated pair at a time, stopped after, so nothing else runs meanwhile.
 */
async function connectionCost (make: (bootstrap: string[]) => Promise<BenchNode>, pairs = 20, warmup = 10): Promise<number> {
  let cpu = 0
  for (let i = 0; i < warmup + pairs; i++) {
    const [a, b] = await Promise.all([make([]), make([])])
    await a.start()
    await b.start()
    const identified = [a, b].map(async node => new Promise(resolve => node.libp2p.addEventListener('peer:identify', resolve, { once: true })))
    const c0 = process.cpuUsage()
    await b.libp2p.dial(a.libp2p.getMultiaddrs()[0], { signal: AbortSignal.timeout(10_000) })
    await Promise.all(identified)
    const d = process.cpuUsage(c0)
    // the first connections of a process also pay for compiling the code they run
    if (i >= warmup) cpu += (d.user + d.system) / 1000
    await Promise.all([a.stop(), b.stop()])
  }
  return cpu / pairs
}

async function child (config: Config, n: number, pairs: number, concurrency: number, idleS: number, formationTimeoutS: number): Promise<Result> {
  const make = config === 'mesh' ? meshNode : async () => baselineNode()
  const connectionCpuMs = await connectionCost(make)
  const before = await memory()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const deadline = Date.now() + formationTimeoutS * 1000
  const seed = await make([])
  await seed.start()
  const seedAddr = seed.libp2p.getMultiaddrs()[0]
  const others = await Promise.all(Array.from({ length: n - 1 }, async () => make([seedAddr.toString()])))
  // Every connection has one inbound end: counting those counts connections, wherever they came
  // from. A node is hooked as soon as it has started, before any other node can know its address.
  let connectionsOpened = 0
  let counting = true
  // Connections opened by anyone, at any time: a measured lookup's share is the difference.
  let everOpened = 0
  const countOutbound = (node: BenchNode): void => {
    node.libp2p.addEventListener('connection:open', (evt) => {
      if (evt.detail.direction !== 'inbound') return
      everOpened++
      if (counting) connectionsOpened++
    })
  }
  countOutbound(seed)
  // Nodes join JOIN_CONCURRENCY at a time: a whole fleet dialing one seed in the same millisecond
  // only measures how this 2-core machine queues 100 Noise handshakes behind each other.
  let notJoined = 0
  await mapLimit(others, JOIN_CONCURRENCY, async node => {
    await node.start()
    countOutbound(node)
    await join(node, seedAddr, deadline).catch(() => { notJoined++ })
  })
  if (notJoined > 0) process.stderr.write(`${config} ${n}: ${notJoined} nodes could not join the seed before the formation timeout\n`)
  const nodes = [seed, ...others]
  phase(`${config} ${n}: started and joined`, t0)
  const rand = prng(n * 7919 + (config === 'mesh' ? 1 : 2))

  // Formation: rounds of n lookups over a random derangement until one round fully succeeds.
  let rounds = 0
  for (;;) {
    rounds++
    const order = derangement(n, rand)
    const results = await mapLimit(nodes, 16, async (node, i) => lookup(node, nodes[order[i]], 10_000))
    phase(`${config} ${n}: round ${rounds}: ${results.filter(r => r.ok).length}/${n} ok, p50 ${round(percentile(results.map(r => r.ms), 0.5))} ms, max ${round(Math.max(...results.map(r => r.ms)))} ms`, t0)
    if (results.every(r => r.ok)) break
    if (Date.now() > deadline) {
      process.stderr.write(`${config} ${n}: formation not reached in ${formationTimeoutS} s (${results.filter(r => !r.ok).length}/${n} failed in the last round)\n`)
      break
    }
  }
  const formationMs = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  const formationCpuMs = (cpu.user + cpu.system) / 1000
  counting = false

  const { cpuMs, wallMs } = await cpuOver(idleS * 1000)
  const mem = memoryDelta(await memory(), before)
  const connectionsPerNode = mean(nodes.map(node => node.libp2p.getConnections().length))

  const chosen = Array.from({ length: pairs }, () => {
    const a = Math.floor(rand() * n)
    let b = Math.floor(rand() * (n - 1))
    if (b >= a) b++
    return [a, b] as const
  })
  // GC pauses, to tell a slow lookup that waited on the collector from one that waited on the DHT.
  const gcs: Array<{ start: number, end: number }> = []
  const gcObserver = new PerformanceObserver(list => { for (const e of list.getEntries()) gcs.push({ start: e.startTime, end: e.startTime + e.duration }) })
  gcObserver.observe({ entryTypes: ['gc'] })
  const results = await mapLimit(chosen, concurrency, async ([a, b]) => {
    const opened = everOpened
    const t0 = performance.now()
    const r = await lookup(nodes[a], nodes[b], 5_000)
    const t1 = performance.now()
    return { ...r, dials: everOpened - opened, t0, t1 }
  })
  await new Promise(resolve => setImmediate(resolve)) // the observer's last entries
  gcObserver.disconnect()
  const gcDuring = (t0: number, t1: number): number => gcs.reduce((sum, g) => sum + Math.max(0, Math.min(g.end, t1) - Math.max(g.start, t0)), 0)
  const tail: TailLookup[] = [...results].sort((x, y) => y.ms - x.ms).slice(0, Math.max(1, Math.ceil(results.length * 0.05)))
    .map(r => ({ ms: round(r.ms), ok: r.ok, queried: r.queried, dials: r.dials, gcMs: round(gcDuring(r.t0, r.t1)) }))
  const ok = results.filter(r => r.ok)
  const ms = results.map(r => r.ms) // failures count at the time they took, so they show in the tail

  await Promise.all(nodes.map(async node => node.stop().catch(() => {})))
  return {
    config,
    nodes: n,
    formationMs: round(formationMs, 0),
    formationRounds: rounds,
    pairs,
    ok: ok.length,
    p50: round(percentile(ms, 0.5)),
    p95: round(percentile(ms, 0.95)),
    p99: round(percentile(ms, 0.99)),
    queriedMean: round(mean(ok.map(r => r.queried)), 2),
    rssPerNodeMB: round(mem.rss / n / MB, 2),
    heapPerNodeMB: round(mem.heapUsed / n / MB, 2),
    externalPerNodeMB: round(mem.external / n / MB, 2),
    arrayBuffersPerNodeMB: round(mem.arrayBuffers / n / MB, 2),
    idleCpuPerNodePct: round(cpuMs / wallMs * 100 / n, 3),
    connectionsPerNode: round(connectionsPerNode, 1),
    formationCpuMs: round(formationCpuMs, 0),
    connectionsOpened,
    connectionCpuMs: round(connectionCpuMs, 2),
    tail
  }
}

/** Progress on stderr with --verbose. */
function phase (what: string, t0: number): void {
  if (process.env.BENCH_VERBOSE != null) process.stderr.write(`[${round((performance.now() - t0) / 1000, 2)} s] ${what}\n`)
}

/** A random permutation with no fixed point. */
function derangement (n: number, rand: () => number): number[] {
  for (;;) {
    const p = Array.from({ length: n }, (_, i) => i)
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [p[i], p[j]] = [p[j], p[i]]
    }
    if (p.every((v, i) => v !== i)) return p
  }
}

async function runChild (args: string[]): Promise<Result> {
  return runChildProcess<Result>(fileURLToPath(import.meta.url), args)
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '25,50,100' },
      pairs: { type: 'string', default: '200' },
      only: { type: 'string' },
      concurrency: { type: 'string', default: '1' },
      idle: { type: 'string', default: '5' },
      'formation-timeout': { type: 'string', default: '60' },
      child: { type: 'string' },
      size: { type: 'string' }
    }
  })
  const pairs = Number(values.pairs)
  const concurrency = Number(values.concurrency)
  const idle = Number(values.idle)
  const formationTimeout = Number(values['formation-timeout'])
  if (values.child != null) {
    const result = await child(values.child as Config, Number(values.size), pairs, concurrency, idle, formationTimeout)
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`)
    process.exit(0)
  }
  const sizes = values.sizes.split(',').map(Number)
  if (sizes.some(s => !Number.isInteger(s) || s < 3)) throw new Error(`--sizes: integers >= 3, got ${values.sizes}`)
  if (values.only != null && values.only !== 'mesh' && values.only !== 'baseline') throw new Error('--only: mesh or baseline')
  const configs: Config[] = values.only != null ? [values.only as Config] : ['mesh', 'baseline']
  console.log(FORMATION_DEFINITION)
  console.log(BASELINE_CHANGES)
  console.log(`lookups: ${pairs} random (from, to) pairs per mesh, ${concurrency} at a time, 5 s timeout, useCache false; ` +
    `latency percentiles include failures; queried = peers that answered before the target was found; ` +
    `RSS/heap/external per node = process delta after GC / nodes; idle CPU = process CPU time over ${idle} s after formation / nodes`)
  const results: Result[] = []
  for (const size of sizes) {
    for (const config of configs) {
      try {
        results.push(await runChild(['--child', config, '--size', String(size), '--pairs', String(pairs),
          '--concurrency', String(concurrency), '--idle', String(idle), '--formation-timeout', String(formationTimeout)]))
        console.error(`${config} ${size}: done`)
      } catch (err: any) {
        console.error(`${config} ${size}: ${err.message}`)
      }
    }
  }
  console.log(table(
    ['config', 'nodes', 'formation s', 'rounds', 'ok', 'p50 ms', 'p95 ms', 'p99 ms', 'queried', 'RSS MB/node', 'heap', 'external', 'conns/node', 'idle CPU %/node'],
    results.map(r => [r.config, r.nodes, round(r.formationMs / 1000, 1), r.formationRounds, `${r.ok}/${r.pairs}`, r.p50, r.p95, r.p99,
      r.queriedMean, r.rssPerNodeMB, r.heapPerNodeMB, r.externalPerNodeMB, r.connectionsPerNode, r.idleCpuPerNodePct])
  ))
  console.log('\nwhere formation time goes (one process, so one JS thread for every node: CPU time is wall time):')
  console.log(table(
    ['config', 'nodes', 'formation s', 'CPU s', 'connections opened', 'CPU/connection ms', 'connections x CPU s', 'share of CPU'],
    results.map(r => {
      const connS = r.connectionsOpened * r.connectionCpuMs / 1000
      return [r.config, r.nodes, round(r.formationMs / 1000, 1), round(r.formationCpuMs / 1000, 1), r.connectionsOpened, r.connectionCpuMs,
        round(connS, 1), `${round(100 * connS / (r.formationCpuMs / 1000), 0)}%`]
    })
  ))
  console.log('(connections opened counts the inbound end of every connection any node opened during formation, the seed joins included; ' +
    'CPU/connection is TCP+Noise+yamux+identify for both ends, measured on isolated pairs in the same process before the mesh starts)')
  // A lookup's answer names the peers nearest the target, and kad-dht pings (so dials) each one
  // it does not know while its routing table has room: ~4 new connections after a lookup, ~20 ms of
  // CPU each, on the one thread every node shares. A lookup that starts while they are set up
  // waits for them; on separate machines it would not.
  console.log('\nthe slowest 5% of lookups, and what happened while each ran (dials: connections any node opened meanwhile; GC: collector pauses meanwhile):')
  for (const r of results) {
    const withDials = r.tail.filter(t => t.dials > 0).length
    const gc = r.tail.filter(t => t.gcMs > 0).length
    console.log(`${r.config} ${r.nodes}: ${r.tail.length} lookups of ${r.tail.at(-1)?.ms ?? '-'}-${r.tail[0]?.ms ?? '-'} ms; ${withDials} opened a connection, ${gc} overlapped a GC pause; ` +
      r.tail.map(t => `${t.ms} ms (${t.dials} dials, GC ${t.gcMs} ms, ${t.queried} asked${t.ok ? '' : ', failed'})`).join(', '))
  }
  console.log(JSON.stringify({ bench: 'dht', results }))
}

await main()
