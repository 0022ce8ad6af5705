// Observability, as an operator meets it: /metrics scraped from real nodes (values move after
// actions), /readyz, `mesh status`, leveled logs, and one trace across two nodes for a remote
// invocation, received by an in-process OTLP/HTTP (JSON) receiver.
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { buildWasmFixtures } from '../../scripts/build-wasm-fixtures.ts'
import { mesh, meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'
import type { AddressInfo } from 'node:net'

interface Sample { name: string, labels: Record<string, string>, value: number }

/** Parses Prometheus text exposition (what prom-client writes). */
function parseMetrics (text: string): { samples: Sample[], types: Map<string, string> } {
  const samples: Sample[] = []
  const types = new Map<string, string>()
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ')
      types.set(name, type)
      continue
    }
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    assert.ok(m != null, `not a Prometheus sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2]
    samples.push({ name: m[1], labels, value: Number(m[3]) })
  }
  return { samples, types }
}

async function scrape (node: NodeProcess): Promise<ReturnType<typeof parseMetrics>> {
  const res = await fetch(`${node.info.api}/metrics`)
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain/)
  return parseMetrics(await res.text())
}

function value (m: ReturnType<typeof parseMetrics>, name: string, labels: Record<string, string> = {}): number {
  return m.samples.filter(s => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0)
}

describe('metrics, readiness, status and logs', { timeout: 240_000 }, () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  let fixtures: string
  let a: NodeProcess
  let b: NodeProcess
  const others: NodeProcess[] = []

  before(async () => {
    dirs = await tempDirs()
    fixtures = await dirs.make('mesh-wasm-')
    await buildWasmFixtures(fixtures, ['echo'])
    a = await startNode(join(await dirs.make(), 'a'))
    b = await startNode(join(await dirs.make(), 'b'), ['--bootstrap', a.info.addresses[0]])
    await waitFor('B to see A', async () => (await meshJson(['peers', '--repo', b.repo])).some((p: any) => p.peerId === a.info.peerId), 30_000)
  })

  after(async () => {
    await Promise.all([a, b, ...others].filter(n => n != null).map(stopNode))
    await dirs.cleanup()
  })

  it('serves Prometheus text with libp2p\'s metrics and Mesh\'s, named by convention', async () => {
    const m = await scrape(a)
    for (const name of ['mesh_peers_authenticated', 'mesh_peers_connected', 'mesh_descriptors_known', 'mesh_documents_open', 'mesh_function_calls_in_flight']) {
      assert.equal(m.types.get(name), 'gauge', name)
    }
    for (const name of ['mesh_peers_rejected_total', 'mesh_gossip_messages_received_total', 'mesh_gossip_messages_dropped_total', 'mesh_doc_updates_applied_total',
      'mesh_doc_sync_rounds_total', 'mesh_artifact_fetches_total', 'mesh_artifact_fetched_bytes_total', 'mesh_function_invocations_total']) {
      assert.equal(m.types.get(name), 'counter', name)
    }
    assert.equal(m.types.get('mesh_dht_lookup_seconds'), 'histogram')
    assert.equal(m.types.get('mesh_function_invocation_seconds'), 'histogram')
    for (const [name, type] of m.types) {
      if (type === 'counter') assert.match(name, /_total$/, `counter ${name} ends in _total`)
    }
    assert.ok(value(m, 'mesh_peers_connected') >= 1, 'A counts B')
    assert.ok(value(m, 'libp2p_connection_manager_connections') >= 1, 'libp2p\'s own metrics are there')
    assert.ok(m.samples.some(s => s.name === 'libp2p_data_transfer_bytes_total' && s.labels.protocol != null), 'bytes per protocol')
  })

  it('counts a refused peer by reason', async () => {
    const before = value(await scrape(a), 'mesh_peers_rejected_total', { reason: 'wrong-network' })
    const c = await startNode(join(await dirs.make(), 'c'), ['--network', 'elsewhere'])
    others.push(c)
    await mesh(['connect', a.info.addresses[0], '--repo', c.repo, '--timeout', '10s'])
    await waitFor('A to count the refusal', async () => value(await scrape(a), 'mesh_peers_rejected_total', { reason: 'wrong-network' }) > before, 30_000)
    await stopNode(c)
  })

  it('times DHT lookups', async () => {
    const before = value(await scrape(b), 'mesh_dht_lookup_seconds_count', { op: 'find_peer' })
    await meshJson(['routing', 'findpeer', a.info.peerId, '--repo', b.repo])
    const m = await scrape(b)
    assert.equal(value(m, 'mesh_dht_lookup_seconds_count', { op: 'find_peer' }), before + 1)
    assert.ok(m.samples.some(s => s.name === 'mesh_dht_lookup_seconds_bucket' && s.labels.le === '+Inf' && s.labels.op === 'find_peer'))
  })

  it('counts invocations by outcome with their durations, and artifact fetches', async () => {
    await meshJson(['artifact', 'publish', join(fixtures, 'echo.wasm'), '--name', 'echo', '--version', '1.0.0', '--repo', a.repo])
    const before = await scrape(a)
    const r = await mesh(['fn', 'invoke', 'echo@1.0.0', '--node', a.info.peerId, '--repo', b.repo, '--', 'hi'])
    assert.equal(r.code, 0, r.stderr)
    const m = await scrape(a)
    assert.equal(value(m, 'mesh_function_invocations_total', { outcome: 'ok', origin: 'remote' }), value(before, 'mesh_function_invocations_total', { outcome: 'ok', origin: 'remote' }) + 1)
    assert.equal(value(m, 'mesh_function_invocation_seconds_count', { outcome: 'ok' }), value(before, 'mesh_function_invocation_seconds_count', { outcome: 'ok' }) + 1)
    assert.ok(value(m, 'mesh_function_invocation_seconds_sum') > 0)
    assert.ok(value(m, 'mesh_artifact_fetches_total', { source: 'local', result: 'ok' }) >= 1, 'the serving node read its own copy')
    // B runs it itself now: it fetches the module over the mesh.
    const local = await mesh(['fn', 'invoke', 'echo@1.0.0', '--repo', b.repo])
    assert.equal(local.code, 0, local.stderr)
    const mb = await scrape(b)
    assert.equal(value(mb, 'mesh_function_invocations_total', { outcome: 'ok', origin: 'local' }), 1)
    assert.equal(value(mb, 'mesh_artifact_fetches_total', { source: 'network', result: 'ok' }), 1)
    assert.ok(value(mb, 'mesh_artifact_fetched_bytes_total') > 100)
    assert.equal(value(mb, 'mesh_artifacts_stored', { origin: 'fetched' }), 1)
  })

  it('counts document updates applied from peers', async () => {
    await meshJson(['doc', 'set', 'metrics-doc', 'k', '"v"', '--repo', a.repo])
    await waitFor('B to get the document', async () => (await meshJson(['doc', 'get', 'metrics-doc', '--repo', b.repo])).data?.k === 'v', 30_000)
    const m = await scrape(b)
    assert.ok(value(m, 'mesh_doc_updates_applied_total') + value(m, 'mesh_gossip_messages_received_total', { channel: 'docs' }) >= 1)
    assert.ok(value(m, 'mesh_documents_open') >= 1)
  })

  it('/readyz is 200 with its checks on a routable node, 503 on one whose bootstrap is unreachable', async () => {
    const ok = await fetch(`${b.info.api}/readyz`)
    assert.equal(ok.status, 200)
    const body = await ok.json()
    assert.equal(body.ready, true)
    assert.deepEqual(Object.keys(body.checks).sort(), ['dhtRoutable', 'joined', 'storesOpen'])
    assert.equal((await fetch(`${a.info.api}/healthz`)).status, 200)

    const lonely = await startNode(join(await dirs.make(), 'lonely'), ['--bootstrap', '/ip4/127.0.0.1/tcp/1/p2p/' + a.info.peerId])
    others.push(lonely)
    const no = await fetch(`${lonely.info.api}/readyz`)
    assert.equal(no.status, 503)
    const checks = (await no.json()).checks
    assert.equal(checks.dhtRoutable.ok, false)
    assert.equal(checks.storesOpen.ok, true)
    // Its unreachable bootstrap is a warning: a structured log line, and in `mesh status`.
    const status = await waitFor('the warning to reach status', async () => {
      const s = await meshJson(['status', '--repo', lonely.repo])
      return s.recentErrors.some((e: any) => /bootstrap .* unreachable/.test(e.msg)) ? s : undefined
    }, 30_000)
    assert.equal(status.ready.ready, false)
    const line = lonely.stderr().split('\n').find(l => l.includes('unreachable'))
    assert.ok(line != null, lonely.stderr())
    const entry = JSON.parse(line)
    assert.equal(entry.level, 40)
    assert.match(entry.msg, /bootstrap/)
    await stopNode(lonely)
  })

  it('`mesh status` shows network, peers, documents, artifacts, functions and errors on one screen', async () => {
    const r = await mesh(['status', '--repo', a.repo])
    assert.equal(r.code, 0, r.stderr)
    for (const heading of ['node', 'network', 'ready', 'peers', 'documents', 'artifacts', 'functions', 'errors']) {
      assert.match(r.stdout, new RegExp(`^${heading}\\s`, 'm'), heading)
    }
    assert.match(r.stdout, /^artifacts 1$/m)
    assert.match(r.stdout, /echo@1\.0\.0/)
    assert.ok(r.stdout.includes(b.info.peerId.slice(0, 12)), 'lists B')
    const json = await meshJson(['status', '--repo', a.repo])
    assert.equal(json.node.peerId, a.info.peerId)
    assert.ok(json.peers.connected >= 1)
    assert.ok(json.functions.recent.some((c: any) => c.from === b.info.peerId && c.outcome === 'ok'))
  })

  it('logs are quiet by default and --log-level is checked', async () => {
    assert.equal(a.stderr().trim(), '', 'a healthy node says nothing at the default level')
    const bad = await mesh(['start', '--repo', join(await dirs.make(), 'bad'), '--log-level', 'loud', '--api', '127.0.0.1:0'])
    assert.notEqual(bad.code, 0)
    assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr)
    assert.match(bad.stderr, /--log-level is one of/)
  })
})

describe('traces', { timeout: 180_000 }, () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  let a: NodeProcess
  let b: NodeProcess
  let receiver: ReturnType<typeof createServer>
  const spans: Array<{ service: string, node?: string, traceId: string, spanId: string, parentSpanId?: string, name: string }> = []
  const saved = { ...process.env }

  before(async () => {
    dirs = await tempDirs()
    // An OTLP/HTTP receiver: the exporter posts JSON (ExportTraceServiceRequest) to /v1/traces.
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        if (req.method === 'POST' && req.url === '/v1/traces') {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
          for (const rs of body.resourceSpans ?? []) {
            const service = rs.resource?.attributes?.find((a: any) => a.key === 'service.name')?.value?.stringValue
            for (const ss of rs.scopeSpans ?? []) {
              for (const s of ss.spans ?? []) {
                const node = s.attributes?.find((a: any) => a.key === 'service.instance.id')?.value?.stringValue
                spans.push({ service, node, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId === '' ? undefined : s.parentSpanId, name: s.name })
              }
            }
          }
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
      })
    })
    await new Promise<void>(resolve => receiver.listen(0, '127.0.0.1', resolve))
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`
    process.env.OTEL_BSP_SCHEDULE_DELAY = '200'
    a = await startNode(join(await dirs.make(), 'a'))
    b = await startNode(join(await dirs.make(), 'b'), ['--bootstrap', a.info.addresses[0]])
    for (const k of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_BSP_SCHEDULE_DELAY']) {
      if (saved[k] == null) delete process.env[k]
      else process.env[k] = saved[k]
    }
  })

  after(async () => {
    await Promise.all([a, b].filter(n => n != null).map(stopNode))
    await new Promise(resolve => receiver.close(resolve))
    await dirs.cleanup()
  })

  it('a remote invocation is one trace spanning both nodes', async () => {
    const fixtures = await dirs.make('mesh-wasm-')
    await buildWasmFixtures(fixtures, ['echo'])
    const published = await meshJson(['artifact', 'publish', join(fixtures, 'echo.wasm'), '--name', 'echo', '--version', '1.0.0', '--repo', a.repo])
    await waitFor('B to see A', async () => (await meshJson(['peers', '--repo', b.repo])).some((p: any) => p.peerId === a.info.peerId), 30_000)
    const r = await mesh(['fn', 'invoke', published.manifest, '--node', a.info.peerId, '--repo', b.repo, '--', 'traced'])
    assert.equal(r.code, 0, r.stderr)

    const served = await waitFor('A\'s span of the invocation', () => spans.find(s => s.name === 'mesh.function.run' && s.node === a.info.peerId), 30_000)
    const trace = await waitFor('B\'s spans of the same trace', () => {
      const t = spans.filter(s => s.traceId === served.traceId)
      return t.some(s => s.node === b.info.peerId && s.name === 'POST /v1/functions/:ref') ? t : undefined
    }, 30_000)
    assert.ok(trace.every(s => s.service === 'mesh'))
    const call = trace.find(s => s.name === 'mesh.function.call')
    assert.ok(call != null && call.node === b.info.peerId, 'B made the call')
    assert.equal(served.parentSpanId, call.spanId, 'A\'s run is the child of B\'s call')
    const apiSpan = trace.find(s => s.name === 'POST /v1/functions/:ref')!
    assert.equal(call.parentSpanId, apiSpan.spanId, 'the call is the child of B\'s API request')
    assert.equal(apiSpan.parentSpanId, undefined, 'the API request is the root')
    // The serving node read the artifact in a span of its own, in the same trace.
    assert.ok(trace.some(s => s.name === 'mesh.artifact.fetch' && s.node === a.info.peerId && s.parentSpanId === served.spanId))
  })
})
