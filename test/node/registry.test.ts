// Integration: the registry of Edge-Node Descriptors on real `mesh start` processes in two regions,
// driven through the CLI and the HTTP API, plus a hostile in-process peer that speaks the wire.
import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { didFromPeerId } from '../../identity/did-key.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { parseConstraints } from '../../registry/constraints.ts'
import { buildDescriptor, encodeSigned, signDescriptor } from '../../registry/descriptor.ts'
import { mesh, meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'

/** A repo with a faster ping interval (and, when given, a fixed number of work slots). */
async function makeRepo (dir: string, descriptors: Record<string, unknown> = {}): Promise<string> {
  const repo = join(dir, 'repo')
  await meshJson(['init', '--repo', repo])
  const file = join(repo, 'config.json')
  const config = JSON.parse(await readFile(file, 'utf8'))
  await writeFile(file, JSON.stringify({ ...config, descriptors: { pingIntervalMs: 1_000, ...descriptors } }))
  return repo
}

function oneLine (r: { code: number | null, stderr: string }): string {
  assert.notEqual(r.code, 0, `expected failure, got exit ${r.code}`)
  const lines = r.stderr.split('\n').filter(l => l !== '' && !l.includes('ExperimentalWarning') && !l.startsWith('(node:') && !l.includes('--trace-warnings'))
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${r.stderr}`)
  return lines[0]
}

async function api (node: NodeProcess, path: string): Promise<any> {
  const res = await fetch(`${node.info.api}${path}`)
  return await res.json()
}

describe('registry of edge-node descriptors', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const nodes: NodeProcess[] = []
  let a: NodeProcess // eu-west, the seed
  let b: NodeProcess // eu-west
  let c: NodeProcess // us-east, one slot

  before(async () => {
    dirs = await tempDirs()
    a = await startNode(await makeRepo(await dirs.make()), ['--region', 'eu-west'])
    nodes.push(a)
    const boot = ['--bootstrap', a.info.addresses[0]]
    ;[b, c] = await Promise.all([
      startNode(await makeRepo(await dirs.make()), ['--region', 'eu-west', ...boot]),
      startNode(await makeRepo(await dirs.make(), { slots: 1 }), ['--region', 'us-east', ...boot])
    ])
    nodes.push(b, c)
  })
  after(async () => {
    await Promise.all(nodes.map(stopNode))
    await dirs.cleanup()
  })

  it('mesh nodes lists every node with its measured RTT, nearest first', async () => {
    const list = await waitFor('A to know all three nodes with a measured RTT', async () => {
      const l = await meshJson(['nodes', '--repo', a.repo])
      return l.length === 3 && l.every((n: any) => n.self || n.latencySource === 'measured') ? l : undefined
    }, 30_000)
    assert.deepEqual(new Set(list.map((n: any) => n.did)), new Set([a.info.did, b.info.did, c.info.did]))
    assert.equal(list[0].did, a.info.did, 'the node itself is nearest')
    for (let i = 1; i < list.length; i++) assert.ok(list[i - 1].latencyMs <= list[i].latencyMs, 'sorted nearest first')
    const byDid = new Map(list.map((n: any) => [n.did, n]))
    assert.equal((byDid.get(c.info.did) as any).region, 'us-east')
    assert.equal((byDid.get(c.info.did) as any).slots, 1)
    assert.equal((byDid.get(b.info.did) as any).region, 'eu-west')
    const human = await mesh(['nodes', '--repo', a.repo])
    assert.equal(human.code, 0)
    for (const n of [a, b, c]) assert.ok(human.stdout.includes(n.info.did))
    assert.match(human.stdout, / ms /)
    // The descriptor itself, as signed, is served too.
    const one = await api(a, `/v1/nodes/${encodeURIComponent(c.info.did)}`)
    assert.equal(one.descriptor.id, c.info.did)
    assert.equal(one.descriptor['@context'], 'https://mesh.dev/ns/end/v1')
  })

  it('--region filters', async () => {
    const us = await meshJson(['nodes', '--repo', a.repo, '--region', 'us-east'])
    assert.deepEqual(us.map((n: any) => n.did), [c.info.did])
    const eu = await waitFor('B to know both eu-west nodes', async () => {
      const l = await meshJson(['nodes', '--repo', b.repo, '--region', 'eu-west'])
      return l.length === 2 ? l : undefined
    })
    assert.deepEqual(new Set(eu.map((n: any) => n.did)), new Set([a.info.did, b.info.did]))
    const none = await meshJson(['nodes', '--repo', a.repo, '--min-cpus', '100000'])
    assert.deepEqual(none, [])
    const bad = await mesh(['nodes', '--repo', a.repo, '--max-latency', 'soon'])
    assert.match(oneLine(bad), /--max-latency wants a non-negative number/)
  })

  let d: NodeProcess // eu-central, started late
  it('a node started late learns every live descriptor from its peers within seconds', async () => {
    d = await startNode(await makeRepo(await dirs.make()), ['--region', 'eu-central', '--bootstrap', b.info.addresses[0]])
    nodes.push(d)
    const list = await waitFor('D to learn all four descriptors', async () => {
      const l = await meshJson(['nodes', '--repo', d.repo])
      return l.length === 4 ? l : undefined
    }, 10_000)
    assert.deepEqual(new Set(list.map((n: any) => n.did)), new Set([a.info.did, b.info.did, c.info.did, d.info.did]))
    const { stats } = await api(d, '/v1/nodes')
    assert.ok(stats.received.pull >= 3, `learned by asking its peers (pull), got ${JSON.stringify(stats)}`)
    // And the others learn D.
    await waitFor('A to learn D', async () => (await meshJson(['nodes', '--repo', a.repo])).length === 4)
  })

  it('mesh alloc --region eu-west picks an eu-west node, and never one outside a region set', async () => {
    await waitFor('C to know all four nodes', async () => (await meshJson(['nodes', '--repo', c.repo])).length === 4)
    const one = await meshJson(['alloc', '--repo', c.repo, '--region', 'eu-west'])
    assert.equal(one.chosen.length, 1)
    assert.equal(one.chosen[0].region, 'eu-west')
    assert.match(one.chosen[0].lease.id, /^[0-9a-f-]{36}$/)
    // C is nearest to itself but outside the set: the set is a hard filter, not a preference.
    const two = await meshJson(['alloc', '--repo', c.repo, '--constraint', 'region in {eu-west, eu-central}', '--count', '3'])
    assert.equal(two.chosen.length, 3)
    for (const n of two.chosen) assert.ok(['eu-west', 'eu-central'].includes(n.region), `${n.did} is in ${n.region}`)
    assert.equal(new Set(two.chosen.map((n: any) => n.did)).size, 3, 'distinct nodes')
    const human = await mesh(['alloc', '--repo', a.repo, '--region', 'eu-central'])
    assert.equal(human.code, 0)
    assert.ok(human.stdout.includes(d.info.did))
    assert.match(human.stdout, /lease [0-9a-f-]{36}/)
  })

  it('a no-match answer names the constraint that excluded the nodes', async () => {
    const r = await mesh(['alloc', '--repo', a.repo, '--region', 'ap-south'])
    assert.match(oneLine(r), /region = ap-south: excluded 4 of 4/)
    const r2 = await mesh(['alloc', '--repo', a.repo, '--region', 'eu-west', '--min-cpus', '100000'])
    assert.match(oneLine(r2), /region = eu-west: excluded 2 of 4; cpus >= 100000: excluded 2 of the remaining 2/)
    const res = await fetch(`${a.info.api}/v1/allocations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${(await readFile(join(a.repo, 'api.token'), 'utf8')).trim()}` },
      body: JSON.stringify({ constraints: [{ field: 'region', op: 'in', value: ['ap-south', 'sa-east'] }] })
    })
    assert.equal(res.status, 422)
    const body = await res.json()
    assert.match(body.explanation, /region in \{ap-south, sa-east\}: excluded 4 of 4/)
    assert.equal(body.exclusions[0].excluded, 4)
    const bad = await mesh(['alloc', '--repo', a.repo, '--constraint', 'colour = blue'])
    assert.match(oneLine(bad), /colour/)
  })

  it('two concurrent allocations on a node with one free slot do not both get it', async () => {
    const [x, y] = await Promise.all([
      mesh(['alloc', '--repo', a.repo, '--region', 'us-east', '--json']),
      mesh(['alloc', '--repo', b.repo, '--region', 'us-east', '--json'])
    ])
    const won = [x, y].filter(r => r.code === 0)
    const lost = [x, y].filter(r => r.code !== 0)
    assert.equal(won.length, 1, `exactly one wins: ${x.stderr} | ${y.stderr}`)
    assert.equal(JSON.parse(won[0].stdout).chosen[0].did, c.info.did)
    // The loser is refused by C's lease book (409), or, when C's updated descriptor reached it first,
    // by the free-slots filter (422): either way it does not get the slot.
    assert.match(oneLine(lost[0]), /oversubscribed|free slots >= 1: excluded 1 of the remaining 1/)
    // The slot stays taken: a third try is refused too (by the lease book, or by C's fresh descriptor).
    const third = await mesh(['alloc', '--repo', d.repo, '--region', 'us-east'])
    assert.match(oneLine(third), /oversubscribed|free slots >= 1: excluded 1 of the remaining 1/)
  })

  it('forged, tampered, expired, oversized and schema-violating descriptors are dropped and counted', async () => {
    const key = await generateKeyPair('Ed25519')
    const evil = new MeshNode({ privateKey: key, network: 'default', listen: ['/ip4/127.0.0.1/tcp/0'], minPeers: 0 })
    await evil.start()
    try {
      const did = didFromPeerId(evil.peerId)
      const software = { name: 'evil', version: '1' }
      const wrongNetwork = encodeSigned(await signDescriptor(buildDescriptor({ did, network: 'elsewhere', region: 'eu-west', software }), key))
      // A hostile pull answer: promises five, sends one from another network, then hangs up.
      await evil.libp2p.handle('/mesh/default/descriptors/1.0.0', async (stream) => {
        const lp = lpStream(stream)
        await lp.write(new TextEncoder().encode('5'))
        await lp.write(wrongNetwork)
        await stream.close()
      })
      await evil.connect(a.info.addresses[0])
      const topic = '/mesh/default/descriptors'
      const pubsub = evil.libp2p.services.pubsub!
      pubsub.subscribe(topic)
      await waitFor('A to subscribe to the descriptor topic', () => pubsub.getSubscribers(topic).some(p => p.toString() === a.info.peerId))

      const good = await signDescriptor(buildDescriptor({ did, network: 'default', region: 'eu-west', software }), key)
      const tampered = structuredClone(good)
      tampered.descriptor.region = 'us-east'
      const expired = await signDescriptor(buildDescriptor({ did, network: 'default', region: 'eu-west', software, now: Date.now() - 3_600_000, ttlMs: 60_000 }), key)
      const schema = dagCbor.encode({ descriptor: { ...good.descriptor, capacity: { slots: 1, freeSlots: 9 } }, signer: did, signature: new Uint8Array(64) })
      const forged = { ...good, descriptor: { ...good.descriptor, id: b.info.did, peerId: b.info.peerId }, signer: b.info.did }
      for (const bytes of [encodeSigned(tampered), encodeSigned(expired), schema, encodeSigned(forged), new Uint8Array([1, 2, 3]), new Uint8Array(70_000)]) {
        await pubsub.publish(topic, bytes)
      }
      const dropped = await waitFor('A to count every kind of bad descriptor', async () => {
        const { dropped } = await api(a, '/v1/nodes')
        const want = ['bad-signature', 'expired', 'schema', 'malformed', 'too-large', 'wrong-network']
        return want.every(r => (dropped[r] ?? 0) >= 1) ? dropped : undefined
      }, 20_000)
      assert.ok(dropped['bad-signature'] >= 2, 'tampered and forged both fail the signature')
      const list = await meshJson(['nodes', '--repo', a.repo])
      assert.equal(list.length, 4, 'nothing forged got in')
      assert.ok(!list.some((n: any) => n.did === did))
      assert.equal(list.find((n: any) => n.did === b.info.did).region, 'eu-west', 'B is not impersonated')
    } finally {
      await evil.stop()
    }
  })
})

describe('allocation over links of different latency (in-process nodes on @libp2p/memory)', () => {
  const started: MeshNode[] = []
  after(async () => { await Promise.all(started.map(async n => n.stop())) })

  const tag = Math.random().toString(36).slice(2)
  // The memory transport delays both directions of a connection by the latency of the node that
  // listened for it; Q dials everyone, so the RTT from Q to a node is about 2 × that node's latency.
  const make = async (name: string, region: string, latency: number, bootstrap: string[] = [], descriptors: Record<string, unknown> = {}): Promise<MeshNode> => {
    const { memory } = await import('@libp2p/memory')
    const { descriptorsFeature } = await import('../../node/descriptors.ts')
    const node = new MeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      region,
      listen: [`/memory/${tag}-${name}`],
      bootstrap,
      transports: [memory({ latency })],
      features: [['descriptors', descriptorsFeature]],
      config: { descriptors: { pingIntervalMs: 500, slots: 8, ...descriptors } }
    })
    started.push(node)
    await node.start()
    return node
  }

  /** Whether `from` has a lease stream open to `to` (allocations and anticipation open them; probes and gossip do not). */
  const leaseStreamFrom = (from: MeshNode, to: MeshNode, protocol: string): boolean => from.libp2p.getConnections(to.libp2p.peerId)
    .some(c => c.streams.some(s => s.protocol === protocol))

  it('picks the lowest-latency eligible node, and the latency bound excludes slow links', async () => {
    const { descriptorsOf } = await import('../../node/descriptors.ts')
    const far = await make('far', 'eu-west', 30)
    const near = await make('near', 'eu-west', 2)
    const mid = await make('mid', 'eu-west', 12)
    const us = await make('us', 'us-east', 1)
    const q = await make('q', 'ap-south', 1, ['far', 'near', 'mid', 'us'].map(n => `/memory/${tag}-${n}`))
    const registry = descriptorsOf(q)
    // Pings measure a link as soon as it is up; the descriptor crosses the slow link later. A
    // node's RTT is the least of its last few samples, and one sample taken while five nodes start
    // in this process can be late by more than the 20 ms between near and mid (it ranked mid first
    // once): wait until the samples show the injected order.
    const ms = (n: MeshNode): number => registry.latency(n.did).ms ?? Number.NaN
    await waitFor('Q to measure every node, in the injected order, and hold its descriptor', () =>
      [far, near, mid, us].every(n => registry.latency(n.did).source === 'measured' && registry.get(n.did) != null) &&
      ms(near) < ms(mid) && ms(mid) < ms(far), 30_000)

    const one = await registry.allocate({ constraints: parseConstraints('region = eu-west') })
    assert.ok(one.ok, JSON.stringify(one))
    assert.equal(one.chosen[0].did, near.did, 'nearest eligible node')
    assert.equal(one.chosen[0].latencySource, 'measured')

    // Out of time before any lease: the caller's abort, not a "no node granted a lease" answer.
    await assert.rejects(registry.allocate({ constraints: parseConstraints('region = eu-west'), signal: AbortSignal.abort(new Error('out of time')) }), /out of time/)

    const two = await registry.allocate({ constraints: parseConstraints('region = eu-west'), count: 2 })
    assert.ok(two.ok)
    assert.deepEqual(two.chosen.map(c => c.did), [near.did, mid.did], JSON.stringify([far, near, mid].map(n => registry.latency(n.did))))

    // A bound between the middle and the far link leaves out the far node only.
    const bound = Math.round((registry.latency(mid.did).ms! + registry.latency(far.did).ms!) / 2)
    const bounded = await registry.allocate({ constraints: parseConstraints(`region = eu-west, latency <= ${bound}`), count: 3 })
    assert.equal(bounded.ok, false)
    if (!bounded.ok) {
      assert.match(bounded.explanation, new RegExp(`latency <= ${bound} ms: excluded 1 of the remaining 3`))
      assert.deepEqual(bounded.candidates.map(c => c.did), [near.did, mid.did])
    }
  })

  it('keeps the nearest holder of each accelerator kind warm before any allocation asks for one', async () => {
    const { descriptorsOf } = await import('../../node/descriptors.ts')
    const { leaseProtocol } = await import('../../protocols/lease.ts')
    const seed = await make('warm-seed', 'eu-west', 1)
    const gpu = await make('warm-gpu', 'eu-west', 5, [`/memory/${tag}-warm-seed`], { accelerators: [{ kind: 'gpu', model: 'L4', memoryMb: 24_576 }] })
    const q = await make('warm-q', 'eu-west', 1, [`/memory/${tag}-warm-seed`])
    const registry = descriptorsOf(q)
    const leaseStreamTo = (node: MeshNode): boolean => leaseStreamFrom(q, node, leaseProtocol(q.network))
    // Q has allocated nothing; only anticipation opens a lease stream (probes and gossip do not).
    await waitFor('Q to open a lease stream to the GPU node', () => leaseStreamTo(gpu), 30_000)
    assert.equal(leaseStreamTo(seed), false, 'a node with no accelerator is not warmed')
    const out = await registry.allocate({ constraints: parseConstraints('accelerator = gpu') })
    assert.ok(out.ok, JSON.stringify(out))
    assert.equal(out.chosen[0].did, gpu.did)
  })

  it('keeps its likeliest lease holder in each other region warm, and none in its own', async () => {
    const { descriptorsOf } = await import('../../node/descriptors.ts')
    const { leaseProtocol } = await import('../../protocols/lease.ts')
    const euNear = await make('rw-eu-near', 'eu-west', 2)
    const euFar = await make('rw-eu-far', 'eu-west', 25)
    const us = await make('rw-us', 'us-east', 1)
    const home = await make('rw-home', 'ap-south', 1)
    const q = await make('rw-q', 'ap-south', 1, ['rw-eu-near', 'rw-eu-far', 'rw-us', 'rw-home'].map(n => `/memory/${tag}-${n}`))
    const registry = descriptorsOf(q)
    const leaseStreamTo = (node: MeshNode): boolean => leaseStreamFrom(q, node, leaseProtocol(q.network))
    // Q has allocated nothing and no node has an accelerator: only region anticipation opens lease
    // streams. eu-west's is the nearer of its two nodes once both are measured.
    await waitFor('Q to open lease streams to the nearer eu-west node and to the us-east one', () => leaseStreamTo(euNear) && leaseStreamTo(us), 30_000)
    assert.ok(registry.get(home.did) != null && registry.get(euFar.did) != null, 'Q holds every descriptor')
    assert.equal(leaseStreamTo(home), false, 'its own region is not warmed (it allocates there on itself first)')
    const out = await registry.allocate({ constraints: parseConstraints('region = us-east') })
    assert.ok(out.ok, JSON.stringify(out))
    assert.equal(out.chosen[0].did, us.did)
  })
})
