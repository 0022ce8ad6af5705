// Integration: descriptors found through the DHT, and a restarted node's new descriptor reaching
// everyone again (real `mesh start` processes on loopback).
import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { didFromPeerId } from '../../identity/did-key.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { endRecordKey } from '../../registry/dht-record.ts'
import { buildDescriptor, encodeSigned, signDescriptor } from '../../registry/descriptor.ts'
import { meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'

async function makeRepo (dir: string): Promise<string> {
  const repo = join(dir, 'repo')
  await meshJson(['init', '--repo', repo])
  const file = join(repo, 'config.json')
  const config = JSON.parse(await readFile(file, 'utf8'))
  await writeFile(file, JSON.stringify({ ...config, descriptors: { pingIntervalMs: 1_000 } }))
  return repo
}

async function api (node: NodeProcess, path: string): Promise<{ status: number, body: any }> {
  const res = await fetch(`${node.info.api}${path}`)
  return { status: res.status, body: await res.json() }
}

async function metric (node: NodeProcess, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${node.info.api}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(name + ' '))
  return line == null ? undefined : Number(line.split(' ').at(-1))
}

async function seqOn (node: NodeProcess, did: string): Promise<number | undefined> {
  const { status, body } = await api(node, `/v1/nodes/${encodeURIComponent(did)}`)
  return status === 200 ? body.seq : undefined
}

describe('descriptors in the DHT, and a node that restarts', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const nodes: NodeProcess[] = []
  let a: NodeProcess
  let b: NodeProcess
  let c: NodeProcess

  before(async () => {
    dirs = await tempDirs()
    a = await startNode(await makeRepo(await dirs.make()), ['--region', 'eu-west'])
    nodes.push(a)
    const boot = ['--bootstrap', a.info.addresses[0]]
    ;[b, c] = await Promise.all([
      startNode(await makeRepo(await dirs.make()), ['--region', 'eu-west', ...boot]),
      startNode(await makeRepo(await dirs.make()), ['--region', 'us-east', ...boot])
    ])
    nodes.push(b, c)
    await waitFor('every node to know all three descriptors', async () => {
      const counts = await Promise.all([a, b, c].map(async n => (await api(n, '/v1/nodes')).body.nodes.length))
      return counts.every(k => k === 3)
    }, 20_000)
  })
  after(async () => {
    await Promise.all(nodes.map(stopNode))
    await dirs.cleanup()
  })

  it('counts its own descriptor in descriptors_known, as the metric says', async () => {
    for (const n of [a, b, c]) {
      assert.equal((await api(n, '/v1/nodes')).body.stats.known, 3)
      assert.equal(await metric(n, 'mesh_descriptors_known'), 3)
    }
  })

  it('GET /v1/nodes/:did finds a descriptor by DID in the DHT', async () => {
    const found = await waitFor('A to find C\'s descriptor record in the DHT', async () => {
      const r = await api(a, `/v1/nodes/${encodeURIComponent(c.info.did)}?source=dht&timeout=5000`)
      return r.status === 200 ? r.body : undefined
    }, 20_000)
    assert.equal(found.source, 'dht')
    assert.equal(found.descriptor.id, c.info.did)
    assert.equal(found.region, 'us-east')
    // By peer ID too, and the local store answers first when it can.
    const local = await api(a, `/v1/nodes/${encodeURIComponent(c.info.did)}`)
    assert.equal(local.body.source, 'local')
    const byPeer = await api(b, `/v1/nodes/${c.info.peerId}?source=dht&timeout=5000`)
    assert.equal(byPeer.status, 200)
    assert.equal(byPeer.body.descriptor.id, c.info.did)
    // A node nobody published: a clear 404, not a hang.
    const nobody = didFromPeerId((await import('@libp2p/peer-id')).peerIdFromPrivateKey(await generateKeyPair('Ed25519')))
    const missing = await api(a, `/v1/nodes/${encodeURIComponent(nobody)}?timeout=3000`)
    assert.equal(missing.status, 404)
    assert.match(missing.body.error ?? missing.body.message, /no live descriptor/)
    const bad = await api(a, `/v1/nodes/${encodeURIComponent(c.info.did)}?source=gossip`)
    assert.equal(bad.status, 400)
  })

  it('DHT servers refuse a forged descriptor record under another node\'s key', async () => {
    const key = await generateKeyPair('Ed25519')
    const evil = new MeshNode({ privateKey: key, network: 'default', listen: ['/ip4/127.0.0.1/tcp/0'], gossip: false, minPeers: 0 })
    await evil.start()
    try {
      await evil.connect(a.info.addresses[0])
      const did = didFromPeerId(evil.peerId)
      const own = encodeSigned(await signDescriptor(buildDescriptor({ did, network: 'default', region: 'eu-west', software: { name: 'evil', version: '1' } }), key))
      // Its own (valid) descriptor, under C's key: every server's validator says no.
      let stored = 0
      let errors = 0
      try {
        for await (const evt of evil.libp2p.services.dht.put(endRecordKey(c.info.peerId), own, { signal: AbortSignal.timeout(10_000) })) {
          if (evt.name === 'PEER_RESPONSE' && evt.messageName === 'PUT_VALUE') stored++
          if (evt.name === 'QUERY_ERROR') errors++
        }
      } catch {}
      assert.equal(stored, 0, `a forged record was stored (${errors} errors)`)
      const r = await api(a, `/v1/nodes/${encodeURIComponent(c.info.did)}?source=dht&timeout=5000`)
      assert.equal(r.body.descriptor.id, c.info.did, 'C\'s own record is still what the DHT answers')
    } finally {
      await evil.stop()
    }
  })

  it('after C restarts, A and B hold its new descriptor and C knows everyone again', async () => {
    const before = await Promise.all([a, b].map(async n => seqOn(n, c.info.did)))
    assert.ok(before.every(s => typeof s === 'number'))
    const listen = c.info.addresses[0].replace(/\/p2p\/.*$/, '')
    await stopNode(c)
    // Same repo and same port: A and B redial it from their peer stores as soon as it listens.
    c = await startNode(c.repo, ['--region', 'us-east', '--listen', listen, '--bootstrap', a.info.addresses[0]])
    nodes.push(c)
    const restarted = Date.now()
    await waitFor('A and B to hold C\'s new descriptor, and C all three', async () => {
      const seqs = await Promise.all([a, b].map(async n => seqOn(n, c.info.did)))
      const known = (await api(c, '/v1/nodes')).body.stats.known
      return seqs.every((s, i) => s! > before[i]!) && known === 3
    }, 15_000, 50)
    process.stderr.write(`restart caught up in ${Date.now() - restarted} ms\n`)
    for (const n of [a, b, c]) assert.equal(await metric(n, 'mesh_descriptors_known'), 3)
  })
})
