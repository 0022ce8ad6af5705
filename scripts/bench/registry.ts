// Registry benchmark: meshes of N Mesh nodes in one process on @libp2p/memory, each running only
// the descriptors feature, with seeded injected latencies. Figures:
//  - join: time for a newly joined node to learn every live descriptor (start() to all known);
//  - allocation latency p50/p99 (allocate(), lease round trip included) for `accelerator = gpu`,
//    which 10% of nodes match;
//  - how often the chosen node is the truly nearest eligible one, against the injected latencies;
//  - median relative error of the latency estimates (Vivaldi) for nodes a node never pinged.
//
//   node scripts/bench/registry.ts [--sizes 50,100] [--seed 1] [--settle 30] [--joins 3]
//                                  [--allocs 2] [--ping 1000]
//
// Latency model: node i sits at a point p_i of a plane (8 regions, 10-70 ms apart, nodes spread
// a few ms around their region's centre) behind an access link of h_i ms; the RTT between i and j
// is |p_i - p_j| + h_i + h_j (Vivaldi's own model, so the estimate error measures the system, not
// the model). @libp2p/memory's `latency` delays both directions of a connection by the *listener's*
// latency (so an RTT would depend on who dialled), so it runs at 0 and a thin wrapper delays each
// chunk a node receives by half the pair's RTT, keeping order (a pipe, not a queue of sleeps).
//
// Each size runs in a fresh child process; the parent prints a table and a final JSON line.
import * as os from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { memory } from '@libp2p/memory'
import { descriptorsFeature, descriptorsOf } from '../../node/descriptors.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { parseConstraints } from '../../registry/constraints.ts'
import { cpuOver, MB, runChild as runChildProcess, memory as memorySample } from './lib/process.ts'
import { median, percentile, prng, round, table } from './lib/stats.ts'

const TARGETS = { joinMs: 5_000, allocP99Ms: 50, nearestPct: 95, estimateErrPct: 15 }

interface Result {
  nodes: number
  formationS: number
  joinMs: number[]
  joinMedianMs: number
  joinMaxMs: number
  allocations: number
  allocFailures: number
  allocP50Ms: number
  allocP99Ms: number
  nearestPct: number
  /** Chosen node within 10% (or 1 ms) of the truly nearest eligible one. */
  nearWithin10Pct: number
  estimatePairs: number
  estimateErrMedianPct: number
  estimateErrP90Pct: number
  measuredErrMedianPct: number
  connectionsPerNode: number
  rssPerNodeMB: number
  idleCpuPct: number
  loadavg: number[]
  /** Per node over the whole run: descriptors published, envelopes received by gossip and by pull. */
  traffic: { published: number, gossip: number, pull: number, wallS: number }
}

/** Injected RTT (ms) between nodes a and b. */
type Rtt = (a: number, b: number) => number

function model (count: number, rand: () => number): Rtt {
  const centres = Array.from({ length: 8 }, (_, r) => {
    const angle = (r / 8) * 2 * Math.PI
    const radius = 10 + 25 * rand()
    return [radius * Math.cos(angle), radius * Math.sin(angle)]
  })
  const pos: number[][] = []
  const height: number[] = []
  for (let i = 0; i < count; i++) {
    const c = centres[Math.floor(rand() * centres.length)]
    pos.push([c[0] + (rand() - 0.5) * 8, c[1] + (rand() - 0.5) * 8])
    height.push(0.5 + rand() * 3)
  }
  return (a, b) => a === b ? 0 : Math.hypot(pos[a][0] - pos[b][0], pos[a][1] - pos[b][1]) + height[a] + height[b]
}

/**
 * @libp2p/memory with a per-pair delay: every chunk this node receives from `remote` arrives
 * rtt(self, remote) / 2 later, in order.
 */
function delayedMemory (self: () => number, indexOf: (peerId: string) => number | undefined, rtt: Rtt): (components: any) => any {
  const inner = memory({ latency: 0 })
  return (components: any) => {
    const t = inner(components) as any
    const wrap = (maConn: any): any => {
      const remotePeer = String(maConn.remoteAddr).split('/p2p/')[1]
      const remote = remotePeer == null ? undefined : indexOf(remotePeer)
      if (remote === undefined) return maConn
      const oneWay = rtt(self(), remote) / 2
      const deliver = maConn.onData.bind(maConn)
      let last = 0
      maConn.onData = (buf: any) => {
        const at = Math.max(performance.now() + oneWay, last)
        last = at
        setTimeout(() => deliver(buf), Math.max(0, at - performance.now()))
      }
      return maConn
    }
    const upgraderOf = (u: any): any => {
      const w = Object.create(u)
      w.upgradeInbound = async (maConn: any, o: any) => u.upgradeInbound(wrap(maConn), o)
      w.upgradeOutbound = async (maConn: any, o: any) => u.upgradeOutbound(wrap(maConn), o)
      return w
    }
    const dial = t.dial.bind(t)
    const createListener = t.createListener.bind(t)
    t.dial = async (ma: any, options: any) => dial(ma, { ...options, upgrader: upgraderOf(options.upgrader) })
    t.createListener = (options: any) => createListener({ ...options, upgrader: upgraderOf(options.upgrader) })
    return t
  }
}

function phase (what: string, t0: number): void {
  if (process.env.BENCH_VERBOSE != null) process.stderr.write(`[${round((performance.now() - t0) / 1000, 1)} s] ${what}\n`)
}

async function waitUntil (check: () => boolean, timeoutMs: number, intervalMs = 20): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (performance.now() < deadline) {
    if (check()) return true
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
  return check()
}

async function child (size: number, seed: number, settleS: number, joins: number, allocsPerQuerier: number, pingMs: number): Promise<Result> {
  const t0 = performance.now()
  const rand = prng(seed)
  const total = size + joins
  const rtt = model(total, rand)
  // 10% of the mesh has a GPU (never a joiner), chosen by the seed.
  const shuffled = Array.from({ length: size }, (_, i) => i).sort(() => rand() - 0.5)
  const gpu = new Set(shuffled.slice(0, Math.max(1, Math.round(size / 10))))
  const tag = `${process.pid}-${seed}`
  const addr = (i: number): string => `/memory/${tag}-${i}`
  const byPeer = new Map<string, number>()
  const nodes: MeshNode[] = []

  const make = async (i: number, bootstrap: string[]): Promise<MeshNode> => {
    const privateKey = await generateKeyPair('Ed25519')
    const node = new MeshNode({
      privateKey,
      region: `r${i % 8}`,
      listen: [addr(i)],
      bootstrap,
      transports: [delayedMemory(() => i, id => byPeer.get(id), rtt)],
      features: [['descriptors', descriptorsFeature]],
      config: { descriptors: { pingIntervalMs: pingMs, slots: 1000, accelerators: gpu.has(i) ? [{ kind: 'gpu', model: 'bench', memoryMb: 1024 }] : [] } }
    })
    byPeer.set((await import('@libp2p/peer-id')).peerIdFromPrivateKey(privateKey).toString(), i)
    return node
  }

  // Formation: 10 at a time, each bootstrapped to a random node already up.
  for (let i = 0; i < size; i += 10) {
    const batch = await Promise.all(Array.from({ length: Math.min(10, size - i) }, async (_, k) =>
      make(i + k, i === 0 ? (k === 0 ? [] : [addr(0)]) : [addr(Math.floor(rand() * i))])))
    if (i === 0) {
      await batch[0].start()
      await Promise.all(batch.slice(1).map(async n => n.start()))
    } else {
      await Promise.all(batch.map(async n => n.start()))
    }
    nodes.push(...batch)
  }
  const everyoneKnows = (): boolean => nodes.every(n => descriptorsOf(n).list().length === nodes.length)
  const formed = await waitUntil(everyoneKnows, 120_000, 200)
  const formationS = round((performance.now() - t0) / 1000, 1)
  phase(`formed ${size} (${formed ? 'all know all' : 'NOT all known'})`, t0)

  // Let RTT samples and coordinates settle.
  await new Promise(resolve => setTimeout(resolve, settleS * 1000))
  phase('settled', t0)

  // Joins: a new node, bootstrapped to one random member, until it holds every live descriptor.
  const joinMs: number[] = []
  for (let j = 0; j < joins; j++) {
    const i = size + j
    const node = await make(i, [addr(Math.floor(rand() * nodes.length))])
    const started = performance.now()
    await node.start()
    nodes.push(node)
    const want = nodes.length
    const ok = await waitUntil(() => descriptorsOf(node).list().length >= want, 30_000, 5)
    joinMs.push(ok ? performance.now() - started : Number.POSITIVE_INFINITY)
    if (!ok) phase(`join ${j + 1} knows ${descriptorsOf(node).list().length}/${want}; stats ${JSON.stringify(descriptorsOf(node).stats())}; conns ${node.libp2p.getConnections().length}`, t0)
    phase(`join ${j + 1}: ${round(joinMs.at(-1)!, 0)} ms`, t0)
  }

  // Vivaldi: every node's estimate of every node it has no measurement of, against the model.
  const estErr: number[] = []
  const measErr: number[] = []
  for (let q = 0; q < nodes.length; q++) {
    const reg = descriptorsOf(nodes[q])
    for (let x = 0; x < nodes.length; x++) {
      if (x === q) continue
      const l = reg.latency(nodes[x].did)
      const truth = rtt(q, x)
      if (l.ms === undefined) continue
      if (l.source === 'estimated') estErr.push(Math.abs(l.ms - truth) / truth)
      if (l.source === 'measured') measErr.push(Math.abs(l.ms - truth) / truth)
    }
  }

  // Allocations for `accelerator = gpu` from every node that has none, each released afterwards.
  const constraints = parseConstraints('accelerator = gpu')
  const allocMs: number[] = []
  let failures = 0
  let nearest = 0
  let within = 0
  for (let round_ = 0; round_ < allocsPerQuerier; round_++) {
    for (let q = 0; q < nodes.length; q++) {
      if (gpu.has(q)) continue
      const reg = descriptorsOf(nodes[q])
      const started = performance.now()
      const out = await reg.allocate({ constraints, ttlMs: 30_000 })
      allocMs.push(performance.now() - started)
      if (!out.ok) {
        failures++
        continue
      }
      const chosen = nodes.findIndex(n => n.did === out.chosen[0].did)
      const best = Math.min(...[...gpu].map(g => rtt(q, g)))
      if (rtt(q, chosen) <= best + 1e-9) nearest++
      if (rtt(q, chosen) <= Math.max(best * 1.1, best + 1)) within++
      await reg.release(out.chosen[0].did, out.chosen[0].lease.id).catch(() => {})
    }
  }
  phase('allocated', t0)

  const stats = nodes.map(n => descriptorsOf(n).stats())
  const perNode = (f: (x: typeof stats[number]) => number): number => round(stats.reduce((a, x) => a + f(x), 0) / stats.length, 1)
  const traffic = { published: perNode(x => x.published), gossip: perNode(x => x.received.gossip), pull: perNode(x => x.received.pull), wallS: round((performance.now() - t0) / 1000, 0) }
  phase(`per node: ${JSON.stringify(traffic)}`, t0)
  const connectionsPerNode = nodes.reduce((s, n) => s + n.libp2p.getConnections().length, 0) / nodes.length
  const idle = await cpuOver(3_000)
  const mem = await memorySample()
  await Promise.all(nodes.map(async n => n.stop().catch(() => {})))
  const allocations = allocMs.length
  return {
    nodes: size,
    formationS,
    joinMs: joinMs.map(x => round(x, 0)),
    joinMedianMs: round(median(joinMs), 0),
    joinMaxMs: round(Math.max(...joinMs), 0),
    allocations,
    allocFailures: failures,
    allocP50Ms: round(percentile(allocMs, 0.5)),
    allocP99Ms: round(percentile(allocMs, 0.99)),
    nearestPct: round(nearest / Math.max(allocations - failures, 1) * 100),
    nearWithin10Pct: round(within / Math.max(allocations - failures, 1) * 100),
    estimatePairs: estErr.length,
    estimateErrMedianPct: round(median(estErr) * 100),
    estimateErrP90Pct: round(percentile(estErr, 0.9) * 100),
    measuredErrMedianPct: round(median(measErr) * 100),
    connectionsPerNode: round(connectionsPerNode, 1),
    rssPerNodeMB: round(mem.rss / nodes.length / MB, 2),
    idleCpuPct: round(idle.cpuMs / idle.wallMs * 100, 1),
    loadavg: os.loadavg().map(x => round(x, 2)),
    traffic
  }
}

async function runChild (args: string[]): Promise<Result> {
  return runChildProcess<Result>(fileURLToPath(import.meta.url), args)
}

function mark (ok: boolean): string {
  return ok ? 'ok' : 'MISS'
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '50,100' },
      seed: { type: 'string', default: '1' },
      settle: { type: 'string', default: '30' },
      joins: { type: 'string', default: '3' },
      allocs: { type: 'string', default: '2' },
      ping: { type: 'string', default: '1000' },
      child: { type: 'string' }
    }
  })
  const seed = Number(values.seed)
  const settle = Number(values.settle)
  const joins = Number(values.joins)
  const allocs = Number(values.allocs)
  const ping = Number(values.ping)
  if (values.child != null) {
    const result = await child(Number(values.child), seed, settle, joins, allocs, ping)
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`)
    process.exit(0)
  }
  const sizes = values.sizes.split(',').map(Number)
  if (sizes.some(s => !Number.isInteger(s) || s < 10)) throw new Error(`--sizes: integers >= 10, got ${values.sizes}`)
  console.log(`registry bench: in-process Mesh nodes (descriptors feature only) on @libp2p/memory, seeded latencies ` +
    `(rtt = plane distance + both access links, 8 regions), ping every ${ping} ms, ${settle} s to settle; ` +
    `${joins} joins; ${allocs} allocation(s) of 'accelerator = gpu' (10% of nodes) from every non-GPU node, leases released`)
  const results: Result[] = []
  for (const size of sizes) {
    try {
      results.push(await runChild(['--child', String(size), '--seed', String(seed), '--settle', String(settle),
        '--joins', String(joins), '--allocs', String(allocs), '--ping', String(ping)]))
    } catch (err: any) {
      console.error(`${size}: ${err.message}`)
    }
  }
  console.log(table(
    ['nodes', 'formation s', 'join med ms', 'join max ms', 'alloc p50 ms', 'alloc p99 ms', 'fail', 'nearest %', 'within 10% %', 'est err med %', 'est err p90 %', 'meas err med %', 'pairs est', 'conns/node', 'RSS MB/node', 'load'],
    results.map(r => [r.nodes, r.formationS, r.joinMedianMs, r.joinMaxMs, r.allocP50Ms, r.allocP99Ms, `${r.allocFailures}/${r.allocations}`, r.nearestPct, r.nearWithin10Pct,
      r.estimateErrMedianPct, r.estimateErrP90Pct, r.measuredErrMedianPct, r.estimatePairs, r.connectionsPerNode, r.rssPerNodeMB, r.loadavg.join('/')])
  ))
  const targets = results.map(r => ({
    nodes: r.nodes,
    join: `${r.joinMaxMs} ms vs < ${TARGETS.joinMs} ms: ${mark(r.joinMaxMs < TARGETS.joinMs)}`,
    allocP99: `${r.allocP99Ms} ms vs < ${TARGETS.allocP99Ms} ms: ${mark(r.allocP99Ms < TARGETS.allocP99Ms)}`,
    nearest: `${r.nearestPct}% vs >= ${TARGETS.nearestPct}%: ${mark(r.nearestPct >= TARGETS.nearestPct)}`,
    estimate: `${r.estimateErrMedianPct}% vs < ${TARGETS.estimateErrPct}%: ${mark(r.estimateErrMedianPct < TARGETS.estimateErrPct)}`
  }))
  console.log(table(['nodes', 'join (max) < 5 s', 'alloc p99 < 50 ms', 'nearest >= 95%', 'est err < 15%'],
    targets.map(t => [t.nodes, t.join, t.allocP99, t.nearest, t.estimate])))
  console.log(`loadavg ${os.loadavg().map(x => round(x, 2)).join(' ')}`)
  console.log(JSON.stringify({ bench: 'registry', seed, targets: TARGETS, results }))
}

await main()
