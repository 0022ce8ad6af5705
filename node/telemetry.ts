// The node's metrics (Prometheus, through prom-client), its readiness, and its status summary.
//
// One Registry per node, never prom-client's global one: tests and simulations run several nodes
// in one process. Most Mesh metrics are read at scrape time from the stats objects the features
// already keep (doc-sync, descriptors, the Wasm runtime, the node's rejection counters), so the
// hot paths pay nothing for them; only what has no stats of its own is observed as it happens
// (DHT lookup and function invocation durations, artifact fetches).
//
// libp2p's own metrics (connections, streams, bytes per protocol, kad-dht and gossipsub internals)
// come from @libp2p/prometheus-metrics, registered into the same Registry: `libp2pMetrics(registry)`
// is the node's libp2p `metrics` option. That module keeps its metric objects in a module-wide map,
// so in one process only the newest node's libp2p metrics are exported; Mesh's own are per node.
import { prometheusMetrics } from '@libp2p/prometheus-metrics'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { artifactsOf } from './artifacts.ts'
import { descriptorsOf } from './descriptors.ts'
import { documentsOf } from './documents.ts'
import { recentErrors } from './log.ts'
import { contextFromTraceparent, inSpan, SpanKind } from './tracing.ts'
import { wsStats } from './routes/docs.ts'
import { context } from '@opentelemetry/api'
import type { Artifacts } from './artifacts.ts'
import type { Feature, FeatureFactory } from './feature.ts'
import type { Functions } from './functions.ts'
import type { MeshNode } from './mesh-node.ts'
import type { InvokeRequest, InvokeResponse } from '../protocols/invoke.ts'

export interface RecentInvocation {
  time: string
  artifact: string
  /** 'local' for calls made on this node, else the calling peer. */
  from: string
  outcome: string
  ms: number
  traceId?: string
}

export interface NodeTelemetry {
  readonly registry: Registry
  dhtLookup: Histogram<'op' | 'result'>
  invocations: Counter<'outcome' | 'origin'>
  invocationSeconds: Histogram<'outcome'>
  artifactFetches: Counter<'source' | 'result'>
  artifactBytes: Counter<never>
  recentInvocations: RecentInvocation[]
}

const nodes = new WeakMap<MeshNode, NodeTelemetry>()
const registries = new WeakMap<MeshNode, Registry>()
const RECENT = 50

/** The libp2p `metrics` option that puts libp2p's metrics into `registry`. */
export function libp2pMetrics (registry: Registry, options: { defaultMetrics?: boolean } = {}): ReturnType<typeof prometheusMetrics> {
  return prometheusMetrics({ registry, collectDefaultMetrics: options.defaultMetrics ?? true, preserveExistingMetrics: false })
}

/** Makes `registry` (the one libp2p's metrics went into) the node's registry. Call before it starts. */
export function useRegistry (node: MeshNode, registry: Registry): void {
  if (nodes.has(node)) throw new Error('the node\'s metrics are already set up')
  registries.set(node, registry)
}

function seconds (ms: number): number { return ms / 1000 }

/** Sets a collect-time counter to the given totals (by label values). */
function setTotals<L extends string> (c: Counter<L>, totals: Array<[Partial<Record<L, string>>, number]>): void {
  c.reset()
  for (const [labels, n] of totals) if (n > 0) c.inc(labels as any, n)
}

function features<T> (node: MeshNode, name: string): T | undefined {
  return node.features.get(name) as T | undefined
}

function tryGet<T> (fn: () => T): T | undefined {
  try { return fn() } catch { return undefined }
}

/** The node's metrics, created on first use. */
export function telemetryOf (node: MeshNode): NodeTelemetry {
  const existing = nodes.get(node)
  if (existing != null) return existing
  const registry = registries.get(node) ?? new Registry()
  const registers = [registry]

  new Gauge({
    name: 'mesh_peers_connected', help: 'Peers with an open connection', registers,
    collect () { this.set(tryGet(() => node.peers().length) ?? 0) }
  })
  new Gauge({
    name: 'mesh_peers_authenticated', help: 'Connected peers that passed the membership handshake', registers,
    collect () { this.set(tryGet(() => node.peers().filter(p => p.authenticated).length) ?? 0) }
  })
  new Counter({
    name: 'mesh_peers_rejected_total', help: 'Peers refused, by reason (wrong-network, membership failures, revoked)', labelNames: ['reason'], registers,
    collect () { setTotals(this, [...node.counters.peersRejected].map(([reason, n]) => [{ reason }, n])) }
  })
  new Counter({
    name: 'mesh_revocations_dropped_total', help: 'Revocation messages dropped, by reason', labelNames: ['reason'], registers,
    collect () { setTotals(this, [...node.counters.revocationsDropped].map(([reason, n]) => [{ reason }, n])) }
  })
  new Gauge({
    name: 'mesh_dht_routing_table_peers', help: 'Peers in the DHT routing table', registers,
    collect () { this.set(tryGet(() => (node.libp2p.services.dht as any).routingTable?.size as number) ?? 0) }
  })
  const dhtLookup = new Histogram({
    name: 'mesh_dht_lookup_seconds', help: 'DHT lookups started by this node (find peer, find providers, closest peers, provide), by outcome',
    labelNames: ['op', 'result'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers
  })

  // Gossip: documents (doc-sync) and descriptor announcements.
  const docStats = (): ReturnType<typeof documentsOf>['sync']['stats'] | undefined => tryGet(() => documentsOf(node).sync.stats)
  const descStats = (): ReturnType<typeof descriptorsOf> | undefined => tryGet(() => descriptorsOf(node))
  new Counter({
    name: 'mesh_gossip_messages_received_total', help: 'Gossip messages received, by channel', labelNames: ['channel'], registers,
    collect () {
      setTotals(this, [[{ channel: 'docs' }, docStats()?.gossip.received ?? 0], [{ channel: 'descriptors' }, descStats()?.stats().received.gossip ?? 0]])
    }
  })
  new Counter({
    name: 'mesh_gossip_messages_published_total', help: 'Gossip messages published, by channel', labelNames: ['channel'], registers,
    collect () { setTotals(this, [[{ channel: 'docs' }, docStats()?.gossip.published ?? 0], [{ channel: 'descriptors' }, descStats()?.stats().published ?? 0]]) }
  })
  new Counter({
    name: 'mesh_gossip_messages_dropped_total', help: 'Messages and frames refused before touching state, by channel and reason', labelNames: ['channel', 'reason'], registers,
    collect () {
      setTotals(this, [
        ...Object.entries(docStats()?.dropped ?? {}).map(([reason, n]): [Record<string, string>, number] => [{ channel: 'docs', reason }, n]),
        ...Object.entries(descStats()?.dropped() ?? {}).map(([reason, n]): [Record<string, string>, number] => [{ channel: 'descriptors', reason }, n])
      ])
    }
  })

  // Documents.
  new Counter({
    name: 'mesh_doc_updates_applied_total', help: 'Document updates from peers applied (sync sessions)', registers,
    collect () { setTotals(this, [[{}, docStats()?.sync.updatesApplied ?? 0]]) }
  })
  new Counter({
    name: 'mesh_doc_sync_sessions_total', help: 'Document sync sessions with peers, by result', labelNames: ['result'], registers,
    collect () {
      const s = docStats()?.sync
      setTotals(this, [[{ result: 'ok' }, (s?.sessions ?? 0) - (s?.failed ?? 0)], [{ result: 'failed' }, s?.failed ?? 0]])
    }
  })
  new Counter({
    name: 'mesh_doc_sync_rounds_total', help: 'Anti-entropy rounds run', registers,
    collect () { setTotals(this, [[{}, docStats()?.antiEntropy.rounds ?? 0]]) }
  })
  new Counter({
    name: 'mesh_doc_sync_repaired_total', help: 'Documents repaired by anti-entropy', registers,
    collect () { setTotals(this, [[{}, docStats()?.antiEntropy.repaired ?? 0]]) }
  })
  new Counter({
    name: 'mesh_doc_sync_bytes_total', help: 'Bytes of document sync exchanged, by direction', labelNames: ['direction'], registers,
    collect () { setTotals(this, [[{ direction: 'sent' }, docStats()?.sync.bytesSent ?? 0], [{ direction: 'received' }, docStats()?.sync.bytesReceived ?? 0]]) }
  })
  new Counter({
    name: 'mesh_doc_persist_failures_total', help: 'Document updates that could not be written to disk', registers,
    collect () { setTotals(this, [[{}, docStats()?.persistFailed ?? 0]]) }
  })
  new Gauge({
    name: 'mesh_documents_open', help: 'Documents this node replicates now', registers,
    collect () { this.set(tryGet(() => documentsOf(node).sync.docs().length) ?? 0) }
  })
  new Gauge({
    name: 'mesh_doc_websocket_clients', help: 'y-websocket clients connected to this process', registers,
    collect () { this.set(wsStats.open) }
  })

  // Descriptors.
  new Gauge({
    name: 'mesh_descriptors_known', help: 'Live edge-node descriptors known, this node\'s own included', registers,
    collect () { this.set(descStats()?.stats().known ?? 0) }
  })

  // Artifacts.
  const artifactFetches = new Counter({
    name: 'mesh_artifact_fetches_total', help: 'Artifact fetches, by where the module came from and result', labelNames: ['source', 'result'], registers
  })
  const artifactBytes = new Counter({ name: 'mesh_artifact_fetched_bytes_total', help: 'Bytes of artifact modules fetched from the mesh', registers })
  new Gauge({
    name: 'mesh_artifacts_stored', help: 'Artifacts held by this node, by origin', labelNames: ['origin'], registers,
    collect () {
      this.reset()
      const all = tryGet(() => artifactsOf(node).ls()) ?? []
      this.set({ origin: 'published' }, all.filter(e => e.origin === 'published').length)
      this.set({ origin: 'fetched' }, all.filter(e => e.origin === 'fetched').length)
    }
  })

  // Functions.
  const invocations = new Counter({
    name: 'mesh_function_invocations_total', help: 'Function invocations run by this node, by outcome and by who asked (local or remote)', labelNames: ['outcome', 'origin'], registers
  })
  const invocationSeconds = new Histogram({
    name: 'mesh_function_invocation_seconds', help: 'Wall time of function invocations served by this node (artifact fetch included)', labelNames: ['outcome'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers
  })
  new Gauge({
    name: 'mesh_function_calls_in_flight', help: 'Invocations running or waiting on this node', registers,
    collect () { this.set(features<Functions>(node, 'functions')?.stats().inFlight ?? 0) }
  })
  new Counter({
    name: 'mesh_wasm_compiles_total', help: 'Wasm modules compiled (cache misses)', registers,
    collect () { setTotals(this, [[{}, features<Functions>(node, 'functions')?.stats().compiles ?? 0]]) }
  })

  const t: NodeTelemetry = { registry, dhtLookup, invocations, invocationSeconds, artifactFetches, artifactBytes, recentInvocations: [] }
  nodes.set(node, t)
  return t
}

/** Prometheus text of a node's metrics. */
export async function metricsText (node: MeshNode): Promise<{ contentType: string, text: string }> {
  const { registry } = telemetryOf(node)
  return { contentType: registry.contentType, text: await registry.metrics() }
}

/**
 * Runs an invocation this node serves, in a span (the child of the caller's, whose traceparent
 * came with the request) and counted: outcome, duration, recent list.
 */
export async function observeInvocation (node: MeshNode, request: InvokeRequest, from: string | undefined, run: () => Promise<InvokeResponse>): Promise<InvokeResponse> {
  const t = telemetryOf(node)
  const started = performance.now()
  const parent = from != null ? contextFromTraceparent(request.traceparent) : context.active()
  let traceId: string | undefined
  const response = await inSpan('mesh.function.run', {
    'mesh.artifact': request.artifact.toString(), 'mesh.caller': from ?? 'local'
  }, async (span) => {
    const r = await run()
    span.setAttribute('mesh.function.outcome', r.outcome)
    span.setAttribute('mesh.function.exit_code', r.exitCode)
    if (r.outcome !== 'ok') span.setStatus({ code: 2, message: r.message ?? r.outcome })
    if (span.isRecording()) traceId = span.spanContext().traceId
    return r
  }, { kind: from != null ? SpanKind.SERVER : SpanKind.INTERNAL, parent })
  const ms = performance.now() - started
  t.invocations.inc({ outcome: response.outcome, origin: from != null ? 'remote' : 'local' })
  t.invocationSeconds.observe({ outcome: response.outcome }, seconds(ms))
  t.recentInvocations.push({ time: new Date().toISOString(), artifact: request.artifact.toString(), from: from ?? 'local', outcome: response.outcome, ms, ...(traceId != null ? { traceId } : {}) })
  if (t.recentInvocations.length > RECENT) t.recentInvocations.splice(0, t.recentInvocations.length - RECENT)
  return response
}

type Lookup = (...args: any[]) => AsyncIterable<any>

/** Times a DHT operation (an async generator) from its first pull to its end. */
function timed (hist: Histogram<'op' | 'result'>, op: string, fn: Lookup): Lookup {
  return async function * (...args: any[]) {
    const end = hist.startTimer({ op })
    let result = 'ok'
    try {
      yield * fn(...args)
    } catch (err: any) {
      result = err?.name === 'AbortError' || err?.name === 'TimeoutError' ? 'aborted' : err?.name === 'NotFoundError' ? 'not-found' : 'error'
      throw err
    } finally {
      end({ result })
    }
  }
}

/**
 * The telemetry feature: sets up the node's metrics and observes what has no stats of its own,
 * DHT lookups and artifact fetches (each fetch also a span). Runs last, once the others started.
 */
export const telemetry: FeatureFactory = (node) => {
  const self: Feature = {
    async start () {
      const t = telemetryOf(node)
      const dht = node.libp2p.services.dht as any
      for (const [method, op] of [['findPeer', 'find_peer'], ['findProviders', 'find_providers'], ['getClosestPeers', 'get_closest_peers'], ['provide', 'provide']] as const) {
        if (typeof dht?.[method] === 'function') dht[method] = timed(t.dhtLookup, op, dht[method].bind(dht))
      }
      const artifacts = features<Artifacts>(node, 'artifacts')
      if (artifacts != null) {
        const fetch = artifacts.fetch.bind(artifacts)
        artifacts.fetch = async (ref, options) => inSpan('mesh.artifact.fetch', { 'mesh.artifact.ref': ref }, async (span) => {
          const held = new Set(artifacts.ls().map(e => e.manifest))
          try {
            const got = await fetch(ref, options)
            const source = held.has(got.entry.manifest) ? 'local' : 'network'
            span.setAttributes({ 'mesh.artifact.source': source, 'mesh.artifact.bytes': got.bytes.length, 'mesh.artifact.manifest': got.entry.manifest })
            t.artifactFetches.inc({ source, result: 'ok' })
            if (source === 'network') t.artifactBytes.inc(got.bytes.length)
            return got
          } catch (err) {
            t.artifactFetches.inc({ source: 'network', result: 'error' })
            throw err
          }
        })
      }
    }
  }
  return self
}

export interface Readiness {
  ready: boolean
  checks: {
    storesOpen: { ok: boolean, detail: string }
    dhtRoutable: { ok: boolean, detail: string }
    joined: { ok: boolean, detail: string }
  }
}

/**
 * Ready when the stores are open, the DHT is routable (a peer in the routing table, or no
 * bootstrap to wait for) and, in a community network, the node has joined (an authenticated
 * member connected, or it is the network's only root).
 */
export function readiness (node: MeshNode): Readiness {
  const started = tryGet(() => node.libp2p.status) === 'started'
  const docsOpen = node.features.has('docs') ? tryGet(() => documentsOf(node).store) != null : true
  const table = tryGet(() => (node.libp2p.services.dht as any).routingTable?.size as number) ?? 0
  const bootstrap = node.bootstrap.length
  const peers = tryGet(() => node.peers()) ?? []
  const members = peers.filter(p => p.authenticated).length
  const c = node.community
  const roots = c?.genesis.record.roots ?? []
  const onlyRoot = c != null && roots.length === 1 && roots[0] === node.did
  const checks: Readiness['checks'] = {
    storesOpen: { ok: started && docsOpen, detail: !started ? 'the node is not running' : docsOpen ? 'blockstore, datastore and documents open' : 'documents store not open' },
    dhtRoutable: {
      ok: table > 0 || bootstrap === 0,
      detail: table > 0 ? `${table} peer(s) in the routing table` : bootstrap === 0 ? 'no bootstrap configured; this node is a seed' : `routing table empty (${bootstrap} bootstrap address(es) configured)`
    },
    joined: {
      ok: c == null || members > 0 || onlyRoot,
      detail: c == null ? 'open network' : members > 0 ? `${members} authenticated member(s) connected` : onlyRoot ? 'this node is the network\'s only root' : `no authenticated member of ${c.name} connected yet`
    }
  }
  return { ready: Object.values(checks).every(x => x.ok), checks }
}

/** Everything `mesh status` and the dashboard show, in one object. */
export async function status (node: MeshNode): Promise<Record<string, unknown>> {
  const id = node.identity()
  const peers = node.peers()
  const docs = tryGet(() => documentsOf(node))
  const pubsub = (node.libp2p.services as any).pubsub
  const docList = docs != null ? await docs.list().catch(() => []) : []
  const stats = docs != null ? tryGet(() => docs.sync.stats) : undefined
  const fns = features<Functions>(node, 'functions')
  const arts = tryGet(() => artifactsOf(node).ls()) ?? []
  const t = telemetryOf(node)
  const desc = tryGet(() => descriptorsOf(node))
  return {
    time: new Date().toISOString(),
    node: { peerId: id.peerId, did: id.did, region: id.region, addresses: id.addresses, uptimeSeconds: Math.round(process.uptime()) },
    network: id.community != null
      ? { id: id.network, name: id.community.name, community: true, role: id.community.role, open: id.community.open, roots: id.community.roots }
      : { id: id.network, name: id.network, community: false, role: 'open' },
    ready: readiness(node),
    peers: {
      connected: peers.length,
      authenticated: peers.filter(p => p.authenticated).length,
      rejected: Object.fromEntries(node.counters.peersRejected),
      list: peers
    },
    documents: {
      count: docList.length,
      open: docList.filter(d => d.open).length,
      updatesApplied: stats?.sync.updatesApplied ?? 0,
      dropped: stats?.dropped ?? {},
      list: docList.slice(0, 100).map(d => ({
        ...d,
        replicas: d.open && pubsub != null ? (tryGet(() => pubsub.getSubscribers(docs!.sync.topic(d.docId)).map(String)) ?? []) : []
      }))
    },
    artifacts: {
      count: arts.length,
      list: arts.map(e => ({ name: e.name, version: e.version, manifest: e.manifest, size: e.size, origin: e.origin }))
    },
    functions: fns != null ? { ...fns.stats(), recent: t.recentInvocations.slice(-20) } : null,
    descriptors: desc != null ? { ...desc.stats(), dropped: desc.dropped() } : null,
    recentErrors: recentErrors(20)
  }
}
