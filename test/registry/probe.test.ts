// The probe protocol (protocols/probe.ts) between two in-process nodes on @libp2p/memory.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { lpStream } from '@libp2p/utils'
import { memoryPair } from './memory-pair.ts'
import { probeProtocol, probeService } from '../../protocols/probe.ts'
import { createCoordinate } from '../../registry/vivaldi.ts'
import type { MeshNode } from '../../node/mesh-node.ts'
import type { Probe, ProbeSample } from '../../protocols/probe.ts'

/** The memory transport delays each direction of a connection by the listener's latency. */
const LATENCY_MS = 5

function coordinate (x: number): ReturnType<typeof createCoordinate> {
  return { ...createCoordinate(), vec: [x, 0, 0, 0, 0, 0, 0, 0], error: 0.5 }
}

async function until (what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

describe('probe protocol', () => {
  let a: MeshNode
  let b: MeshNode
  let probeA: Probe
  let probeB: Probe
  const samplesAtB: ProbeSample[] = []
  const droppedAtB: string[] = []

  before(async () => {
    ({ a, b } = await memoryPair(LATENCY_MS))
    probeA = probeService({ libp2p: a.libp2p }, { network: a.network, coordinate: () => coordinate(1) })
    probeB = probeService({ libp2p: b.libp2p }, {
      network: b.network,
      coordinate: () => coordinate(2),
      onSample: s => samplesAtB.push(s),
      onDropped: reason => droppedAtB.push(reason)
    })
    await probeA.start()
    await probeB.start()
    await until('A to connect to B', () => a.libp2p.getConnections(b.peerId).length > 0)
  })
  after(async () => {
    await probeA.stop()
    await probeB.stop()
    await a.stop()
    await b.stop()
  })

  it('returns the answerer\'s coordinate and a round trip covering the injected delay; the answerer gets a sample too', async () => {
    const s = await probeA.probe(b.peerId)
    assert.equal(s.peer.toString(), b.peerId.toString())
    assert.deepEqual(s.coordinate, coordinate(2))
    assert.ok(s.rttMs >= 2 * LATENCY_MS * 0.9, `rtt ${s.rttMs} ms covers ${2 * LATENCY_MS} ms of injected delay`)
    await until('B to time the same probe', () => samplesAtB.length === 1)
    assert.equal(samplesAtB[0].peer.toString(), a.peerId.toString())
    assert.deepEqual(samplesAtB[0].coordinate, coordinate(1))
    assert.ok(samplesAtB[0].rttMs >= 2 * LATENCY_MS * 0.9)
  })

  it('reuses one stream for probe after probe, and opens a new one when it breaks', async () => {
    const streams = (): number => a.libp2p.getConnections(b.peerId)
      .flatMap(c => c.streams).filter(s => s.protocol === probeProtocol(a.network) && s.status === 'open').length
    for (let i = 0; i < 3; i++) await probeA.probe(b.peerId)
    assert.equal(streams(), 1)
    for (const c of a.libp2p.getConnections(b.peerId)) for (const s of c.streams) if (s.protocol === probeProtocol(a.network)) s.abort(new Error('test'))
    const s = await probeA.probe(b.peerId)
    assert.deepEqual(s.coordinate, coordinate(2))
    assert.equal(streams(), 1)
  })

  it('drops a malformed or oversized probe and hangs up', async () => {
    for (const [bytes, reason] of [[new TextEncoder().encode('not json'), 'probe-malformed'], [new Uint8Array(4096), 'probe-too-large']] as const) {
      const stream = await a.libp2p.dialProtocol(b.peerId, probeProtocol(a.network))
      await lpStream(stream).write(bytes).catch(() => {})
      await until(`B to drop ${reason}`, () => droppedAtB.includes(reason))
      stream.abort(new Error('done'))
    }
  })
})
