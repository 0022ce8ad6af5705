// What telemetry costs: invocation and document-update throughput with telemetry off, with
// metrics on, and with metrics and tracing on, measured in the same run.
//
// Three pairs of real nodes in this process (TCP on loopback): A publishes the echo Wasm
// artifact and serves invocations; B invokes it on A (a remote call over the invoke protocol)
// and writes document updates (in memory, replicated to A over gossip).
// - off:     no libp2p metrics, no tracing (Mesh's own counters are increments either way)
// - metrics: libp2p's metrics (@libp2p/prometheus-metrics) in each node's Registry, scraped once a second
// - tracing: metrics, plus spans for every invocation on both nodes, batched to an exporter
//            that discards them (what an OTLP exporter adds over that is its network I/O)
// Rounds interleave the three configurations so drift hits all alike; figures are medians.
//
//   node scripts/bench/telemetry.ts [--rounds 7] [--calls 200] [--updates 500]
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { Registry } from 'prom-client'
import { buildWasmFixtures } from '../build-wasm-fixtures.ts'
import { artifactsOf } from '../../node/artifacts.ts'
import { documentsOf } from '../../node/documents.ts'
import { nodeFeatures } from '../../node/features.ts'
import { functionsOf } from '../../node/functions.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { Repo } from '../../node/repo.ts'
import { libp2pMetrics, metricsText, useRegistry } from '../../node/telemetry.ts'
import { inSpan, startTracing } from '../../node/tracing.ts'
import type { SpanExporter } from '@opentelemetry/sdk-trace'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '7' },
    calls: { type: 'string', default: '200' },
    updates: { type: 'string', default: '500' }
  }
})
const ROUNDS = Number(values.rounds)
const CALLS = Number(values.calls)
const UPDATES = Number(values.updates)

type Config = 'off' | 'metrics' | 'tracing'
const CONFIGS: Config[] = ['off', 'metrics', 'tracing']

interface Pair { a: MeshNode, b: MeshNode, manifest: string, scraper?: ReturnType<typeof setInterval>, dir: string }

let exported = 0
const discard: SpanExporter = {
  export: (spans, done) => { exported += spans.length; done({ code: 0 }) },
  shutdown: async () => {}
}

async function pair (config: Config, wasm: Uint8Array): Promise<Pair> {
  const dir = await mkdtemp(join(tmpdir(), 'mesh-bench-tel-'))
  const repo = new Repo(join(dir, 'a'))
  await repo.init({})
  const metered = config !== 'off'
  const make = async (privateKey: Awaited<ReturnType<typeof generateKeyPair>>, repoPath: string | undefined, bootstrap: string[]): Promise<MeshNode> => {
    const registry = new Registry()
    const node = new MeshNode({
      privateKey,
      bootstrap,
      features: nodeFeatures,
      repoPath,
      config: {},
      ...(metered ? { metrics: libp2pMetrics(registry, { defaultMetrics: false }) } : {})
    })
    if (metered) useRegistry(node, registry)
    await node.start()
    return node
  }
  const a = await make(await repo.loadKey(), repo.path, [])
  const b = await make(await generateKeyPair('Ed25519'), undefined, [a.libp2p.getMultiaddrs()[0].toString()])
  const entry = await artifactsOf(a).publish(wasm, { name: 'echo', version: '1.0.0' })
  const p: Pair = { a, b, manifest: entry.manifest, dir }
  if (metered) {
    p.scraper = setInterval(() => { void metricsText(a); void metricsText(b) }, 1000)
  }
  // Warm up: the connection, the module cache, the document's replication.
  for (let i = 0; i < 20; i++) await functionsOf(b).invoke(entry.manifest, { args: ['warm'] }, { on: a.peerId.toString() })
  for (let i = 0; i < 20; i++) await documentsOf(b).set('bench', 'warm', i)
  return p
}

async function invocations (p: Pair): Promise<number> {
  const on = p.a.peerId.toString()
  const started = performance.now()
  for (let i = 0; i < CALLS; i++) {
    // As the API would: each call in a request's span (a no-op while tracing is off).
    const r = await inSpan('bench.request', {}, async () => functionsOf(p.b).invoke(p.manifest, { args: [String(i)] }, { on }))
    if (r.outcome !== 'ok') throw new Error(`invocation failed: ${r.outcome} ${r.message ?? ''}`)
  }
  return CALLS / ((performance.now() - started) / 1000)
}

async function updates (p: Pair): Promise<number> {
  const docs = documentsOf(p.b)
  const started = performance.now()
  for (let i = 0; i < UPDATES; i++) {
    await inSpan('bench.request', {}, async () => docs.set('bench', `k${i % 50}`, i))
  }
  return UPDATES / ((performance.now() - started) / 1000)
}

function median (xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

async function main (): Promise<void> {
  const fixtures = await mkdtemp(join(tmpdir(), 'mesh-bench-wasm-'))
  const { echo } = await buildWasmFixtures(fixtures, ['echo'])
  const pairs = new Map<Config, Pair>()
  for (const c of CONFIGS) pairs.set(c, await pair(c, echo))
  const results = new Map<Config, { calls: number[], updates: number[] }>(CONFIGS.map(c => [c, { calls: [], updates: [] }]))
  process.stderr.write(`telemetry bench: ${ROUNDS} rounds of ${CALLS} remote invocations and ${UPDATES} document updates per configuration\n`)
  for (let round = 0; round < ROUNDS; round++) {
    // Rotate the order so no configuration always runs first.
    const order = CONFIGS.map((_, i) => CONFIGS[(i + round) % CONFIGS.length])
    for (const c of order) {
      const tracing = c === 'tracing' ? await startTracing({ exporter: discard }) : undefined
      const p = pairs.get(c)!
      results.get(c)!.calls.push(await invocations(p))
      results.get(c)!.updates.push(await updates(p))
      await tracing?.shutdown()
    }
    process.stderr.write(`  round ${round + 1}/${ROUNDS} done\n`)
  }
  // The change is the median of each round's ratio against that round's 'off' figure: rounds
  // drift (GC, the other pairs' leftover gossip), and a paired ratio cancels what a round shares.
  // The spread (25th–75th percentile of those ratios) shows how far one run can be trusted.
  const base = results.get('off')!
  const change = (xs: number[], bs: number[]): string => {
    const ratios = xs.map((x, i) => (x / bs[i] - 1) * 100)
    const s = [...ratios].sort((x, y) => x - y)
    const q = (f: number): number => s[Math.round(f * (s.length - 1))]
    return `${median(ratios).toFixed(1)}% [${q(0.25).toFixed(0)}, ${q(0.75).toFixed(0)}]`
  }
  const lines = ['', 'configuration    invocations/s   change [IQR]          doc updates/s   change [IQR]']
  for (const c of CONFIGS) {
    const r = results.get(c)!
    const dc = c === 'off' ? '' : change(r.calls, base.calls)
    const du = c === 'off' ? '' : change(r.updates, base.updates)
    lines.push(`${c.padEnd(16)} ${median(r.calls).toFixed(1).padStart(13)}   ${dc.padEnd(18)}   ${median(r.updates).toFixed(1).padStart(13)}   ${du}`)
  }
  lines.push(`(medians of ${ROUNDS} rounds, change = median of per-round ratios to 'off'; ${exported} spans exported in the tracing runs; targets: metrics > -5%, tracing > -15%)`)
  process.stdout.write(lines.join('\n') + '\n')
  for (const p of pairs.values()) {
    if (p.scraper != null) clearInterval(p.scraper)
    await p.b.stop()
    await p.a.stop()
    await rm(p.dir, { recursive: true, force: true })
  }
  await rm(fixtures, { recursive: true, force: true })
}

main().then(() => process.exit(0), (err) => { process.stderr.write(`bench failed: ${err.stack ?? err}\n`); process.exit(1) })
