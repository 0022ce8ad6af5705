import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { VivaldiError, createCoordinate, estimateRtt, update, vivaldiEstimator, DEFAULT_VIVALDI_CONFIG } from '../../registry/vivaldi.ts'
import type { Coordinate } from '../../registry/vivaldi.ts'
import { prng } from './prng.ts'

/** N nodes on a 200 × 200 ms plane, each behind an access link of 1–10 ms. */
function world (n: number, random: () => number): (i: number, j: number) => number {
  const xs = Array.from({ length: n }, () => [random() * 200, random() * 200])
  const access = Array.from({ length: n }, () => 1 + random() * 9)
  return (i, j) => Math.hypot(xs[i][0] - xs[j][0], xs[i][1] - xs[j][1]) + access[i] + access[j]
}

function medianRelativeError (n: number, rtt: (i: number, j: number) => number, estimate: (i: number, j: number) => number): number {
  const errors: number[] = []
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) errors.push(Math.abs(estimate(i, j) - rtt(i, j)) / rtt(i, j))
  }
  errors.sort((a, b) => a - b)
  return errors[Math.floor(errors.length / 2)]
}

describe('vivaldi', () => {
  it('a new coordinate sits at the origin with minimum height and maximum error', () => {
    const c = createCoordinate()
    assert.deepEqual(c.vec, new Array(8).fill(0))
    assert.equal(c.height, DEFAULT_VIVALDI_CONFIG.heightMinMs)
    assert.equal(c.error, DEFAULT_VIVALDI_CONFIG.errorMax)
    assert.equal(estimateRtt(c, c), 2 * DEFAULT_VIVALDI_CONFIG.heightMinMs)
  })

  it('estimateRtt is the Euclidean distance plus both heights', () => {
    const a: Coordinate = { vec: [0, 0, 0, 0, 0, 0, 0, 0], height: 2, error: 0.1, adjustment: 0 }
    const b: Coordinate = { vec: [3, 4, 0, 0, 0, 0, 0, 0], height: 1, error: 0.1, adjustment: 0 }
    assert.equal(estimateRtt(a, b), 8)
    // A positive adjustment adds; one that would make the estimate negative is ignored, as in Serf.
    assert.equal(estimateRtt({ ...a, adjustment: 1 }, b), 9)
    assert.equal(estimateRtt({ ...a, adjustment: -100 }, b), 8)
  })

  it('one step follows Serf\'s formulas: adaptive timestep, error update, height, height floor', () => {
    const at = (x: number, height: number): Coordinate => ({ vec: [x, 0, 0, 0, 0, 0, 0, 0], height, error: 1.5, adjustment: 0 })
    const noGravity = { gravityRhoMs: undefined }
    // Estimate 10 + 5 + 5 = 20 ms, measured 40: weight 0.5, force 0.25 × 0.5 × 20 = 2.5 away from the remote.
    const far = update(at(10, 5), at(0, 5), 40, noGravity)
    assert.deepEqual(far.vec, [12.5, 0, 0, 0, 0, 0, 0, 0])
    assert.equal(far.height, (5 + 5) * 2.5 / 10 + 5)
    assert.equal(far.error, 0.25 * 0.5 * 0.5 + 1.5 * (1 - 0.25 * 0.5))
    // Measured 1 ms: pulled in, and the height shrinks with it.
    const near = update(at(10, 5), at(0, 5), 1, noGravity)
    assert.ok(Math.abs(near.vec[0] - (10 - 0.125 * 19)) < 1e-12)
    assert.ok(Math.abs(near.height - (5 - 10 * 0.125 * 19 / 10)) < 1e-12)
    // Never below the minimum height.
    assert.equal(update(at(10, 0.01), at(0, 0.01), 0, noGravity).height, DEFAULT_VIVALDI_CONFIG.heightMinMs)
    // A confident node barely moves towards an unsure one's opinion.
    const confident = update({ ...at(10, 5), error: 0.01 }, at(0, 5), 40, noGravity)
    assert.ok(confident.vec[0] - 10 < 0.1, `moved ${confident.vec[0] - 10}`)
  })

  it('gravity pulls a coordinate towards the origin, harder the farther out it is', () => {
    const c = (x: number): Coordinate => ({ vec: [x, 0, 0, 0, 0, 0, 0, 0], height: 1, error: 1, adjustment: 0 })
    // rtt equal to the estimate: Vivaldi itself exerts no force, only gravity does.
    const step = (x: number, gravityRhoMs?: number): number => update(c(x), c(x + 50), 52, { gravityRhoMs }).vec[0]
    assert.equal(step(100, undefined), 100)
    const pull100 = 100 - step(100, 200)
    const pull400 = 400 - step(400, 200)
    assert.ok(pull100 > 0, `pulled in by ${pull100}`)
    assert.ok(pull400 > pull100 * 4, `quadratic pull: ${pull400} vs ${pull100}`)
  })

  it('update moves two coincident nodes apart towards the measured rtt and does not mutate its input', () => {
    const random = prng(1)
    let a = createCoordinate({ random })
    let b = createCoordinate({ random })
    const frozen = structuredClone(a)
    const first = update(a, b, 50, { random })
    assert.deepEqual(a, frozen)
    assert.ok(estimateRtt(first, b) > estimateRtt(a, b))
    for (let k = 0; k < 200; k++) {
      a = update(a, b, 50, { random })
      b = update(b, a, 50, { random })
    }
    assert.ok(Math.abs(estimateRtt(a, b) - 50) < 2, `estimate ${estimateRtt(a, b)} should be near 50`)
    assert.ok(a.error < 0.2, `error should shrink, got ${a.error}`)
  })

  for (const gravityRhoMs of [150_000, undefined]) {
    it(`converges on a plane with access delays (gravity ${gravityRhoMs === undefined ? 'off' : 'on'})`, () => {
      const random = prng(42)
      const n = 40
      const rtt = world(n, random)
      let coords = Array.from({ length: n }, () => createCoordinate({ random, gravityRhoMs }))
      const before = medianRelativeError(n, rtt, (i, j) => estimateRtt(coords[i], coords[j]))
      for (let round = 0; round < 300; round++) {
        coords = coords.map((c, i) => {
          let j = Math.floor(random() * (n - 1))
          if (j >= i) j++
          const jitter = 1 + (random() - 0.5) * 0.1
          return update(c, coords[j], rtt(i, j) * jitter, { random, gravityRhoMs })
        })
      }
      const after = medianRelativeError(n, rtt, (i, j) => estimateRtt(coords[i], coords[j]))
      assert.ok(before > 0.9, `untrained estimates should be bad, got ${before}`)
      assert.ok(after < 0.1, `median relative error ${after} should be well below 20%`)
    })
  }

  it('the estimator (latency filter + adjustment) converges too and shrugs off single spikes', () => {
    const random = prng(7)
    const n = 30
    const rtt = world(n, random)
    const nodes = Array.from({ length: n }, () => vivaldiEstimator({ random }))
    for (let round = 0; round < 300; round++) {
      for (let i = 0; i < n; i++) {
        let j = Math.floor(random() * (n - 1))
        if (j >= i) j++
        // One sample in 20 is a 10x spike (a GC pause, a retransmit): the median filter absorbs it.
        const sample = random() < 0.05 ? rtt(i, j) * 10 : rtt(i, j)
        nodes[i].observe(String(j), nodes[j].coordinate(), sample)
      }
    }
    const err = medianRelativeError(n, rtt, (i, j) => nodes[i].estimate(nodes[j].coordinate()))
    assert.ok(err < 0.2, `median relative error ${err} should be below 20%`)
  })

  describe('bad input is rejected without corrupting state', () => {
    const remote: Coordinate = { vec: [1, 2, 3, 4, 5, 6, 7, 8], height: 1, error: 0.5, adjustment: 0 }
    const badRtts = [Number.NaN, -1, Number.POSITIVE_INFINITY, 10_001, 1e12, '5' as unknown as number]
    const badRemotes: unknown[] = [
      null,
      'coordinate',
      { ...remote, vec: [1, 2] },
      { ...remote, vec: [] },
      { ...remote, vec: [1, 2, 3, 4, 5, 6, 7, Number.NaN] },
      { ...remote, vec: [1, 2, 3, 4, 5, 6, 7, 1e300] },
      { ...remote, height: -1 },
      { ...remote, error: Number.POSITIVE_INFINITY },
      { ...remote, adjustment: Number.NaN },
      { vec: remote.vec, height: 1 }
    ]

    for (const rtt of badRtts) {
      it(`update rejects rtt ${String(rtt)}`, () => {
        assert.throws(() => update(createCoordinate(), remote, rtt), (e: unknown) => e instanceof VivaldiError && e.reason === 'bad-rtt')
      })
    }
    for (const [k, bad] of badRemotes.entries()) {
      it(`update rejects malformed remote #${k}`, () => {
        assert.throws(() => update(createCoordinate(), bad as Coordinate, 10), (e: unknown) => e instanceof VivaldiError && e.reason === 'bad-coordinate')
      })
    }

    it('the estimator keeps its coordinate and filter through rejected samples', () => {
      const random = prng(3)
      const est = vivaldiEstimator({ random })
      est.observe('p', remote, 20)
      est.observe('p', remote, 22)
      const before = est.coordinate()
      for (const rtt of badRtts) assert.throws(() => est.observe('p', remote, rtt), VivaldiError)
      for (const bad of badRemotes) assert.throws(() => est.observe('p', bad as Coordinate, 21), VivaldiError)
      assert.deepEqual(est.coordinate(), before)
      // Same next step as an estimator that never saw the garbage.
      const twin = vivaldiEstimator({ random: prng(3) })
      twin.observe('p', remote, 20)
      twin.observe('p', remote, 22)
      assert.deepEqual(est.observe('p', remote, 21), twin.observe('p', remote, 21))
    })

    it('the estimator refuses a malformed starting coordinate', () => {
      assert.throws(() => vivaldiEstimator({ coordinate: { ...remote, vec: [1] } }), VivaldiError)
    })
  })
})
