import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  ConstraintError, constraintsFromOptions, formatConstraint, matches, parseConstraint, parseConstraints
} from '../../registry/constraints.ts'
import type { ConstraintErrorReason, MatchContext } from '../../registry/constraints.ts'
import { node } from './fixtures.ts'

function throwsReason (fn: () => unknown, reason: ConstraintErrorReason, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConstraintError, `expected ConstraintError, got ${String(e)}`)
    assert.equal(e.reason, reason, e.message)
    if (message !== undefined) assert.match(e.message, message)
    return true
  })
}

describe('constraints', () => {
  describe('parsing text', () => {
    const cases: Array<[string, unknown]> = [
      ['latency <= 10', { field: 'latency', op: '<=', value: 10 }],
      ['latency<10ms', { field: 'latency', op: '<', value: 10 }],
      ['rtt <= 0.5 s', { field: 'latency', op: '<=', value: 500 }],
      ['region = eu-west', { field: 'region', op: '=', value: 'eu-west' }],
      ['Region == "EU-West"', { field: 'region', op: '=', value: 'eu-west' }],
      ['region in {eu-west, eu-central}', { field: 'region', op: 'in', value: ['eu-central', 'eu-west'] }],
      ['region in{eu-west,eu-west}', { field: 'region', op: 'in', value: ['eu-west'] }],
      ['region != us-east', { field: 'region', op: '!=', value: 'us-east' }],
      ['cpus >= 4', { field: 'cpus', op: '>=', value: 4 }],
      ['cores > 2', { field: 'cpus', op: '>', value: 2 }],
      ['memory >= 2048', { field: 'memory', op: '>=', value: 2048 }],
      ['memory >= 2GB', { field: 'memory', op: '>=', value: 2048 }],
      ['free-memory >= 512 MiB', { field: 'free-memory', op: '>=', value: 512 }],
      ['accelerator = gpu', { field: 'accelerator', op: '=', value: 'gpu' }],
      ['accelerator in {tpu, npu}', { field: 'accelerator', op: 'in', value: ['npu', 'tpu'] }],
      ['trust >= member', { field: 'trust', op: '>=', value: 'member' }],
      ['runtime = wasi-preview1', { field: 'runtime', op: '=', value: 'wasi-preview1' }],
      ['zone = eu-west-1a', { field: 'zone', op: '=', value: 'eu-west-1a' }]
    ]
    for (const [text, expected] of cases) {
      it(`"${text}"`, () => assert.deepEqual(parseConstraint(text), expected))
    }

    it('splits a list at top-level commas and semicolons, not inside sets', () => {
      assert.deepEqual(parseConstraints('latency <= 10, region in {eu-west, eu-central}; cpus >= 4').map(formatConstraint), [
        'latency <= 10 ms', 'region in {eu-central, eu-west}', 'cpus >= 4'
      ])
      assert.deepEqual(parseConstraints(['latency <= 10', 'region = eu-west']).map(c => c.field), ['latency', 'region'])
      assert.deepEqual(parseConstraints(''), [])
    })
  })

  describe('parsing JSON', () => {
    it('accepts {field, op, value} objects and strings, normalized like text', () => {
      const json = JSON.parse('[{"field":"latency","op":"<=","value":10},{"field":"region","op":"in","value":["EU-west","eu-central"]},"trust >= admin",{"field":"memory","op":">=","value":"4 GB"}]')
      assert.deepEqual(parseConstraints(json), [
        { field: 'latency', op: '<=', value: 10 },
        { field: 'region', op: 'in', value: ['eu-central', 'eu-west'] },
        { field: 'trust', op: '>=', value: 'admin' },
        { field: 'memory', op: '>=', value: 4096 }
      ])
    })

    it('rejects malformed JSON constraints', () => {
      throwsReason(() => parseConstraints({ field: 'latency' }), 'syntax')
      throwsReason(() => parseConstraints([42]), 'syntax')
      throwsReason(() => parseConstraints([{ field: 'latency', op: '<=', value: 10, weight: 2 }]), 'syntax', /weight/)
      throwsReason(() => parseConstraints([{ field: 'colour', op: '=', value: 'red' }]), 'unknown-field')
      throwsReason(() => parseConstraints([{ field: 'cpus', op: '~', value: 2 }]), 'unknown-operator')
      throwsReason(() => parseConstraints([{ field: 'cpus', op: '>=', value: '4 cores' }]), 'bad-value')
      throwsReason(() => parseConstraints([{ field: 'region', op: 'in', value: 'eu-west' }]), 'syntax')
      throwsReason(() => parseConstraints([{ field: 'region', op: 'in', value: [1, 2] }]), 'bad-value')
      throwsReason(() => parseConstraints(Array.from({ length: 65 }, () => 'cpus >= 1')), 'syntax')
    })
  })

  describe('errors name what is wrong', () => {
    it('unknown fields', () => {
      throwsReason(() => parseConstraint('colour = red'), 'unknown-field', /colour.*known: latency/)
      throwsReason(() => parseConstraint('bandwidth'), 'unknown-field')
    })
    it('unknown or inapplicable operators', () => {
      throwsReason(() => parseConstraint('latency >= 10'), 'unknown-operator', /latency takes <=, </)
      throwsReason(() => parseConstraint('latency in {1, 2}'), 'unknown-operator')
      throwsReason(() => parseConstraint('region < eu-west'), 'unknown-operator')
      throwsReason(() => parseConstraint('trust in {member}'), 'unknown-operator')
    })
    it('bad values', () => {
      throwsReason(() => parseConstraint('latency <= fast'), 'bad-value')
      throwsReason(() => parseConstraint('latency <= 10 parsecs'), 'bad-value', /units ms, s/)
      throwsReason(() => parseConstraint('cpus >= 4 GB'), 'bad-value', /no unit/)
      throwsReason(() => parseConstraint('accelerator = quantum'), 'bad-value', /gpu, tpu, npu, fpga/)
      throwsReason(() => parseConstraint('trust >= god'), 'bad-value', /unverified, member, admin, root/)
      throwsReason(() => parseConstraint('region = eu west'), 'bad-value')
      throwsReason(() => parseConstraint('region in {}'), 'bad-value', /empty set/)
    })
    it('syntax', () => {
      throwsReason(() => parseConstraint('<= 10'), 'syntax')
      throwsReason(() => parseConstraint('latency <='), 'syntax')
      throwsReason(() => parseConstraint('region in eu-west'), 'syntax', /\{a, b\}/)
      throwsReason(() => parseConstraint('x'.repeat(2000)), 'syntax')
      throwsReason(() => parseConstraints(7), 'syntax')
    })
  })

  it('constraintsFromOptions mirrors the CLI flags', () => {
    assert.deepEqual(constraintsFromOptions({ region: ['eu-west', 'eu-central'], maxLatencyMs: 10, minCpus: 4, minMemoryMb: 2048, accelerator: 'gpu', minTrust: 'member' }).map(formatConstraint), [
      'region in {eu-central, eu-west}', 'latency <= 10 ms', 'cpus >= 4', 'memory >= 2048 MB', 'accelerator = gpu', 'trust >= member'
    ])
    assert.deepEqual(constraintsFromOptions({ region: 'eu-west' }), [{ field: 'region', op: '=', value: 'eu-west' }])
    throwsReason(() => constraintsFromOptions({ maxLatencyMs: -1 }), 'bad-value')
    throwsReason(() => constraintsFromOptions({ accelerator: 'abacus' }), 'bad-value')
  })

  describe('matches', () => {
    const rtts = new Map<string, number>()
    const ctx: MatchContext = { rttMs: did => rtts.get(did) }
    const gpuNode = node({ region: 'eu-west', cores: 8, totalMb: 16384, gpus: 1, trust: 'admin' })
    const small = node({ region: 'us-east', cores: 2, totalMb: 1024, trust: 'unverified', runtimes: [] })
    rtts.set(gpuNode.id, 5)
    rtts.set(small.id, 80)

    it('passes a node that meets everything', () => {
      assert.deepEqual(matches(gpuNode, parseConstraints('latency <= 10, region in {eu-west, eu-central}, cpus >= 4, memory >= 2048, accelerator = gpu, trust >= member, runtime = wasi-preview1'), ctx), { ok: true })
    })

    it('lists every constraint a node fails, and only those', () => {
      const cs = parseConstraints('latency <= 10, region = eu-west, cpus >= 2, memory >= 2048, accelerator = gpu, trust >= member, runtime = wasi-preview1, region != us-east')
      const r = matches(small, cs, ctx)
      assert.equal(r.ok, false)
      assert.deepEqual(!r.ok && r.failed.map(formatConstraint), [
        'latency <= 10 ms', 'region = eu-west', 'memory >= 2048 MB', 'accelerator = gpu', 'trust >= member', 'runtime = wasi-preview1', 'region != us-east'
      ])
    })

    it('an unknown or nonsensical latency never satisfies a latency bound', () => {
      const stranger = node()
      assert.equal(matches(stranger, [parseConstraint('latency <= 1000')], ctx).ok, false)
      assert.equal(matches(stranger, [parseConstraint('latency <= 1000')], { rttMs: () => Number.NaN }).ok, false)
      assert.equal(matches(stranger, [parseConstraint('latency <= 1000')], { rttMs: () => -1 }).ok, false)
    })

    it('accelerator != and in, trust ordering, free memory', () => {
      assert.equal(matches(gpuNode, [parseConstraint('accelerator != gpu')], ctx).ok, false)
      assert.equal(matches(small, [parseConstraint('accelerator != gpu')], ctx).ok, true)
      assert.equal(matches(gpuNode, [parseConstraint('accelerator in {tpu, gpu}')], ctx).ok, true)
      assert.equal(matches(gpuNode, [parseConstraint('trust > admin')], ctx).ok, false)
      assert.equal(matches(gpuNode, [parseConstraint('trust <= admin')], ctx).ok, true)
      assert.equal(matches(gpuNode, [parseConstraint('free-memory >= 4096')], ctx).ok, true)
      assert.equal(matches(gpuNode, [parseConstraint('free-memory > 4096')], ctx).ok, false)
    })

    it('the verified trust hook overrides the descriptor\'s self-claimed level', () => {
      const claimsRoot = node({ trust: 'root' })
      const c = [parseConstraint('trust >= member')]
      assert.equal(matches(claimsRoot, c, ctx).ok, true)
      assert.equal(matches(claimsRoot, c, { ...ctx, trust: () => 'unverified' }).ok, false)
    })
  })
})
