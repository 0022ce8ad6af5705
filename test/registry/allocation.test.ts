import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { LeaseError, choose, createLeaseBook, leaseOrder, worthADial } from '../../registry/allocation.ts'
import type { Allocation, LeaseErrorReason } from '../../registry/allocation.ts'
import { ConstraintError, matches, parseConstraint, parseConstraints } from '../../registry/constraints.ts'
import type { Constraint } from '../../registry/constraints.ts'
import type { EdgeNodeDescriptor } from '../../registry/descriptor.ts'
import { node } from './fixtures.ts'
import { intBetween, pick, prng } from './prng.ts'

function table (entries: Array<[EdgeNodeDescriptor, number]>): (did: string) => number | undefined {
  const m = new Map(entries.map(([d, v]) => [d.id, v]))
  return did => m.get(did)
}

function chosenDids (a: Allocation): string[] {
  assert.equal(a.ok, true, a.ok ? '' : a.explanation)
  return a.ok ? a.chosen.map(c => c.did) : []
}

describe('allocation', () => {
  describe('choose', () => {
    it('ranks by measured RTT, falling back to the Vivaldi estimate, unknown last', () => {
      const measuredFar = node()
      const estimatedNear = node()
      const unknown = node()
      const measuredNear = node()
      const all = [unknown, measuredFar, estimatedNear, measuredNear]
      const a = choose(all, [], {
        count: 4,
        rtt: table([[measuredFar, 20], [measuredNear, 3]]),
        // measuredFar's estimate says 1 ms, but a measurement beats an estimate.
        estimate: table([[measuredFar, 1], [estimatedNear, 10], [measuredNear, 50]])
      })
      assert.deepEqual(chosenDids(a), [measuredNear.id, estimatedNear.id, measuredFar.id, unknown.id])
      assert.ok(a.ok)
      assert.deepEqual(a.chosen.map(c => c.latencySource), ['measured', 'estimated', 'measured', 'unknown'])
      assert.deepEqual(a.chosen.map(c => c.latencyMs), [3, 10, 20, undefined])
    })

    it('breaks latency ties by most free capacity, counting reservations', () => {
      const busy = node({ slots: 8, freeSlots: 8 })
      const roomy = node({ slots: 8, freeSlots: 6 })
      const rtt = table([[busy, 5], [roomy, 5]])
      assert.deepEqual(chosenDids(choose([busy, roomy], [], { count: 2, rtt })), [busy.id, roomy.id])
      const reserved = table([[busy, 5]]) as (did: string) => number
      const a = choose([busy, roomy], [], { count: 2, rtt, reserved: did => reserved(did) ?? 0 })
      assert.deepEqual(chosenDids(a), [roomy.id, busy.id])
      assert.ok(a.ok)
      assert.deepEqual(a.chosen.map(c => c.freeSlots), [6, 3])
    })

    it('never picks a node without the free slots asked for', () => {
      const full = node({ slots: 4, freeSlots: 0 })
      const reservedAway = node({ slots: 4, freeSlots: 2 })
      const ok = node({ slots: 4, freeSlots: 2 })
      const rtt = table([[full, 1], [reservedAway, 1], [ok, 9]])
      const a = choose([full, reservedAway, ok], [], { rtt, reserved: did => did === reservedAway.id ? 1 : 0, slots: 2 })
      assert.deepEqual(chosenDids(a), [ok.id])
    })

    it('says how many nodes each constraint excluded when nothing fits', () => {
      const west = [node({ region: 'eu-west' }), node({ region: 'eu-west' }), node({ region: 'eu-west' })]
      const elsewhere = Array.from({ length: 7 }, (_, i) => node({ region: i % 2 === 0 ? 'us-east' : 'ap-south' }))
      const rtt = table([[west[0], 4], [west[1], 30], [west[2], 50], ...elsewhere.map(d => [d, 1] as [EdgeNodeDescriptor, number])])
      const a = choose([...elsewhere, ...west], parseConstraints('region in {eu-west}, latency <= 10'), { count: 2, rtt })
      assert.equal(a.ok, false)
      assert.ok(!a.ok)
      assert.equal(a.explanation,
        'region in {eu-west}: excluded 7 of 10; latency <= 10 ms: excluded 2 of the remaining 3; free slots >= 1: excluded 0 of the remaining 1; needed 2, found 1')
      assert.deepEqual(a.exclusions.map(e => [e.excluded, e.of]), [[7, 10], [2, 3], [0, 1]])
      assert.deepEqual(a.candidates.map(c => c.did), [west[0].id])
      assert.equal(a.found, 1)
      assert.equal(a.needed, 2)
    })

    it('an empty registry is a clear no-match', () => {
      const a = choose([], parseConstraints('cpus >= 4'))
      assert.ok(!a.ok)
      assert.equal(a.explanation, 'no nodes known; needed 1, found 0')
    })

    it('uses only the newest descriptor of each node, and drops expired ones when given a clock', () => {
      const moved = node({ region: 'eu-west', seq: 1 })
      const movedNow = { ...moved, region: 'us-east', seq: 2 }
      const stale = node({ expires: '2026-03-01T12:00:01.000Z' })
      const a = choose([movedNow, moved], [parseConstraint('region = eu-west')])
      assert.ok(!a.ok, 'a node that moved out of eu-west must not be placed there on an old descriptor')
      assert.equal(chosenDids(choose([moved, movedNow], [parseConstraint('region = us-east')]))[0], moved.id)
      const b = choose([stale], [], { now: Date.parse('2026-03-01T12:00:02.000Z') })
      assert.ok(!b.ok)
      assert.match(b.explanation, /^not expired: excluded 1 of 1;/)
      assert.equal(chosenDids(choose([stale], [], { now: Date.parse('2026-03-01T12:00:00.500Z') }))[0], stale.id)
    })

    it('ignores nonsense latencies and reservations from its callbacks', () => {
      const a = node()
      const b = node()
      const r = choose([a, b], [parseConstraint('latency <= 100')], {
        count: 1,
        rtt: did => did === a.id ? Number.NaN : -5,
        estimate: did => did === a.id ? 7 : Number.POSITIVE_INFINITY
      })
      assert.deepEqual(chosenDids(r), [a.id])
      const c = choose([a], [], { reserved: () => Number.NaN })
      assert.equal(c.ok, false, 'an unknowable reservation must not look like free capacity')
      const boom = (): never => { throw new Error('boom') }
      const d = choose([a, b], [], { count: 2, rtt: boom, estimate: did => did === b.id ? 3 : boom() })
      assert.ok(d.ok)
      assert.deepEqual(d.chosen.map(x => [x.did, x.latencySource]), [[b.id, 'estimated'], [a.id, 'unknown']])
      assert.equal(choose([a], [], { reserved: boom }).ok, false)
      // A callback that answers differently each time is asked once per node, and does not crash choose.
      let calls = 0
      const flaky = choose([a], [parseConstraint('latency <= 10')], { rtt: () => (calls++ % 2 === 0 ? 5 : 500) })
      assert.ok(flaky.ok)
      assert.equal(flaky.chosen[0].latencyMs, 5)
      assert.equal(calls, 1)
    })

    it('rejects a bad count or slot request', () => {
      for (const count of [0, -1, 1.5, Number.NaN, 1e9]) {
        assert.throws(() => choose([node()], [], { count }), ConstraintError)
      }
      assert.throws(() => choose([node()], [], { slots: 0 }), ConstraintError)
    })

    it('data sovereignty: region in {…} is never answered outside the set, whatever else is asked (randomized)', () => {
      const random = prng(2026)
      const regions = ['eu-west', 'eu-central', 'eu-north', 'us-east', 'us-west', 'ap-south']
      const extras = ['latency <= 20', 'latency < 5', 'cpus >= 4', 'memory >= 4096', 'accelerator = gpu', 'trust >= member',
        'region != eu-west', 'zone in {eu-west-1a, us-east-1a}', 'runtime = wasi-preview1', 'accelerator != gpu']
      const weird = [undefined, Number.NaN, -1, 0, 1e12, Number.POSITIVE_INFINITY]
      let okRuns = 0
      let noMatchRuns = 0
      for (let run = 0; run < 400; run++) {
        const pool: EdgeNodeDescriptor[] = []
        for (let i = intBetween(random, 0, 25); i > 0; i--) {
          const slots = intBetween(random, 0, 8)
          const d = node({
            region: pick(random, regions),
            cores: intBetween(random, 1, 16),
            totalMb: pick(random, [1024, 4096, 16384]),
            gpus: intBetween(random, 0, 2),
            trust: pick(random, ['unverified', 'member', 'admin', 'root'] as const),
            runtimes: random() < 0.8 ? ['wasi-preview1'] : [],
            slots,
            freeSlots: intBetween(random, 0, slots),
            seq: intBetween(random, 1, 3)
          })
          pool.push(d)
          // Sometimes the same node again, moved to another region under another seq.
          if (random() < 0.2) pool.push({ ...d, region: pick(random, regions), seq: intBetween(random, 1, 5) })
        }
        const allowed = regions.filter(() => random() < 0.4)
        if (allowed.length === 0) allowed.push(pick(random, regions))
        const sovereignty = parseConstraint(`region in {${allowed.join(', ')}}`)
        const others = extras.filter(() => random() < 0.3).map(parseConstraint)
        const constraints: Constraint[] = [...others]
        constraints.splice(intBetween(random, 0, others.length), 0, sovereignty)
        const rtts = new Map(pool.map(d => [d.id, random() < 0.7 ? random() * 60 : pick(random, weird)]))
        const estimates = new Map(pool.map(d => [d.id, random() < 0.7 ? random() * 60 : pick(random, weird)]))
        const count = intBetween(random, 1, 4)
        const a = choose(pool, constraints, {
          count,
          rtt: did => rtts.get(did),
          estimate: did => estimates.get(did),
          reserved: () => intBetween(random, -1, 2)
        })

        const newest = new Map<string, EdgeNodeDescriptor>()
        for (const d of pool) if ((newest.get(d.id)?.seq ?? -1) < d.seq) newest.set(d.id, d)
        const answered = a.ok ? a.chosen : a.candidates
        for (const c of answered) {
          assert.ok(allowed.includes(c.descriptor.region), `run ${run}: ${c.descriptor.region} is outside {${allowed.join(', ')}}`)
          assert.ok(allowed.includes(newest.get(c.did)?.region ?? ''), `run ${run}: chose a node on a stale descriptor`)
          assert.ok(matches(c.descriptor, constraints, { rttMs: () => c.latencyMs }).ok)
        }
        assert.equal(new Set(answered.map(c => c.did)).size, answered.length, 'distinct nodes')
        const lat = answered.map(c => c.latencyMs ?? Infinity)
        assert.deepEqual(lat, [...lat].sort((x, y) => x - y), 'lowest latency first')
        if (a.ok) {
          okRuns++
          assert.equal(a.chosen.length, count)
        } else {
          noMatchRuns++
          assert.ok(a.found < count)
          assert.ok(a.exclusions.every(e => e.excluded >= 0 && e.excluded <= e.of))
        }
      }
      // The generator must exercise both outcomes, or the property proves little.
      assert.ok(okRuns > 40, `only ${okRuns} runs found nodes`)
      assert.ok(noMatchRuns > 40, `only ${noMatchRuns} runs found none`)
    })
  })

  describe('lease book', () => {
    function clock (start = 1_000_000): { now: () => number, advance: (ms: number) => void } {
      let t = start
      return { now: () => t, advance: ms => { t += ms } }
    }
    function throwsReason (fn: () => unknown, reason: LeaseErrorReason): void {
      assert.throws(fn, (e: unknown) => e instanceof LeaseError && e.reason === reason)
    }

    it('reserves, sums per node and releases', () => {
      const c = clock()
      const book = createLeaseBook({ now: c.now })
      const a = book.reserve('did:key:za', 2, 1000)
      const b = book.reserve('did:key:za', 1, 1000)
      book.reserve('did:key:zb', 3, 1000)
      assert.equal(a.did, 'did:key:za')
      assert.equal(a.slots, 2)
      assert.equal(a.expiresAt, 1_001_000)
      assert.notEqual(a.id, b.id)
      assert.equal(book.reservedFor('did:key:za'), 3)
      assert.equal(book.reservedFor('did:key:zb'), 3)
      assert.equal(book.reservedFor('did:key:zc'), 0)
      assert.equal(book.release(a.id), true)
      assert.equal(book.release(a.id), false)
      assert.equal(book.reservedFor('did:key:za'), 1)
      assert.deepEqual(book.leases('did:key:za').map(l => l.id), [b.id])
      assert.equal(book.leases().length, 2)
    })

    it('expires leases on the clock, and renew keeps one alive', () => {
      const c = clock()
      const book = createLeaseBook({ now: c.now })
      const kept = book.reserve('did:key:za', 1, 1000)
      const dropped = book.reserve('did:key:za', 2, 1000)
      c.advance(900)
      const renewed = book.renew(kept.id, 1000)
      assert.equal(renewed.expiresAt, 1_001_900)
      c.advance(100)
      assert.equal(book.reservedFor('did:key:za'), 1, 'the unrenewed lease expired exactly at its expiry')
      throwsReason(() => book.renew(dropped.id, 1000), 'unknown-lease')
      assert.equal(book.release(dropped.id), false)
      c.advance(900)
      assert.equal(book.prune(), 1)
      assert.equal(book.reservedFor('did:key:za'), 0)
      throwsReason(() => book.renew('no-such-lease', 1000), 'unknown-lease')
    })

    it('refuses oversubscription against the node\'s capacity, and frees up on release or expiry', () => {
      const c = clock()
      const book = createLeaseBook({ now: c.now, capacity: did => did === 'did:key:zme' ? 4 : undefined })
      const a = book.reserve('did:key:zme', 3, 1000)
      throwsReason(() => book.reserve('did:key:zme', 2, 1000), 'oversubscribed')
      assert.equal(book.reservedFor('did:key:zme'), 3, 'a refused request reserves nothing')
      book.reserve('did:key:zme', 1, 5000)
      throwsReason(() => book.reserve('did:key:zme', 1, 1000), 'oversubscribed')
      book.release(a.id)
      book.reserve('did:key:zme', 2, 1000)
      c.advance(1000)
      assert.equal(book.reservedFor('did:key:zme'), 1)
      book.reserve('did:key:zme', 3, 1000)
      // Unknown capacity: no limit from the book.
      book.reserve('did:key:zother', 1000, 1000)
    })

    it('rejects bad requests and bounds its size', () => {
      const book = createLeaseBook({ now: () => 0, maxTtlMs: 10_000, maxLeases: 2 })
      for (const slots of [0, -1, 1.5, Number.NaN]) throwsReason(() => book.reserve('did:key:za', slots, 1000), 'bad-request')
      for (const ttl of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 10_001]) throwsReason(() => book.reserve('did:key:za', 1, ttl), 'bad-request')
      throwsReason(() => book.reserve('', 1, 1000), 'bad-request')
      const l = book.reserve('did:key:za', 1, 1000)
      throwsReason(() => book.renew(l.id, 0), 'bad-request')
      book.reserve('did:key:za', 1, 1000)
      throwsReason(() => book.reserve('did:key:zb', 1, 1000), 'oversubscribed')
      assert.equal(book.leases().length, 2)
    })

    it('leases are immutable snapshots', () => {
      const book = createLeaseBook({ now: () => 0 })
      const l = book.reserve('did:key:za', 1, 1000)
      assert.throws(() => { (l as { slots: number }).slots = 100 }, TypeError)
      assert.equal(book.reservedFor('did:key:za'), 1)
    })

    it('feeds choose, so a node the book has filled is passed over', () => {
      const full = node({ slots: 2, freeSlots: 2 })
      const other = node({ slots: 2, freeSlots: 2 })
      const book = createLeaseBook({ now: () => 0 })
      book.reserve(full.id, 2, 1000)
      const a = choose([full, other], [], { rtt: table([[full, 1], [other, 50]]), reserved: book.reservedFor })
      assert.deepEqual(chosenDids(a), [other.id])
    })
  })

  describe('leaseOrder: a measured RTT beats an estimate unless the estimate is clearly lower', () => {
    // a measured at 20 ms; b estimated 15 (not clearly lower at 1.5x doubt: 22.5 > 20); c
    // estimated 10 (15 < 20, clearly lower); d estimated 16 but connected (a probe is cheap).
    const a = node()
    const b = node()
    const c = node()
    const d = node()
    const ranked = (): ReturnType<typeof choose> => choose([a, b, c, d], [], {
      count: 4,
      rtt: table([[a, 20]]),
      estimate: table([[b, 15], [c, 10], [d, 16]])
    })
    const all = (): Parameters<typeof leaseOrder>[0] => { const r = ranked(); assert.ok(r.ok); return r.chosen }
    const connected = (x: { did: string }): boolean => x.did === d.id

    it('ranks by latency alone, estimates and measurements together', () => {
      assert.deepEqual(all().map(x => x.did), [c.id, b.id, d.id, a.id])
    })

    it('asks the measured node before a doubtful estimate, and a clearly nearer or connected one first', () => {
      assert.deepEqual(leaseOrder(all(), 1, connected, 1.5).map(x => x.did), [c.id, d.id, a.id, b.id])
      const worth = worthADial(all(), 1, connected, 1.5)
      assert.deepEqual(all().filter(worth).map(x => x.did), [c.id, d.id, a.id])
    })

    it('keeps the ranking when fewer than count are measured (nothing to weigh estimates against)', () => {
      assert.deepEqual(leaseOrder(all(), 2, connected, 1.5).map(x => x.did), [c.id, b.id, d.id, a.id])
    })

    it('with no doubt at all, every estimate below the measurement is worth it', () => {
      assert.deepEqual(leaseOrder(all(), 1, () => false, 1).map(x => x.did), [c.id, b.id, d.id, a.id])
    })
  })
})
