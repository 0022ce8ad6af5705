// `npm run demo`: a small Mesh community on this machine, walked through every capability.
//
// It starts five `mesh start` processes on 127.0.0.1 in two regions (repos in a temp dir) and
// drives them exactly as a user would, through the `mesh` CLI and the HTTP API: a root creates a
// community network and the others join with invites, they find each other through the DHT, an
// outsider is refused, descriptors are published and queried, an allocation picks the nearest
// eligible node, a Wasm artifact is published, fetched and invoked remotely, a document is edited
// on several nodes (one through a y-websocket client) and survives a partition, and the metrics
// and dashboard are shown. One line per step; it stops at the first failing step, says why, cleans
// up (Ctrl-C cleans up too) and exits 1; on success it exits 0.
//
//   node scripts/demo.ts
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'
import { buildWasmFixtures } from './build-wasm-fixtures.ts'
import { Cluster, DemoError, errorLine, waitFor } from './demo/cluster.ts'
import type { DemoNode } from './demo/cluster.ts'

const EU = 'eu-west'
const US = 'us-east'
/** The community: three nodes in eu-west, two in us-east. node-1 is the root of the network. */
const REGIONS: Record<string, string> = { 'node-1': EU, 'node-2': EU, 'node-3': US, 'node-4': EU, 'node-5': US }
const NAMES = Object.keys(REGIONS)
const MEMBERS = NAMES.slice(1)
const DOC = 'board'

/** What the steps learn and hand on to later steps. */
interface Demo {
  cluster: Cluster
  networkId?: string
  artifact?: { ref: string, manifest: string, bytes: Uint8Array }
  client?: { doc: Y.Doc, provider: WebsocketProvider }
}

interface Step { label: string, run: (demo: Demo) => Promise<string> }

/** A step that cannot run in this build: printed as skipped, not failed. */
class Skipped extends Error {}

// ---------------------------------------------------------------------------------------------
// The steps, in order. Each returns the one line it prints.

/** Five nodes, each on its own for now: libp2p on a free loopback port, the API on another. */
async function startNodes ({ cluster }: Demo): Promise<string> {
  await Promise.all(NAMES.map(async name => cluster.start(name, REGIONS[name])))
  const byRegion = (r: string): string => NAMES.filter(n => REGIONS[n] === r).join(', ')
  return `5 nodes up on 127.0.0.1: ${EU} ${byRegion(EU)}; ${US} ${byRegion(US)}`
}

/** node-1 creates a community network; each other node joins it with an invite made out to its DID. */
async function formNetwork (demo: Demo): Promise<string> {
  const { cluster } = demo
  const started = performance.now()
  const created = await cluster.json('node-1', ['network', 'create', 'demo'])
  if (created.role !== 'root') throw new DemoError(`node-1 should be the root of the network, is ${created.role}`)
  demo.networkId = created.id
  await Promise.all(MEMBERS.map(async (name) => {
    const { invite } = await cluster.json('node-1', ['network', 'invite', cluster.node(name).info.did, '--expires', '1d'])
    const joined = await cluster.json(name, ['join', invite])
    if (joined.id !== created.id || joined.role !== 'member') throw new DemoError(`${name} joined ${joined.id} as ${joined.role}`)
  }))
  await waitFor('node-1 to authenticate every member', async () => {
    const peers = await cluster.json('node-1', ['peers'])
    return MEMBERS.every(name => peers.some((p: any) => p.peerId === cluster.node(name).info.peerId && p.authenticated === true))
  }, 60_000, 500)
  return `node-1 created "demo" (${short(created.id)}); ${MEMBERS.length} nodes joined with invites and were authenticated in ${secs(performance.now() - started)}`
}

/** node-3 looks node-5 up in the DHT: both joined through node-1 and were never told of each other. */
async function dhtLookup ({ cluster }: Demo): Promise<string> {
  const target = cluster.node('node-5')
  const found = await waitFor('node-3 to find node-5 in the DHT', async () => {
    const r = await cluster.mesh(['routing', 'findpeer', target.info.did, '--repo', cluster.repoOf('node-3'), '--json', '--timeout', '5s'])
    if (r.code !== 0) throw new DemoError(errorLine(r.stderr))
    return JSON.parse(r.stdout)
  }, 60_000, 500)
  if (found.peerId !== target.info.peerId) throw new DemoError(`the lookup answered ${found.peerId}, not node-5`)
  if (!found.addresses.some((a: string) => target.info.addresses.some(b => b.startsWith(a)))) {
    throw new DemoError(`the lookup gave addresses ${found.addresses.join(' ')}, none of node-5's`)
  }
  return `node-3 found node-5 in ${ms(found.ms)} (${found.queried} peer${found.queried === 1 ? '' : 's'} asked), with node-1 as its only bootstrap`
}

/** DIDs and credentials: resolve a node's did:key, issue a credential and verify it. */
async function identity ({ cluster }: Demo): Promise<string> {
  const node5 = cluster.node('node-5').info.did
  const doc = await cluster.json('node-1', ['did', 'resolve', node5])
  if (doc.id !== node5) throw new DemoError(`resolved ${doc.id}, asked for ${node5}`)
  const { jwt } = await cluster.json('node-1', ['vc', 'issue', '--subject', cluster.node('node-3').info.did,
    '--type', 'EdgeOperatorCredential', '--claims', '{"site":"us-east-1"}', '--expires', '1h'])
  const vc = await cluster.json('node-3', ['vc', 'verify', jwt])
  if (vc.valid !== true || vc.issuer !== cluster.node('node-1').info.did || vc.claims?.site !== 'us-east-1') {
    throw new DemoError(`the credential did not verify as issued: ${JSON.stringify(vc)}`)
  }
  const keys = (doc.verificationMethod?.length ?? 0) + (doc.keyAgreement?.length ?? 0)
  return `node-5's DID resolves (${keys} keys); node-1 issued node-3 an EdgeOperatorCredential that verifies`
}

/** A node that knows the network's ID but holds no invite dials the root, and is refused. */
async function outsiderRefused ({ cluster, networkId }: Demo): Promise<string> {
  const root = cluster.node('node-1')
  const total = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0)
  const before = (await cluster.json('node-1', ['network'])).rejections as Record<string, number>
  const outsider = await cluster.start('outsider', EU, ['--network', networkId!, '--bootstrap', root.info.addresses[0]])
  try {
    const after = await waitFor('node-1 to refuse the outsider', async () => {
      const r = (await cluster.json('node-1', ['network'])).rejections as Record<string, number>
      return total(r) > total(before) ? r : undefined
    }, 45_000, 500)
    const reasons = Object.keys(after).filter(k => (after[k] ?? 0) > (before[k] ?? 0))
    await waitFor('node-1 to hang up on the outsider', async () =>
      !(await cluster.json('node-1', ['peers'])).some((p: any) => p.peerId === outsider.info.peerId), 20_000, 500)
    for (const name of NAMES) {
      const peers = await cluster.get(name, '/v1/peers')
      if (peers.peers.some((p: any) => p.peerId === outsider.info.peerId && p.authenticated === true)) {
        throw new DemoError(`${name} authenticated the outsider`)
      }
    }
    return `a node with the network's ID but no invite dialled node-1 and was refused (${reasons.join(', ')}); no member let it in`
  } finally {
    await cluster.stop('outsider')
  }
}

/** Every node publishes its signed descriptor; node-5 queries them by region. */
async function descriptors ({ cluster }: Demo): Promise<string> {
  await waitFor('node-5 to know all 5 descriptors with measured latencies', async () => {
    const all = await cluster.json('node-5', ['nodes'])
    return all.length === NAMES.length && all.every((n: any) => n.self === true || n.latencySource === 'measured')
  }, 60_000, 500)
  const eu = await cluster.json('node-5', ['nodes', '--region', EU])
  const want = NAMES.filter(n => REGIONS[n] === EU)
  const got = eu.map((n: any) => nameOf(cluster, n.did))
  if (!isDeepStrictEqual([...got].sort(), want)) throw new DemoError(`--region ${EU} gave ${got.join(', ')}, want ${want.join(', ')}`)
  if (eu.some((n: any) => n.region !== EU)) throw new DemoError('a descriptor outside eu-west matched --region eu-west')
  return `5 signed descriptors published; node-5: \`mesh nodes --region ${EU}\` → ${eu.map((n: any) => `${nameOf(cluster, n.did)} ${ms(n.latencyMs)}`).join(', ')}`
}

/**
 * `mesh alloc --region eu-west` from a us-east node picks the nearest eu-west node; from an eu-west
 * node, the node itself. Each lease is released again through the API.
 */
async function allocation ({ cluster }: Demo): Promise<string> {
  const eligible = async (): Promise<Array<{ did: string, latencyMs: number }>> => cluster.json('node-3', ['nodes', '--region', EU])
  const release = async (from: string, chosen: { did: string, lease: { id: string } }): Promise<void> => {
    const r = await cluster.call(from, 'DELETE', `/v1/allocations/${encodeURIComponent(chosen.did)}/${chosen.lease.id}`)
    if (r.released !== true) throw new DemoError(`${nameOf(cluster, chosen.did)} did not release lease ${chosen.lease.id}`)
  }
  let line = ''
  // Loopback RTTs are re-measured every few seconds: if a measurement lands between the query and
  // the allocation, the nearest node may change under us, so compare with the RTTs on both sides.
  for (let attempt = 1; line === '' && attempt <= 3; attempt++) {
    const before = await eligible()
    const alloc = await cluster.json('node-3', ['alloc', '--region', EU, '--ttl', '30000'])
    const after = await eligible()
    const chosen = alloc.chosen?.[0]
    if (chosen == null || chosen.region !== EU) throw new DemoError(`node-3's allocation chose ${JSON.stringify(chosen)}`)
    await release('node-3', chosen)
    const nearest = (list: Array<{ did: string, latencyMs: number }>): boolean =>
      list.every(n => n.did === chosen.did || n.latencyMs >= (list.find(m => m.did === chosen.did)?.latencyMs ?? Infinity))
    if (nearest(before) || nearest(after)) {
      line = `from node-3 (${US}) → ${nameOf(cluster, chosen.did)}, the nearest of ${before.length} eligible (${ms(chosen.latencyMs)})`
    } else if (attempt === 3) {
      throw new DemoError(`node-3's allocation chose ${nameOf(cluster, chosen.did)}, not the nearest eu-west node (${before.map(n => `${nameOf(cluster, n.did)} ${ms(n.latencyMs)}`).join(', ')})`)
    }
  }
  const local = await cluster.json('node-4', ['alloc', '--region', EU, '--ttl', '30000'])
  if (local.chosen?.[0]?.did !== cluster.node('node-4').info.did) {
    throw new DemoError(`node-4 (eu-west) should place eu-west work on itself, chose ${nameOf(cluster, local.chosen?.[0]?.did)}`)
  }
  await release('node-4', local.chosen[0])
  return `\`mesh alloc --region ${EU}\` ${line}; from node-4 → itself (0 ms); leases released`
}

/** A raw block put on one node is fetched on another over bitswap, verified by its CID. */
async function blocks ({ cluster }: Demo): Promise<string> {
  const file = join(cluster.dir, 'hello.txt')
  const text = `hello from node-2 at ${new Date().toISOString()}\n`
  await writeFile(file, text)
  const { cid } = await cluster.json('node-2', ['block', 'put', file])
  const r = await cluster.mesh(['block', 'get', cid, '--repo', cluster.repoOf('node-3'), '--timeout', '30s'])
  if (r.code !== 0) throw new DemoError(`mesh block get on node-3: ${errorLine(r.stderr)}`)
  if (r.stdout !== text) throw new DemoError('node-3 got other bytes than node-2 stored')
  return `block ${short(cid)} put on node-2, fetched on node-3 over bitswap in ${ms(r.ms)}`
}

/** A Wasm artifact (AssemblyScript, built now) is published on node-2 and fetched, byte for byte, on node-5. */
async function artifact (demo: Demo): Promise<string> {
  const { cluster } = demo
  const wasmDir = join(cluster.dir, 'wasm')
  const { echo } = await buildWasmFixtures(wasmDir, ['echo'])
  const published = await cluster.json('node-2', ['artifact', 'publish', join(wasmDir, 'echo.wasm'), '--name', 'echo', '--version', '1.0.0'])
  const out = join(cluster.dir, 'fetched.wasm')
  const r = await cluster.mesh(['artifact', 'fetch', 'echo@1.0.0', '-o', out, '--repo', cluster.repoOf('node-5'), '--timeout', '30s'])
  if (r.code !== 0) throw new DemoError(`mesh artifact fetch on node-5: ${errorLine(r.stderr)}`)
  const fetched = new Uint8Array(await readFile(out))
  if (!isDeepStrictEqual(fetched, echo)) throw new DemoError(`node-5 fetched ${fetched.length} bytes that differ from the ${echo.length} published`)
  const ls = await cluster.json('node-5', ['artifact', 'ls'])
  if (!ls.some((e: any) => e.manifest === published.manifest)) throw new DemoError('node-5 does not list the fetched artifact')
  demo.artifact = { ref: 'echo@1.0.0', manifest: published.manifest, bytes: echo }
  return `echo@1.0.0 (${echo.length} bytes, manifest ${short(published.manifest)}) published on node-2, fetched on node-5 byte for byte in ${ms(r.ms)}`
}

/** node-4 runs the artifact on node-2 under WASI and gets its output back. */
async function invoke ({ cluster, artifact }: Demo): Promise<string> {
  const started = performance.now()
  const r = await cluster.mesh(['fn', 'invoke', artifact!.ref, '--node', cluster.node('node-2').info.did,
    '--repo', cluster.repoOf('node-4'), '--timeout', '30s', '--', 'hello', 'mesh'])
  if (r.code !== 0) throw new DemoError(`mesh fn invoke exited ${r.code}: ${errorLine(r.stderr)}`)
  const want = 'args:hello,mesh\nstdin:\n'
  if (r.stdout !== want) throw new DemoError(`the function printed ${JSON.stringify(r.stdout)}, want ${JSON.stringify(want)}`)
  return `node-4 ran ${artifact!.ref} on node-2 under WASI: stdout "${r.stdout.split('\n')[0]}", exit 0, in ${ms(performance.now() - started)}`
}

/** A document edited on node-1 and node-3 with the CLI and by a y-websocket client on node-4. */
async function document (demo: Demo): Promise<string> {
  const { cluster } = demo
  const started = performance.now()
  const client = await connectClient(cluster, cluster.node('node-4'))
  demo.client = client
  await cluster.json('node-1', ['doc', 'set', DOC, 'title', '"Mesh demo board"'])
  await cluster.json('node-3', ['doc', 'set', DOC, 'from-us-east', '{"by":"node-3"}'])
  client.doc.getMap('data').set('from-browser', { by: 'a y-websocket client on node-4' })
  const data = await converged(demo, 'every node and the client to hold all three edits', d =>
    'title' in d && 'from-us-east' in d && 'from-browser' in d)
  const got = await cluster.json('node-5', ['doc', 'get', DOC])
  if (!isDeepStrictEqual(got.data, data)) throw new DemoError('`mesh doc get` on node-5 disagrees')
  return `"${DOC}" edited on node-1, node-3 and by a y-websocket client on node-4: all 5 nodes and the client agree on ${Object.keys(data).length} keys in ${secs(performance.now() - started)}`
}

/**
 * A partition: node-4 (and the client editing through it) is cut off; both sides edit, the same
 * key included; node-4 comes back on the same addresses and everyone converges.
 */
async function partition (demo: Demo): Promise<string> {
  const { cluster } = demo
  const { doc, provider } = demo.client!
  const node4 = cluster.node('node-4')
  const listen = node4.info.addresses.find(a => a.startsWith('/ip4/127.0.0.1/tcp/'))?.replace(/\/p2p\/.*$/, '')
  await cluster.stop('node-4')
  await waitFor('the client to notice that node-4 is gone', () => !provider.wsconnected, 20_000, 50)
  // The cut-off side: the client keeps editing offline.
  doc.getMap('data').set('status', 'edited offline, behind the partition')
  doc.getMap('data').set('offline-edit', true)
  // The other side: nodes 1, 2, 3 and 5 go on.
  await cluster.json('node-2', ['doc', 'set', DOC, 'status', '"edited on the majority side"'])
  await cluster.json('node-5', ['doc', 'set', DOC, 'majority-edit', 'true'])
  await cluster.start('node-4', REGIONS['node-4'], [], { listen, api: node4.apiAddress })
  const healed = performance.now()
  const data = await converged(demo, 'both sides\' edits everywhere after the partition healed', d =>
    d['offline-edit'] === true && d['majority-edit'] === true)
  const heal = performance.now() - healed
  const agreed = await Promise.all(NAMES.map(async name => (await cluster.json(name, ['doc', 'get', DOC])).data))
  if (!agreed.every(d => isDeepStrictEqual(d, data))) throw new DemoError('`mesh doc get` disagrees between nodes')
  return `node-4 and its client cut off, 2 edits on each side (both set "status"); node-4 back: all 5 nodes and the client agree ${secs(heal)} after it restarted (status: "${String(data.status)}")`
}

/** The Prometheus metrics, `mesh status` and the dashboard, when this build serves them. */
async function metrics ({ cluster }: Demo): Promise<string> {
  const node = cluster.node('node-1')
  const base = `http://${node.apiAddress}`
  let res: Response
  try {
    res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(10_000) })
  } catch (err: any) {
    throw new DemoError(`GET /metrics on node-1: ${err.cause?.code ?? err.message}`)
  }
  if (res.status === 404) throw new Skipped('not available in this build (no /metrics)')
  if (!res.ok) throw new DemoError(`GET /metrics on node-1: ${res.status} ${res.statusText}`)
  const samples = (await res.text()).split('\n').filter(l => l !== '' && !l.startsWith('#'))
  if (samples.length === 0) throw new DemoError('node-1 /metrics is empty')
  // A few of Mesh's own figures (summed over their labels), as far as this build exports them.
  const figure = (name: string): number | undefined => {
    const values = samples.filter(l => l.startsWith(name + ' ') || l.startsWith(name + '{')).map(l => Number(l.split(' ').at(-1)))
    return values.length === 0 ? undefined : values.reduce((a, b) => a + b, 0)
  }
  const figures = ['mesh_peers_authenticated', 'mesh_peers_rejected_total', 'mesh_descriptors_known', 'mesh_doc_updates_applied_total']
    .flatMap(name => { const v = figure(name); return v == null ? [] : [`${name.replace(/^mesh_/, '')} ${v}`] })
  const status = await cluster.mesh(['status', '--json', '--repo', node.repo])
  let statusText = ''
  if (status.code === 0) {
    const s = JSON.parse(status.stdout)
    if (s.ready?.ready !== true) throw new DemoError(`\`mesh status\` on node-1 says it is not ready: ${JSON.stringify(s.ready)}`)
    statusText = `; \`mesh status\`: ready, ${s.peers?.authenticated} peers authenticated`
  } else if (!/unknown command/.test(status.stderr)) {
    throw new DemoError(`\`mesh status\` on node-1 exited ${status.code}: ${errorLine(status.stderr)}`)
  }
  const dash = await fetch(`${base}/`, { signal: AbortSignal.timeout(10_000) })
  const html = dash.ok && (dash.headers.get('content-type') ?? '').includes('text/html')
  await dash.body?.cancel().catch(() => {})
  if (!html) throw new DemoError(`node-1 serves /metrics but no dashboard at / (${dash.status} ${dash.headers.get('content-type') ?? ''})`)
  return `node-1 /metrics: ${samples.length} samples${figures.length > 0 ? ` (${figures.join(', ')})` : ''}${statusText}; dashboard: ${base}/`
}

const STEPS: Step[] = [
  { label: 'nodes', run: startNodes },
  { label: 'network', run: formNetwork },
  { label: 'DHT', run: dhtLookup },
  { label: 'identity', run: identity },
  { label: 'outsider', run: outsiderRefused },
  { label: 'descriptors', run: descriptors },
  { label: 'allocation', run: allocation },
  { label: 'blocks', run: blocks },
  { label: 'artifact', run: artifact },
  { label: 'function', run: invoke },
  { label: 'document', run: document },
  { label: 'partition', run: partition },
  { label: 'metrics', run: metrics }
]

// ---------------------------------------------------------------------------------------------
// Helpers of the steps.

/** A y-websocket client (as any Yjs app would use) on a node's `/v1/docs/<id>` WebSocket. */
async function connectClient (cluster: Cluster, node: DemoNode): Promise<{ doc: Y.Doc, provider: WebsocketProvider }> {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://${node.apiAddress}/v1/docs`, DOC, doc, {
    WebSocketPolyfill: WebSocket as any, disableBc: true, params: { token: await cluster.token(node.name) }
  })
  cluster.onCleanup(() => { provider.destroy(); doc.destroy() })
  await waitFor(`the y-websocket client to sync with ${node.name}`, () => provider.synced, 30_000, 50)
  return { doc, provider }
}

/** Waits until every node (over the HTTP API) and the client hold the same data, and `ok` holds of it. */
async function converged (demo: Demo, what: string, ok: (data: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const { cluster, client } = demo
  return waitFor(what, async () => {
    const all = await Promise.all(NAMES.map(async name => (await cluster.get(name, `/v1/docs/${DOC}?timeout=5000`)).data as Record<string, unknown>))
    const first = all[0]
    if (!ok(first) || !all.every(d => isDeepStrictEqual(d, first))) return undefined
    if (client != null && !isDeepStrictEqual(client.doc.getMap('data').toJSON(), first)) return undefined
    return first
  }, 60_000, 250)
}

function nameOf (cluster: Cluster, did: string | undefined): string {
  for (const n of cluster.nodes.values()) if (n.info.did === did) return n.name
  return did ?? 'nothing'
}

const short = (cid: string): string => `${cid.slice(0, 10)}…${cid.slice(-4)}`
const ms = (n: number | null | undefined): string => n == null ? '? ms' : n < 10 ? `${n.toFixed(1)} ms` : `${Math.round(n)} ms`
const secs = (n: number): string => `${(n / 1000).toFixed(1)} s`

// ---------------------------------------------------------------------------------------------
// The walkthrough.

const OK = '✔'
const FAIL = '✖'
const SKIP = '–'
const WIDTH = Math.max(...STEPS.map(s => s.label.length), 'cleanup'.length)
const tty = process.stdout.isTTY === true

function line (mark: string, label: string, text: string): void {
  if (tty) process.stdout.write('\r\x1b[K')
  process.stdout.write(`${mark} ${label.padEnd(WIDTH)}  ${text}\n`)
}

async function main (): Promise<number> {
  const cluster = await Cluster.create()
  const demo: Demo = { cluster }
  const began = performance.now()
  let interrupted = false
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return
    interrupted = true
    line(FAIL, 'interrupted', `${signal}: stopping the nodes and removing ${cluster.dir}`)
    void cluster.close().finally(() => process.exit(130))
  }
  // For the demo's own test: make one step fail on purpose, to see the failure path clean up.
  const failAt = process.env.MESH_DEMO_FAIL
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, onSignal)

  console.log(`Mesh demo: ${NAMES.length} nodes on 127.0.0.1 in ${EU} and ${US}; repos in ${cluster.dir}`)
  let failed = false
  let passed = 0
  for (const step of STEPS) {
    if (interrupted) break
    if (tty) process.stdout.write(`… ${step.label}`)
    const started = performance.now()
    try {
      if (failAt === step.label) throw new DemoError('failed on purpose (MESH_DEMO_FAIL)')
      const text = await step.run(demo)
      line(OK, step.label, `${text} [${secs(performance.now() - started)}]`)
      passed++
    } catch (err: any) {
      if (interrupted) break
      if (err instanceof Skipped) {
        line(SKIP, step.label, `skipped: ${err.message}`)
        continue
      }
      const dead = cluster.dead()
      const why = (err instanceof DemoError ? err.message : `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}`).replace(/\s*\n\s*/g, ' ')
      line(FAIL, step.label, `${why}${dead.length > 0 ? ` (${dead.join('; ')})` : ''}`)
      failed = true
      break
    }
  }
  if (interrupted) {
    await cluster.close()
    return 130
  }

  // Cleanup is a step too: every node must stop cleanly on SIGTERM.
  const running = [...cluster.nodes.values()]
  const codes = await Promise.all(running.map(async n => [n.name, await cluster.stop(n.name)] as const))
  await cluster.close()
  const unclean = codes.filter(([, code]) => code !== 0)
  if (unclean.length > 0) {
    line(FAIL, 'cleanup', `${unclean.map(([n, c]) => typeof c === 'string' ? `${n} was killed by ${c}` : `${n} exited ${c}`).join(', ')} when asked to stop; temp dir removed`)
    failed = true
  } else {
    line(OK, 'cleanup', `${running.length} nodes stopped cleanly, ${cluster.dir} removed`)
  }
  console.log(failed
    ? `demo failed after ${passed} of ${STEPS.length} steps (${secs(performance.now() - began)})`
    : `demo finished: ${passed} of ${STEPS.length} steps passed in ${secs(performance.now() - began)}`)
  return failed ? 1 : 0
}

process.exit(await main())
