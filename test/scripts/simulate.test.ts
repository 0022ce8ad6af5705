// `npm run simulate` at a small size: a child process that must exit 0, print its seed and its
// invariants, and report zero lost writes in its final JSON line.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { describe, it } from 'node:test'

const SIMULATE = new URL('../../scripts/simulate.ts', import.meta.url).pathname

describe('npm run simulate', () => {
  it('runs 12 nodes with churn and a partition, converges and loses no acknowledged write', async () => {
    // Lookups are judged loosely here (a 12-node mesh split 9 | 3 has few paths, and a handful of
    // lookups makes one failure a large percentage); the scale runs use the default tolerance.
    const argv = [SIMULATE, '--nodes', '12', '--duration', '12', '--churn', '50', '--partitions', '1',
      '--rate', '4', '--settle', '3', '--seed', '7', '--lookup-tolerance', '25', '--converge-bound', '30', '--quiet']
    const env = { ...process.env }
    delete env.NODE_TEST_CONTEXT
    // The simulator bounds itself; spawn's timeout only guards against a hung run.
    const child = spawn(process.execPath, argv, { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 150_000, killSignal: 'SIGKILL' })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => { stdout += String(d) })
    child.stderr.on('data', (d) => { stderr += String(d) })
    const code = await new Promise<number | null>(resolve => child.on('exit', c => resolve(c)))
    assert.equal(code, 0, `simulate exited ${code}\n${stdout}\n${stderr}`)
    assert.match(stdout, /seed 7/)
    assert.match(stdout, /^invariants/m)
    const last = stdout.trim().split('\n').at(-1)!
    const report = JSON.parse(last)
    assert.equal(report.seed, 7)
    assert.equal(report.ok, true)
    assert.equal(report.writes.lost, 0)
    assert.ok(report.writes.acknowledged > 0, 'the workload wrote')
    assert.ok(report.ops.lookup.ok > 0, 'the workload looked nodes up')
    assert.ok(report.convergenceMs != null, 'the documents converged')
    assert.ok(report.churn.left > 0, 'nodes left')
    assert.ok(report.load.cpuPct > 0 && report.load.lagMaxMs >= report.load.lagP50Ms, `the saturation gauge: ${JSON.stringify(report.load)}`)
  })
})
