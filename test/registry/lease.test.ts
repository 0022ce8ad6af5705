// The lease protocol (protocols/lease.ts) between two in-process nodes on @libp2p/memory.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { lpStream } from '@libp2p/utils'
import { memoryPair } from './memory-pair.ts'
import { leaseProtocol, leaseService } from '../../protocols/lease.ts'
import { createLeaseBook, LeaseError } from '../../registry/allocation.ts'
import type { MeshNode } from '../../node/mesh-node.ts'
import type { LeaseService } from '../../protocols/lease.ts'
import type { LeaseBook } from '../../registry/allocation.ts'

const SLOTS = 10

describe('lease protocol', () => {
  let a: MeshNode
  let b: MeshNode
  let leasesA: LeaseService
  let leasesB: LeaseService
  let bookB: LeaseBook
  const droppedAtB: string[] = []

  const leaseStreams = (): number => a.libp2p.getConnections(b.peerId)
    .flatMap(c => c.streams).filter(s => s.protocol === leaseProtocol(a.network) && s.status === 'open').length

  before(async () => {
    ({ a, b } = await memoryPair(2))
    bookB = createLeaseBook({ capacity: () => SLOTS })
    leasesA = leaseService({ libp2p: a.libp2p }, { network: a.network, did: a.did, book: createLeaseBook() })
    leasesB = leaseService({ libp2p: b.libp2p }, { network: b.network, did: b.did, book: bookB, onDropped: reason => droppedAtB.push(reason) })
    await leasesA.start()
    await leasesB.start()
  })
  after(async () => {
    await leasesA.stop()
    await leasesB.stop()
    await a.stop()
    await b.stop()
  })

  it('reserves, renews and releases over one stream, request after request', async () => {
    const { lease } = await leasesA.request(b.peerId, { op: 'reserve', slots: 2, ttlMs: 60_000 })
    assert.equal(lease.did, b.did)
    assert.equal(bookB.reservedFor(b.did), 2)
    const renewed = await leasesA.request(b.peerId, { op: 'renew', id: lease.id, ttlMs: 120_000 })
    assert.ok(renewed.lease.expiresAt > lease.expiresAt)
    assert.equal((await leasesA.request(b.peerId, { op: 'release', id: lease.id })).released, true)
    assert.equal((await leasesA.request(b.peerId, { op: 'release', id: lease.id })).released, false)
    assert.equal(bookB.reservedFor(b.did), 0)
    assert.equal(leaseStreams(), 1)
  })

  it('answers concurrent requests on one shared stream in order, and never grants past capacity', async () => {
    // No stream yet: the concurrent requests must open one between them, not one each.
    for (const c of a.libp2p.getConnections(b.peerId)) for (const s of c.streams) if (s.protocol === leaseProtocol(a.network)) s.abort(new Error('test'))
    assert.equal(leaseStreams(), 0)
    const outcomes = await Promise.allSettled(Array.from({ length: SLOTS + 5 }, async () =>
      leasesA.request(b.peerId, { op: 'reserve', slots: 1, ttlMs: 60_000 })))
    const granted = outcomes.filter(o => o.status === 'fulfilled')
    const refused = outcomes.filter(o => o.status === 'rejected')
    assert.equal(granted.length, SLOTS)
    assert.equal(refused.length, 5)
    for (const r of refused) assert.ok(r.reason instanceof LeaseError && r.reason.reason === 'oversubscribed', String(r.reason))
    // Each answer went to its own request: every granted lease is distinct and live in B's book.
    const ids = new Set(granted.map(g => g.value.lease.id))
    assert.equal(ids.size, SLOTS)
    for (const id of ids) assert.equal((await leasesA.request(b.peerId, { op: 'release', id })).released, true)
    assert.equal(leaseStreams(), 1)
  })

  it('opens a fresh stream when the one it kept was broken', async () => {
    await leasesA.prepare(b.peerId)
    for (const c of a.libp2p.getConnections(b.peerId)) for (const s of c.streams) if (s.protocol === leaseProtocol(a.network)) s.abort(new Error('test'))
    const { lease } = await leasesA.request(b.peerId, { op: 'reserve', slots: 1, ttlMs: 60_000 })
    assert.equal((await leasesA.request(b.peerId, { op: 'release', id: lease.id })).released, true)
  })

  it('answers a dialer that sends one request and hangs up, as before', async () => {
    const stream = await a.libp2p.dialProtocol(b.peerId, leaseProtocol(a.network))
    const lp = lpStream(stream)
    await lp.write(new TextEncoder().encode(JSON.stringify({ op: 'reserve', slots: 1, ttlMs: 60_000 })))
    const answer = JSON.parse(new TextDecoder().decode((await lp.read()).subarray()))
    await stream.close()
    assert.equal(answer.ok, true)
    assert.equal(bookB.release(answer.lease.id), true)
  })

  it('answers garbage with bad-request and keeps serving; drops an oversized request and its stream', async () => {
    const stream = await a.libp2p.dialProtocol(b.peerId, leaseProtocol(a.network))
    const lp = lpStream(stream)
    await lp.write(new TextEncoder().encode('{not json'))
    const bad = JSON.parse(new TextDecoder().decode((await lp.read()).subarray()))
    assert.equal(bad.ok, false)
    assert.equal(bad.reason, 'bad-request')
    await lp.write(new TextEncoder().encode(JSON.stringify({ op: 'reserve', slots: 1, ttlMs: 60_000 })))
    const good = JSON.parse(new TextDecoder().decode((await lp.read()).subarray()))
    assert.equal(good.ok, true)
    bookB.release(good.lease.id)
    await lp.write(new Uint8Array(64 * 1024))
    await assert.rejects(lp.read({ signal: AbortSignal.timeout(5_000) }))
    assert.deepEqual(droppedAtB, ['malformed', 'too-large'])
    // B is unharmed: the kept stream still serves.
    const { lease } = await leasesA.request(b.peerId, { op: 'reserve', slots: 1, ttlMs: 60_000 })
    assert.equal(bookB.reservedFor(b.did), 1)
    await leasesA.request(b.peerId, { op: 'release', id: lease.id })
  })
})
