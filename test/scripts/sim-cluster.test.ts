// The simulator's mesh: slots added at once get their own index (and so their own address and
// repo), and a node still stopping is neither offered for a restart nor startable. Both were races
// the 100-node simulation hit ("Memory address … already in use"). With two threads the nodes are
// on TCP, and a node of one thread reaches a node of the other.
import assert from 'node:assert/strict'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { SimMesh } from '../../scripts/sim/mesh.ts'
import { waitFor } from '../helpers/process.ts'

const here = { latencyMs: 1, region: 'r' }

async function mesh (threads: number): Promise<SimMesh> {
  const dir = await mkdtemp(join(tmpdir(), 'mesh-cluster-'))
  return new SimMesh({ runId: `t${process.pid}x${threads}`, dir, features: [], threads, docIds: [] })
}

describe('simulation mesh', () => {
  it('gives slots added at the same time distinct indexes, addresses and threads in turn', async () => {
    const sim = await mesh(2)
    try {
      const slots = await Promise.all(Array.from({ length: 8 }, async () => sim.addSlot(() => here)))
      assert.deepEqual(slots.map(s => s.index).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7])
      assert.equal(new Set(slots.map(s => s.address)).size, 8)
      for (const s of slots) assert.equal(s.thread, s.index % 2)
    } finally {
      await sim.stopAll()
    }
  })

  it('does not offer a stopping node for a restart, and refuses to start it until it has stopped', async () => {
    const sim = await mesh(1)
    try {
      const slot = await sim.addSlot(() => ({ latencyMs: 0, region: 'r' }))
      await sim.start(slot, [])
      const stopping = sim.stop(slot)
      assert.equal(slot.stopping, true)
      assert.ok(!sim.down().includes(slot), 'a stopping slot is not down yet')
      await assert.rejects(sim.start(slot, []), /already running/)
      await stopping
      assert.ok(sim.down().includes(slot), 'a stopped slot is down')
      await sim.start(slot, [])
      assert.ok(sim.live().includes(slot), 'it restarts on its own address once stopped')
    } finally {
      await sim.stopAll()
    }
  })

  it('connects nodes of different threads over TCP, and cuts them apart while split', async () => {
    const sim = await mesh(2)
    try {
      const [a, b] = [await sim.addSlot(() => here), await sim.addSlot(() => here)]
      assert.notEqual(a.thread, b.thread)
      assert.match(a.address, /^\/ip4\/127\.0\.0\.1\/tcp\/\d+$/)
      await sim.start(a, [])
      await sim.start(b, [a.address])
      await waitFor('b connected to a', async () => (await sim.connections()).get(b.index) === 1, 10_000)
      await sim.partition(s => s.index)
      await waitFor('the link cut by the split', async () => (await sim.connections()).get(b.index) === 0, 10_000)
      assert.equal((await sim.lookup(b, a, 2_000)).ok, false, 'no lookup across the split')
      await sim.heal()
      await waitFor('the link back after the heal', async () => (await sim.connections()).get(b.index) === 1, 15_000)
      assert.equal((await sim.lookup(b, a, 5_000)).ok, true)
    } finally {
      await sim.stopAll()
    }
  })
})
