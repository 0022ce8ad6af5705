// Scale simulation: N Mesh nodes in one process with per-node latency, churn, partitions that split
// the mesh in two and heal, and a workload of DHT lookups, allocations and document writes. Reports
// success rates, latencies, convergence after the last heal, lost writes and peak RSS, checks
// invariants (exit 1 when one breaks) and prints where the run stands against the targets of
// issue 8. The last line of stdout is one JSON object with every figure.
//
//   npm run simulate -- [--nodes 30] [--churn 10] [--partitions 1] [--duration 60] [--seed X]
//                       [--rate 10] [--latency 1-40] [--features docs,descriptors] [--docs 2]
//                       [--converge-bound 30] [--lookup-tolerance 1] [--settle 5] [--min-peers 8]
//                       [--threads <cores>]
//
// The nodes live in `--threads` worker threads (default: one per core; node i in thread
// i % threads), talking over TCP on 127.0.0.1, so that N nodes on one machine use all its cores as
// N machines would. With `--threads 1` they all take turns on one event loop and talk over
// `@libp2p/memory`, which is how the simulation ran until 2026-12-08: at 100 nodes on this
// 2-core machine that loop was saturated (CPU 112%, lag p99 230-320 ms), and every latency
// measured the process, not the mesh.
//
// SIM_DEBUG=1 prints, for each failed lookup, what the mesh knew of its target then (its age,
// the live nodes connected to it and holding its addresses), and each allocation over 100 ms.
//
// Invocations (functions feature) are left out: each one compiles and instantiates a Wasm module
// and needs an artifact fetched over bitswap first, which costs more CPU per operation than the
// rest of the workload on a 2-core machine; the functions benchmark covers them.
import { mkdtemp } from 'node:fs/promises'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { mapLimit, prng, round } from './bench/lib/stats.ts'
import { SimMesh } from './sim/mesh.ts'
import { OpStats } from './sim/stats.ts'
import type { SimNodeSlot } from './sim/mesh.ts'
import type { OpSummary } from './sim/stats.ts'

const { values: args } = parseArgs({
  options: {
    nodes: { type: 'string', default: '30' },
    churn: { type: 'string', default: '10' },
    partitions: { type: 'string', default: '1' },
    duration: { type: 'string', default: '60' },
    seed: { type: 'string' },
    rate: { type: 'string', default: '10' },
    latency: { type: 'string', default: '1-40' },
    features: { type: 'string', default: 'docs,descriptors' },
    docs: { type: 'string', default: '2' },
    'converge-bound': { type: 'string', default: '30' },
    'lookup-tolerance': { type: 'string', default: '1' },
    settle: { type: 'string', default: '5' },
    'min-peers': { type: 'string', default: '8' },
    'formation-timeout': { type: 'string', default: '180' },
    'max-inflight': { type: 'string', default: '32' },
    threads: { type: 'string', default: String(availableParallelism()) },
    quiet: { type: 'boolean', default: false }
  },
  strict: true
})

function num (name: string, value: string | undefined, min: number): number {
  const n = Number(value)
  if (!Number.isFinite(n) || n < min) {
    process.stderr.write(`simulate: --${name} wants a number >= ${min}, got ${value}\n`)
    process.exit(2)
  }
  return n
}

const N = Math.floor(num('nodes', args.nodes, 2))
const CHURN = num('churn', args.churn, 0)
const PARTITIONS = Math.floor(num('partitions', args.partitions, 0))
const DURATION_S = num('duration', args.duration, 1)
const SEED = args.seed != null ? Math.floor(num('seed', args.seed, 0)) : Math.floor(Math.random() * 2 ** 31)
const RATE = num('rate', args.rate, 0)
const DOCS = Math.floor(num('docs', args.docs, 1))
const CONVERGE_BOUND_S = num('converge-bound', args['converge-bound'], 1)
const LOOKUP_TOLERANCE = num('lookup-tolerance', args['lookup-tolerance'], 0)
const SETTLE_MS = num('settle', args.settle, 0) * 1000
const MIN_PEERS = Math.floor(num('min-peers', args['min-peers'], 1))
const FORMATION_TIMEOUT_S = num('formation-timeout', args['formation-timeout'], 1)
const MAX_INFLIGHT = Math.floor(num('max-inflight', args['max-inflight'], 1))
const THREADS = Math.floor(num('threads', args.threads, 1))
const [LAT_LO, LAT_HI] = (() => {
  const m = /^(\d+)(?:-(\d+))?$/.exec(args.latency ?? '')
  if (m == null) {
    process.stderr.write(`simulate: --latency wants MS or LO-HI, got ${args.latency}\n`)
    process.exit(2)
  }
  const lo = Number(m[1])
  return [lo, Math.max(lo, Number(m[2] ?? lo))]
})()
const FEATURES = (args.features ?? '').split(',').map(s => s.trim()).filter(s => s !== '')
for (const f of FEATURES) {
  if (f !== 'docs' && f !== 'descriptors') {
    process.stderr.write(`simulate: --features knows docs and descriptors, got ${f}\n`)
    process.exit(2)
  }
}
const HAS_DOCS = FEATURES.includes('docs')
const HAS_DESCRIPTORS = FEATURES.includes('descriptors')
const REGIONS = ['eu-west', 'eu-central', 'us-east', 'ap-south']
const DOC_IDS = Array.from({ length: DOCS }, (_, i) => `sim-${i}`)
const OP_TIMEOUT_MS = 10_000
const LOOKUP_SUCCESS_FLOOR = 100 - LOOKUP_TOLERANCE

// --- output -------------------------------------------------------------------------------------

const t0 = performance.now()
const clock = (): string => `${((performance.now() - t0) / 1000).toFixed(1)}s`.padStart(7)
function log (line: string): void {
  if (!args.quiet) process.stderr.write(`${clock()} ${line}\n`)
}
function out (line: string): void {
  process.stdout.write(`${line}\n`)
}

// The nodes' warnings and stray errors are counted in their threads (shard.ts); these are the
// coordinator's own.
const stray: string[] = []
let strayCount = 0
process.on('unhandledRejection', (err: any) => {
  strayCount++
  if (stray.length < 5) stray.push(String(err?.stack ?? err).split('\n').slice(0, 3).join(' | ').slice(0, 300))
})
process.on('uncaughtException', (err: any) => {
  strayCount++
  if (stray.length < 5) stray.push(`uncaught: ${String(err?.stack ?? err).split('\n').slice(0, 3).join(' | ').slice(0, 300)}`)
})

// --- the seeded schedule --------------------------------------------------------------------------

interface ChurnEvent { at: number, kind: 'churn', join: 'restart' | 'new', rejoinAfter: number }
interface PartitionEvent { at: number, kind: 'split' | 'heal', partition: number, fraction: number }
type ScheduleEvent = ChurnEvent | PartitionEvent

/** Per-index values (latency, side) from the seed alone, so they do not depend on event order. */
function seeded (...parts: number[]): number {
  let h = SEED >>> 0
  for (const p of parts) h = Math.imul(h ^ (p + 0x9e3779b9), 0x85ebca6b) >>> 0
  return prng(h)()
}

function schedule (): ScheduleEvent[] {
  const rand = prng(SEED)
  const events: ScheduleEvent[] = []
  const durationMs = DURATION_S * 1000
  const leaves = Math.round(N * CHURN / 100 * DURATION_S / 60)
  for (let i = 0; i < leaves; i++) {
    // Evenly spread, jittered within its slot; the node comes back (or a new one joins) 1-5 s later.
    const at = (i + 0.2 + 0.6 * rand()) * durationMs / leaves
    events.push({ at, kind: 'churn', join: rand() < 0.5 ? 'restart' : 'new', rejoinAfter: 1000 + 4000 * rand() })
  }
  const span = durationMs / Math.max(PARTITIONS, 1)
  for (let p = 0; p < PARTITIONS; p++) {
    const fraction = 0.3 + 0.4 * rand()
    events.push({ at: (p + 0.4) * span, kind: 'split', partition: p, fraction })
    // The last partition heals at the end of the workload, so convergence is measured after it.
    if (p < PARTITIONS - 1) events.push({ at: (p + 1) * span, kind: 'heal', partition: p, fraction })
  }
  return events.sort((a, b) => a.at - b.at)
}

// --- the run ---------------------------------------------------------------------------------------

const runId = `sim${SEED.toString(36)}${Date.now().toString(36).slice(-4)}`
const dir = await mkdtemp(join(tmpdir(), 'mesh-sim-'))
const cluster = new SimMesh({ runId, dir, features: FEATURES, threads: THREADS, docIds: DOC_IDS, minPeers: MIN_PEERS })
const opsRand = prng(SEED ^ 0x5bd1e995)
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(opsRand() * xs.length)]
const sample = <T>(xs: readonly T[], k: number): T[] => {
  const copy = [...xs]
  const outList: T[] = []
  while (copy.length > 0 && outList.length < k) outList.push(copy.splice(Math.floor(opsRand() * copy.length), 1)[0])
  return outList
}
const stats = { lookup: new OpStats(), alloc: new OpStats(), write: new OpStats() }
interface Ack { doc: string, key: string, value: number, slot: number }
const acked: Ack[] = []
const churnCounts = { left: 0, restarted: 0, joinedNew: 0, joinFailed: 0, finalRestarts: 0 }
let writeSeq = 0
let inflight = 0
let skipped = 0
let rssPeak = 0
let cleaningUp = false
const rssTimer = setInterval(() => { rssPeak = Math.max(rssPeak, process.memoryUsage().rss) }, 1000)
rssTimer.unref()

async function cleanup (): Promise<void> {
  if (cleaningUp) return
  cleaningUp = true
  clearInterval(rssTimer)
  await Promise.race([cluster.stopAll(), new Promise(resolve => setTimeout(resolve, 60_000).unref())])
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => { void cleanup().finally(() => process.exit(130)) })

function latencyOf (index: number): number {
  return Math.round(LAT_LO + (LAT_HI - LAT_LO) * seeded(1, index))
}

async function newSlot (): Promise<SimNodeSlot> {
  return await cluster.addSlot(index => ({ latencyMs: latencyOf(index), region: REGIONS[index % REGIONS.length] }))
}

/**
 * Starts a slot from a few live peers on its side; it opens the shared documents (as replicas, not
 * editors: they carry no presence of their own).
 */
async function bringUp (slot: SimNodeSlot, peers: SimNodeSlot[]): Promise<void> {
  const side = cluster.sideOf(slot)
  const candidates = peers.filter(p => p !== slot && cluster.sideOf(p) === side)
  await cluster.start(slot, sample(candidates, 3).map(p => p.address))
}

// Formation.
const events = schedule()
const splits = events.filter(e => e.kind === 'split').length
log(`seed ${SEED}: ${N} nodes, churn ${CHURN}%/min, ${PARTITIONS} partition(s), ${DURATION_S} s, ${RATE} ops/s, features ${FEATURES.join(',') || 'none'}`)
for (let i = 0; i < N; i++) await newSlot()
const formationStart = performance.now()
{
  const started: SimNodeSlot[] = []
  // The first node alone, then 8 at a time, each bootstrapping from up to three started ones.
  await bringUp(cluster.slots[0], [])
  started.push(cluster.slots[0])
  await mapLimit(cluster.slots.slice(1), 8, async (slot) => {
    await bringUp(slot, [...started]).catch((err: Error) => log(`node ${slot.index} failed to start: ${err.message}`))
    started.push(slot)
  })
}
const wantConnections = Math.min(3, N - 1)
const formationDeadline = performance.now() + FORMATION_TIMEOUT_S * 1000
let connectionCounts = new Map<number, number>()
while (performance.now() < formationDeadline) {
  connectionCounts = await cluster.connections()
  const ready = [...connectionCounts.values()].filter(n => n >= wantConnections)
  if (connectionCounts.size === N && ready.length === N) break
  await new Promise(resolve => setTimeout(resolve, 250))
}
const formationMs = performance.now() - formationStart
connectionCounts = await cluster.connections()
const formed = [...connectionCounts.values()].filter(n => n >= wantConnections).length
const connectionsMean = [...connectionCounts.values()].reduce((a, b) => a + b, 0) / Math.max(connectionCounts.size, 1)
const rssAfterFormation = process.memoryUsage().rss
log(`formed: ${formed}/${N} nodes with >= ${wantConnections} connections in ${(formationMs / 1000).toFixed(1)} s, ${connectionsMean.toFixed(1)} connections/node, RSS ${Math.round(rssAfterFormation / 2 ** 20)} MB`)
// Let descriptors spread and RTTs be measured before allocations are judged.
await new Promise(resolve => setTimeout(resolve, Math.min(SETTLE_MS, 5_000)))

// --- operations -------------------------------------------------------------------------------------

let writesOpen = true
let opsOpen = true
const pendingWrites = new Set<Promise<void>>()

function sameSidePair (): [SimNodeSlot, SimNodeSlot] | undefined {
  const settled = cluster.settled(SETTLE_MS)
  if (settled.length < 2) return undefined
  const from = pick(settled)
  const targets = settled.filter(s => s !== from && cluster.sideOf(s) === cluster.sideOf(from))
  if (targets.length === 0) return undefined
  return [from, pick(targets)]
}

async function lookup (): Promise<void> {
  const pair = sameSidePair()
  if (pair == null) return
  const [from, to] = pair
  const before = [from.incarnation, to.incarnation, cluster.partitionEpoch]
  const r = await cluster.lookup(from, to, OP_TIMEOUT_MS)
  const disturbed = before[0] !== from.incarnation || before[1] !== to.incarnation || before[2] !== cluster.partitionEpoch
  stats.lookup.record(disturbed ? 'excluded' : r.ok ? 'ok' : 'failed', r.ms, r.reason)
  if (!r.ok && !disturbed && process.env.SIM_DEBUG != null) {
    const k = await cluster.knowledgeOf(to.peerId)
    log(`DEBUG lookup ${from.index} -> ${to.index} ${r.debug}; target up ${Math.round((performance.now() - to.upSince!) / 1000)} s, starts ${to.starts}, side ${cluster.sideOf(to)}/${cluster.sideOf(from)}; connected to it: ${k.connected.length} (${k.connected.slice(0, 8).join(',')}); holding its addresses: ${k.known}/${cluster.live().length}`)
  }
}

async function allocate (): Promise<void> {
  const settled = cluster.settled(SETTLE_MS)
  if (settled.length === 0) return
  const from = pick(settled)
  const region = pick(REGIONS)
  const before = [from.incarnation, cluster.partitionEpoch]
  const r = await cluster.allocate(from, region, OP_TIMEOUT_MS)
  const disturbed = before[0] !== from.incarnation || before[1] !== cluster.partitionEpoch
  stats.alloc.record(disturbed ? 'excluded' : r.ok ? 'ok' : 'failed', r.ms, r.reason)
  if (r.ok && r.ms > 100 && process.env.SIM_DEBUG != null) log(`DEBUG slow allocation ${Math.round(r.ms)} ms from ${from.index} (${from.latencyMs} ms link) ${r.debug}`)
}

async function write (): Promise<void> {
  const settled = cluster.settled(SETTLE_MS)
  if (settled.length === 0) return
  const from = pick(settled)
  const doc = pick(DOC_IDS)
  const value = ++writeSeq
  const key = `n${from.index}-w${value}`
  const before = from.incarnation
  const r = await cluster.write(from, doc, key, value, OP_TIMEOUT_MS)
  // Acknowledged: from here on it must never be lost, whatever happens to the node.
  if (r.ok) acked.push({ doc, key, value, slot: from.index })
  stats.write.record(r.ok ? 'ok' : before !== from.incarnation ? 'excluded' : 'failed', r.ms, r.reason)
}

const kinds: Array<'lookup' | 'alloc' | 'write'> = []
kinds.push('lookup', 'lookup')
if (HAS_DESCRIPTORS) kinds.push('alloc', 'alloc')
if (HAS_DOCS) kinds.push('write', 'write')

function launch (): void {
  if (inflight >= MAX_INFLIGHT) {
    skipped++
    return
  }
  const choices = kinds.filter(k => k !== 'write' || writesOpen)
  const kind = pick(choices)
  inflight++
  const p = (kind === 'lookup' ? lookup() : kind === 'alloc' ? allocate() : write())
    .catch((err: Error) => log(`${kind} crashed: ${err.message}`))
    .finally(() => { inflight-- })
  if (kind === 'write') {
    pendingWrites.add(p)
    void p.finally(() => pendingWrites.delete(p))
  }
}

async function opsLoop (): Promise<void> {
  if (RATE <= 0) return
  const interval = 1000 / RATE
  let next = performance.now()
  while (opsOpen) {
    launch()
    next += interval
    const wait = next - performance.now()
    // A loaded event loop falls behind; skip ahead rather than bursting to catch up.
    if (wait < -1000) next = performance.now()
    await new Promise(resolve => setTimeout(resolve, Math.max(0, wait)))
  }
}

// --- churn and partitions ------------------------------------------------------------------------------

const background = new Set<Promise<void>>()
function track (p: Promise<void>): void {
  background.add(p)
  void p.finally(() => background.delete(p))
}

function sideFor (slot: SimNodeSlot, partition: number, fraction: number): number {
  return seeded(2, partition, slot.index) < fraction ? 0 : 1
}
let currentSplit: PartitionEvent | undefined

async function churn (ev: ChurnEvent): Promise<void> {
  const candidates = cluster.settled(Math.min(SETTLE_MS, 2_000)).filter(s => !s.starting)
  if (candidates.length <= 3) return
  const leaving = pick(candidates)
  churnCounts.left++
  log(`node ${leaving.index} leaves (${cluster.live().length - 1} live)`)
  await cluster.stop(leaving).catch((err: Error) => log(`node ${leaving.index} stop failed: ${err.message}`))
  await new Promise(resolve => setTimeout(resolve, ev.rejoinAfter))
  if (!opsOpen) return
  const down = cluster.down().filter(s => s !== leaving)
  const restart = ev.join === 'restart' && down.length > 0
  const slot = restart ? pick(down) : await newSlot()
  if (currentSplit != null) await cluster.assignSide(slot, sideFor(slot, currentSplit.partition, currentSplit.fraction))
  try {
    await bringUp(slot, cluster.live())
    if (restart) churnCounts.restarted++
    else churnCounts.joinedNew++
    log(`node ${slot.index} ${restart ? 'restarts' : 'joins (new)'} (${cluster.live().length} live)`)
  } catch (err: any) {
    churnCounts.joinFailed++
    log(`node ${slot.index} failed to join: ${err.message}`)
  }
}

async function split (ev: PartitionEvent): Promise<void> {
  currentSplit = ev
  await cluster.partition(s => sideFor(s, ev.partition, ev.fraction))
  const sizes = [0, 1].map(side => cluster.live().filter(s => cluster.sideOf(s) === side).length)
  log(`partition ${ev.partition + 1}: split ${sizes[0]} | ${sizes[1]}`)
}

async function heal (ev: PartitionEvent): Promise<void> {
  currentSplit = undefined
  await cluster.heal()
  log(`partition ${ev.partition + 1}: healed`)
}

// --- workload ---------------------------------------------------------------------------------------------

const workloadStart = performance.now()
// The saturation gauge: the nodes of a thread share its event loop, so an operation waits behind
// every one of their work. With a loop this late, the latency columns measure the process, not
// the mesh.
await cluster.loadStart()
const workloadCpu0 = process.cpuUsage()
const ops = opsLoop()
for (const ev of events) {
  const wait = workloadStart + ev.at - performance.now()
  if (wait > 0) await new Promise(resolve => setTimeout(resolve, wait))
  if (ev.kind === 'churn') track(churn(ev))
  else if (ev.kind === 'split') await split(ev)
  else await heal(ev)
}
{
  const wait = workloadStart + DURATION_S * 1000 - performance.now()
  if (wait > 0) await new Promise(resolve => setTimeout(resolve, wait))
}
const workloadMs = performance.now() - workloadStart
const workloadCpu = process.cpuUsage(workloadCpu0)
// The worst thread's event-loop lag during the workload.
const lags = await cluster.loadStop()
const load = {
  cpuPct: round((workloadCpu.user + workloadCpu.system) / 1000 / workloadMs * 100),
  lagP50Ms: Math.max(...lags.map(l => l.p50)),
  lagP99Ms: Math.max(...lags.map(l => l.p99)),
  lagMaxMs: Math.max(...lags.map(l => l.max))
}

// --- end: writes stop, departed writers come back, the last partition heals, convergence ----------------

writesOpen = false
log(`workload done: ${acked.length} acknowledged writes; waiting for ${pendingWrites.size} writes and ${background.size} churn events`)
await Promise.race([Promise.all([...pendingWrites]), new Promise(resolve => setTimeout(resolve, OP_TIMEOUT_MS + 5_000))])
await Promise.race([Promise.all([...background]), new Promise(resolve => setTimeout(resolve, 30_000))])
// A node that acknowledged writes and left holds them on its disk: bring it back on the same repo,
// so the check below covers every acknowledged write (and restarts themselves are exercised).
const writers = new Set(acked.map(a => a.slot))
const toRestart = cluster.down().filter(s => writers.has(s.index))
if (toRestart.length > 0) {
  log(`restarting ${toRestart.length} departed node(s) that acknowledged writes`)
  await mapLimit(toRestart, 8, async (slot) => {
    if (currentSplit != null) await cluster.assignSide(slot, sideFor(slot, currentSplit.partition, currentSplit.fraction))
    await bringUp(slot, cluster.live()).then(() => { churnCounts.finalRestarts++ }, (err: Error) => log(`node ${slot.index} failed to restart: ${err.message}`))
  })
}
const crossBeforeHeal = await cluster.crossConnections()
const lastSplit = currentSplit
// From the moment the heal is ordered (the threads lift the dial ban a message later).
const healAt = performance.now()
if (lastSplit != null) await heal(lastSplit)

interface DocView { state: string, keys: Set<string> }
async function views (): Promise<Map<number, Map<string, DocView>>> {
  const result = new Map<number, Map<string, DocView>>()
  for (const [index, perDoc] of await cluster.views(DOC_IDS)) {
    result.set(index, new Map(Object.entries(perDoc).map(([id, v]) => [id, { state: v.state, keys: new Set(v.keys) }])))
  }
  return result
}

function isConverged (v: Map<number, Map<string, DocView>>): boolean {
  const all = [...v.values()]
  if (all.length === 0) return true
  for (const id of DOC_IDS) {
    const first = all[0].get(id)!.state
    if (first === '<unavailable>' || all.some(n => n.get(id)!.state !== first)) return false
  }
  // Equal, and holding every acknowledged write.
  return acked.every(a => all[0].get(a.doc)!.keys.has(a.key))
}

let convergenceMs: number | null = null
let finalViews = new Map<number, Map<string, DocView>>()
if (HAS_DOCS) {
  const deadline = healAt + CONVERGE_BOUND_S * 1000
  for (;;) {
    finalViews = await views()
    if (process.env.SIM_DEBUG != null) {
      // How the heal spreads: the distinct states of each document and how many nodes hold each.
      for (const id of DOC_IDS) {
        const counts = new Map<string, number>()
        for (const v of finalViews.values()) counts.set(v.get(id)!.state, (counts.get(v.get(id)!.state) ?? 0) + 1)
        log(`DEBUG ${Math.round(performance.now() - healAt)} ms after the heal, ${id}: ${counts.size} state(s), held by ${[...counts.values()].sort((a, b) => b - a).join(', ')} nodes`)
      }
    }
    if (isConverged(finalViews)) {
      convergenceMs = performance.now() - healAt
      break
    }
    if (performance.now() > deadline) break
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  log(convergenceMs != null ? `converged ${(convergenceMs / 1000).toFixed(2)} s after the heal` : `not converged within ${CONVERGE_BOUND_S} s`)
}
opsOpen = false
await ops
await Promise.race([new Promise<void>(resolve => {
  const t = setInterval(() => { if (inflight === 0) { clearInterval(t); resolve() } }, 50)
}), new Promise(resolve => setTimeout(resolve, OP_TIMEOUT_MS + 2_000))])

// Lost: acknowledged, yet on no live node (after convergence: not in the converged state).
const liveViews = [...finalViews.values()]
const lost = acked.filter(a => !liveViews.some(v => v.get(a.doc)?.keys.has(a.key) === true))
const missingSomewhere = acked.filter(a => liveViews.some(v => v.get(a.doc)?.keys.has(a.key) !== true)).length
rssPeak = Math.max(rssPeak, process.memoryUsage().rss, process.resourceUsage().maxRSS * 1024)
const liveAtEnd = cluster.live().length
const { descriptorsPublished, publishedBy, descriptorsReceived, docGossip, dialsRefused } = await cluster.stats()
const noise = await cluster.noise()

// --- report --------------------------------------------------------------------------------------------------

const summaries: Record<string, OpSummary> = {
  lookup: stats.lookup.summary(),
  ...(HAS_DESCRIPTORS ? { alloc: stats.alloc.summary() } : {}),
  ...(HAS_DOCS ? { write: stats.write.summary() } : {})
}
const MB = 2 ** 20
const fmt = (x: number | null, unit = ''): string => x == null ? '-' : `${x}${unit}`
const lookupRate = summaries.lookup.successRate
const invariants = [
  { name: 'lost writes = 0 (acknowledged writes missing from the converged state)', ok: lost.length === 0 || !HAS_DOCS, value: lost.length },
  { name: `documents converge within ${CONVERGE_BOUND_S} s of the last heal (all live nodes equal, every acknowledged write present)`, ok: !HAS_DOCS || convergenceMs != null, value: convergenceMs == null ? null : round(convergenceMs) },
  { name: `lookups of live nodes succeed >= ${LOOKUP_SUCCESS_FLOOR}% (live: up >= ${SETTLE_MS / 1000} s, same side, neither left nor split/healed during the lookup)`, ok: lookupRate == null || lookupRate >= LOOKUP_SUCCESS_FLOOR, value: lookupRate },
  { name: 'every node of the initial mesh started and formed (>= 3 connections)', ok: formed === N, value: formed }
]
const scaleOk = invariants.every(i => i.ok)
const allocP99 = summaries.alloc?.p99 ?? null
const targets = [
  { name: 'every lookup of a live node succeeds', met: lookupRate === 100, value: lookupRate == null ? '-' : `${lookupRate}%` },
  { name: 'p99 allocation < 100 ms', met: allocP99 != null && allocP99 < 100, value: fmt(allocP99, ' ms') },
  { name: 'zero lost document writes', met: HAS_DOCS && lost.length === 0, value: HAS_DOCS ? String(lost.length) : 'docs off' },
  { name: 'convergence <= 2 s after the last partition heals', met: convergenceMs != null && convergenceMs <= 2000 && PARTITIONS > 0, value: convergenceMs == null ? '-' : `${(convergenceMs / 1000).toFixed(2)} s${PARTITIONS === 0 ? ' (no partition)' : ''}` },
  { name: 'the above at >= 100 nodes with >= 10% churn/min', met: N >= 100 && CHURN >= 10 && scaleOk, value: `${N} nodes, ${CHURN}%/min` },
  { name: '200 nodes in one process without running out of memory', met: N >= 200 && formed === N, value: `${N} nodes, peak RSS ${Math.round(rssPeak / MB)} MB` }
]

out(`mesh simulate · seed ${SEED} · ${N} nodes · churn ${CHURN}%/min · ${PARTITIONS} partition(s) · ${DURATION_S} s workload · ${RATE} ops/s`)
out(`  each node: libp2p on ${cluster.transport === 'memory' ? '@libp2p/memory' : 'TCP on 127.0.0.1'} in ${THREADS} thread(s) (latency ${LAT_LO}-${LAT_HI} ms per node, seeded), kad-dht, gossipsub, Helia (memory blocks), features: ${FEATURES.join(', ') || 'none'}; regions ${REGIONS.join(', ')}; ${DOCS} shared documents; invocations not simulated`)
out(`  reproduce: npm run simulate -- --threads ${THREADS} --nodes ${N} --churn ${CHURN} --partitions ${PARTITIONS} --duration ${DURATION_S} --rate ${RATE} --latency ${LAT_LO}-${LAT_HI} --features ${FEATURES.join(',')} --seed ${SEED}`)
out(`  (the seed fixes event times, splits, latencies and op choices; which live node an event picks also depends on timing)`)
out(`formation  ${(formationMs / 1000).toFixed(1)} s, ${formed}/${N} nodes formed, ${connectionsMean.toFixed(1)} connections/node, RSS ${Math.round(rssAfterFormation / MB)} MB (${(rssAfterFormation / MB / N).toFixed(1)} MB/node)`)
out(`workload   ${(workloadMs / 1000).toFixed(1)} s; churn: ${churnCounts.left} left, ${churnCounts.restarted} restarted, ${churnCounts.joinedNew} joined new, ${churnCounts.joinFailed} failed to join; ${splits} split(s), dials refused across splits ${dialsRefused}, cross connections at the last heal ${crossBeforeHeal}; ${skipped} ops skipped (>${MAX_INFLIGHT} in flight)`)
out('op        attempts      ok  failed  excl  success     p50 ms     p99 ms     max ms')
for (const [name, s] of Object.entries(summaries)) {
  out(`${name.padEnd(8)} ${String(s.attempts).padStart(9)} ${String(s.ok).padStart(7)} ${String(s.failed).padStart(7)} ${String(s.excluded).padStart(5)} ${fmt(s.successRate, '%').padStart(8)} ${fmt(s.p50).padStart(10)} ${fmt(s.p99).padStart(10)} ${fmt(s.max).padStart(10)}`)
  for (const [reason, count] of Object.entries(s.failures)) out(`           ${count} × ${reason}`)
}
if (HAS_DOCS) {
  out(`documents  ${acked.length} acknowledged writes; ${churnCounts.finalRestarts} departed writer(s) restarted on their repos before the heal; convergence ${convergenceMs == null ? `NOT reached in ${CONVERGE_BOUND_S} s` : `${(convergenceMs / 1000).toFixed(2)} s`} after the ${lastSplit != null ? 'last heal' : 'end of writes (no partition at the end)'} over ${liveAtEnd} live nodes; lost ${lost.length}; missing on some live node ${missingSomewhere}`)
}
out(`load       during the workload: process CPU ${load.cpuPct}% of a core, event-loop lag p50 ${load.lagP50Ms} ms, p99 ${load.lagP99Ms} ms, max ${load.lagMaxMs} ms (the worst of ${THREADS} thread(s), whose nodes share its loop)`)
out(`memory     peak RSS ${Math.round(rssPeak / MB)} MB (${(rssPeak / MB / Math.max(cluster.slots.length, 1)).toFixed(1)} MB per node slot, ${cluster.slots.length} slots)`)
const reasons = Object.entries(publishedBy).map(([why, n]) => `${why} ${n}`).join(', ')
out(`traffic    live nodes at the end: ${descriptorsPublished} descriptor publishes${reasons === '' ? '' : ` (${reasons})`}, ${descriptorsReceived} descriptor envelopes received, ${docGossip} document gossip messages received`)
const warningTotal = noise.warnings
const strayTotal = strayCount + noise.stray
const firstStray = stray[0] ?? noise.firstStray
out(`noise      ${warningTotal} node warnings, ${strayTotal} stray rejections/exceptions${firstStray != null ? `: ${firstStray}` : ''}`)
out('invariants (exit 1 if any is broken)')
for (const i of invariants) out(`  ${i.ok ? 'ok  ' : 'FAIL'}  ${i.name}: ${i.value ?? '-'}`)
out('targets (issue 8)')
for (const t of targets) out(`  ${t.met ? 'met ' : 'not '}  ${t.name}: ${t.value}`)
out(JSON.stringify({
  seed: SEED,
  nodes: N,
  churnPerMinute: CHURN,
  partitions: PARTITIONS,
  durationS: DURATION_S,
  rate: RATE,
  threads: THREADS,
  latencyMs: [LAT_LO, LAT_HI],
  features: FEATURES,
  formation: { ms: round(formationMs), formed, connectionsPerNode: round(connectionsMean), rssMB: round(rssAfterFormation / MB) },
  churn: churnCounts,
  ops: summaries,
  writes: { acknowledged: acked.length, lost: lost.length, missingSomewhere },
  convergenceMs: convergenceMs == null ? null : round(convergenceMs),
  load,
  peakRssMB: round(rssPeak / MB),
  liveAtEnd,
  slots: cluster.slots.length,
  traffic: { descriptorsPublished, descriptorsReceived, docGossip },
  warnings: warningTotal,
  stray: strayTotal,
  invariants: invariants.map(i => ({ name: i.name, ok: i.ok, value: i.value })),
  targets: targets.map(t => ({ name: t.name, met: t.met, value: t.value })),
  ok: scaleOk
}))

await cleanup()
process.exit(scaleOk ? 0 : 1)
