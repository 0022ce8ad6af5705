// The simulator's cluster: slots added at once get their own index (and so their own memory
// address and repo), and a node still stopping is neither offered for a restart nor startable.
// Both were races the 100-node simulation hit ("Memory address … already in use").
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { Cluster } from '../../scripts/sim/cluster.ts'

describe('simulation cluster', () => {
  const dirs: string[] = []
  after(async () => { await Promise.all(dirs.map(async d => rm(d, { recursive: true, force: true }))) })

  it('gives slots added at the same time distinct indexes, addresses and repos', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mesh-cluster-'))
    dirs.push(dir)
    const cluster = new Cluster({ runId: 'race', dir, features: [], regions: ['r'] })
    const slots = await Promise.all(Array.from({ length: 8 }, async () => cluster.addSlot(1, 'r')))
    assert.deepEqual(slots.map(s => s.index).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7])
    assert.equal(new Set(slots.map(s => s.address)).size, 8)
    assert.equal(new Set(slots.map(s => s.repoPath)).size, 8)
  })

  it('does not offer a stopping node for a restart, and refuses to start it until it has stopped', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mesh-cluster-'))
    dirs.push(dir)
    const cluster = new Cluster({ runId: `stop${process.pid}`, dir, features: [], regions: ['r'] })
    const slot = await cluster.addSlot(0, 'r')
    await cluster.start(slot, [])
    try {
      const stopping = cluster.stop(slot)
      assert.equal(slot.stopping, true)
      assert.ok(!cluster.down().includes(slot), 'a stopping slot is not down yet')
      await assert.rejects(cluster.start(slot, []), /already running/)
      await stopping
      assert.ok(cluster.down().includes(slot), 'a stopped slot is down')
      await cluster.start(slot, [])
      assert.ok(slot.node != null, 'it restarts on its own address once stopped')
    } finally {
      await cluster.stopAll()
    }
  })
})
