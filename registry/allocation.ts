// Choosing nodes for a workload, and the lease book that keeps a node from promising the same
// slot twice. Every constraint is a hard filter: nothing is traded off against latency or
// capacity, which is what makes `region in {…}` a data-sovereignty guarantee rather than a
// preference. Among the nodes that pass, the nearest (measured RTT, else Vivaldi estimate) win,
// then the ones with most free capacity.
import { randomUUID } from 'node:crypto'
import { ConstraintError, formatConstraint, matches, satisfies } from './constraints.ts'
import type { Constraint } from './constraints.ts'
import type { EdgeNodeDescriptor, TrustLevel } from './descriptor.ts'

export interface ChooseOptions {
  /** How many distinct nodes to choose; default 1. */
  count?: number
  /** Slots needed on each node; default 1. */
  slots?: number
  /** Measured RTT in ms, when we have one. */
  rtt?: (did: string) => number | undefined
  /** Vivaldi estimate in ms, used when nothing was measured. */
  estimate?: (did: string) => number | undefined
  /** Slots already reserved on a node (e.g. from a lease book) and not yet reflected in its descriptor. */
  reserved?: (did: string) => number
  /** The verified trust level of a node; see MatchContext.trust. */
  trust?: (descriptor: EdgeNodeDescriptor) => TrustLevel
  /** ms since the epoch; when given, descriptors that have expired are left out. */
  now?: number
}

export interface Choice {
  did: string
  descriptor: EdgeNodeDescriptor
  /** undefined when neither measured nor estimated. */
  latencyMs: number | undefined
  latencySource: 'measured' | 'estimated' | 'unknown'
  freeSlots: number
}

/** One stage of the filter funnel: `excluded` of the `of` nodes that reached it. */
export interface Exclusion {
  stage: string
  constraint?: Constraint
  excluded: number
  of: number
}

export type Allocation =
  | { ok: true, chosen: Choice[], exclusions: Exclusion[] }
  | {
    ok: false
    needed: number
    found: number
    /** The nodes that did pass everything, best first (fewer than needed). */
    candidates: Choice[]
    exclusions: Exclusion[]
    /** e.g. "region in {eu-west}: excluded 7 of 10; latency <= 10 ms: excluded 2 of the remaining 3; …" */
    explanation: string
  }

function usable (ms: number | undefined): ms is number {
  return typeof ms === 'number' && Number.isFinite(ms) && ms >= 0
}

function explain (exclusions: readonly Exclusion[], needed: number, found: number): string {
  if (exclusions[0]?.of === 0) return `no nodes known; needed ${needed}, found 0`
  const stages = exclusions.map((e, i) => `${e.stage}: excluded ${e.excluded} of ${i === 0 ? '' : 'the remaining '}${e.of}`)
  return [...stages, `needed ${needed}, found ${found}`].join('; ')
}

function attempt<T, F> (fn: () => T, fallback: F): T | F {
  try {
    return fn()
  } catch {
    return fallback
  }
}

export function choose (descriptors: readonly EdgeNodeDescriptor[], constraints: readonly Constraint[], options: ChooseOptions = {}): Allocation {
  const count = options.count ?? 1
  const slots = options.slots ?? 1
  if (!Number.isInteger(count) || count < 1 || count > 10_000) throw new ConstraintError('bad-value', `count must be an integer from 1 to 10000, got ${count}`)
  if (!Number.isInteger(slots) || slots < 1 || slots > 1_000_000) throw new ConstraintError('bad-value', `slots must be a positive integer, got ${slots}`)

  // Each callback is asked once per node, so every stage and the final check see the same numbers.
  const latencies = new Map<string, Pick<Choice, 'latencyMs' | 'latencySource'>>()
  const latencyOf = (did: string): Pick<Choice, 'latencyMs' | 'latencySource'> => {
    let l = latencies.get(did)
    if (l === undefined) latencies.set(did, l = lookupLatency(did))
    return l
  }
  const lookupLatency = (did: string): Pick<Choice, 'latencyMs' | 'latencySource'> => {
    const measured = attempt(() => options.rtt?.(did), undefined)
    if (usable(measured)) return { latencyMs: measured, latencySource: 'measured' }
    // A remote coordinate of another dimensionality makes estimateRtt throw: that is "unknown".
    const estimated = attempt(() => options.estimate?.(did), undefined)
    if (usable(estimated)) return { latencyMs: estimated, latencySource: 'estimated' }
    return { latencyMs: undefined, latencySource: 'unknown' }
  }
  const ctx = { rttMs: (did: string) => latencyOf(did).latencyMs, trust: options.trust }
  // An unknowable reservation (NaN, a throwing callback) leaves no free capacity, never more.
  const reservations = new Map<string, number>()
  const free = (d: EdgeNodeDescriptor): number => {
    let r = reservations.get(d.id)
    if (r === undefined) reservations.set(d.id, r = Math.max(attempt(() => options.reserved?.(d.id) ?? 0, Number.NaN), 0))
    return d.capacity.freeSlots - r
  }

  // One entry per node: the newest descriptor we were given.
  const newest = new Map<string, EdgeNodeDescriptor>()
  for (const d of descriptors) {
    const seen = newest.get(d.id)
    if (seen === undefined || d.seq > seen.seq) newest.set(d.id, d)
  }
  let remaining = [...newest.values()]
  const exclusions: Exclusion[] = []
  const stage = (name: string, keep: (d: EdgeNodeDescriptor) => boolean, constraint?: Constraint): void => {
    const kept = remaining.filter(d => {
      try {
        return keep(d)
      } catch {
        return false // a descriptor too broken to evaluate never qualifies
      }
    })
    exclusions.push({ stage: name, ...(constraint !== undefined ? { constraint } : {}), excluded: remaining.length - kept.length, of: remaining.length })
    remaining = kept
  }

  const { now } = options
  if (now !== undefined) stage('not expired', d => Date.parse(d.expires) > now)
  for (const c of constraints) stage(formatConstraint(c), d => satisfies(d, c, ctx), c)
  stage(`free slots >= ${slots}`, d => free(d) >= slots)

  const ranked: Choice[] = remaining
    .map(d => ({ did: d.id, descriptor: d, ...latencyOf(d.id), freeSlots: free(d) }))
    .sort((a, b) => (a.latencyMs ?? Infinity) - (b.latencyMs ?? Infinity) || b.freeSlots - a.freeSlots || (a.did < b.did ? -1 : a.did > b.did ? 1 : 0))

  // Belt and braces: whatever the ranking did, nothing leaves here that fails a constraint.
  for (const c of ranked) {
    if (!matches(c.descriptor, constraints, ctx).ok) throw new Error(`allocation bug: ${c.did} fails a constraint`)
  }

  if (ranked.length >= count) return { ok: true, chosen: ranked.slice(0, count), exclusions }
  return { ok: false, needed: count, found: ranked.length, candidates: ranked, exclusions, explanation: explain(exclusions, count, ranked.length) }
}

/**
 * Whether an estimated candidate is worth a dial before choosing: it is already connected (a
 * probe is one round trip), or its estimate times `doubt` is still below the count-th best
 * measured RTT. Measuring an unconnected node means dialling it first (5-6 round trips and the
 * handshake's CPU), and an estimate is off by tens of percent: a measured RTT beats an estimate
 * unless the estimate is clearly lower. With fewer than `count` measured, every one is worth it.
 */
export function worthADial (ranked: readonly Choice[], count: number, connected: (c: Choice) => boolean, doubt: number): (c: Choice) => boolean {
  const bar = ranked.filter(c => c.latencySource === 'measured')[count - 1]?.latencyMs
  if (bar === undefined) return () => true
  return (c) => c.latencySource !== 'estimated' || connected(c) || (c.latencyMs !== undefined && c.latencyMs * doubt < bar)
}

/** Candidates in the order leases are asked for: ranked, but doubtful estimates (see worthADial) after the rest. */
export function leaseOrder (ranked: readonly Choice[], count: number, connected: (c: Choice) => boolean, doubt: number): Choice[] {
  const worth = worthADial(ranked, count, connected, doubt)
  return [...ranked.filter(worth), ...ranked.filter(c => !worth(c))]
}

export interface Lease {
  readonly id: string
  readonly did: string
  readonly slots: number
  /** ms since the epoch. */
  readonly expiresAt: number
}

export type LeaseErrorReason = 'bad-request' | 'oversubscribed' | 'unknown-lease'

export class LeaseError extends Error {
  name = 'LeaseError'
  readonly reason: LeaseErrorReason
  constructor (reason: LeaseErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

export interface LeaseBookInit {
  /** Clock in ms since the epoch; default Date.now. */
  now?: () => number
  /** A node's total slots; when it returns a number, reservations beyond it are refused. */
  capacity?: (did: string) => number | undefined
  maxTtlMs?: number
  /** Bounds memory however many requests arrive. */
  maxLeases?: number
}

export interface LeaseBook {
  reserve (did: string, slots: number, ttlMs: number): Lease
  /** Extends an unexpired lease to now + ttlMs. */
  renew (leaseId: string, ttlMs: number): Lease
  /** True if the lease existed and was still live. */
  release (leaseId: string): boolean
  /** Slots held by live leases on `did`. */
  reservedFor (did: string): number
  leases (did?: string): Lease[]
  /** Forgets expired leases; returns how many. (Every other call does this first.) */
  prune (): number
}

export function createLeaseBook (init: LeaseBookInit = {}): LeaseBook {
  const now = init.now ?? Date.now
  const maxTtlMs = init.maxTtlMs ?? 60 * 60 * 1000
  const maxLeases = init.maxLeases ?? 100_000
  const book = new Map<string, Lease>()

  const prune = (): number => {
    const t = now()
    let dropped = 0
    for (const [id, lease] of book) {
      if (lease.expiresAt <= t) {
        book.delete(id)
        dropped++
      }
    }
    return dropped
  }
  const checkTtl = (ttlMs: number): void => {
    if (typeof ttlMs !== 'number' || !Number.isFinite(ttlMs) || ttlMs <= 0 || ttlMs > maxTtlMs) {
      throw new LeaseError('bad-request', `ttl must be in (0, ${maxTtlMs}] ms, got ${String(ttlMs)}`)
    }
  }
  const reservedFor = (did: string): number => {
    prune()
    let sum = 0
    for (const lease of book.values()) if (lease.did === did) sum += lease.slots
    return sum
  }

  return {
    prune,
    reservedFor,
    reserve (did, slots, ttlMs) {
      if (typeof did !== 'string' || did === '') throw new LeaseError('bad-request', 'a lease needs a node DID')
      if (!Number.isInteger(slots) || slots < 1) throw new LeaseError('bad-request', `slots must be a positive integer, got ${String(slots)}`)
      checkTtl(ttlMs)
      const held = reservedFor(did)
      const capacity = init.capacity?.(did)
      if (capacity !== undefined && held + slots > capacity) {
        throw new LeaseError('oversubscribed', `${did} has ${Math.max(capacity - held, 0)} of ${capacity} slots free, asked for ${slots}`)
      }
      if (book.size >= maxLeases) throw new LeaseError('oversubscribed', `lease book is full (${maxLeases} leases)`)
      const lease: Lease = Object.freeze({ id: randomUUID(), did, slots, expiresAt: now() + ttlMs })
      book.set(lease.id, lease)
      return lease
    },
    renew (leaseId, ttlMs) {
      checkTtl(ttlMs)
      prune()
      const lease = book.get(leaseId)
      if (lease === undefined) throw new LeaseError('unknown-lease', `no live lease ${String(leaseId)} (expired, released or never granted)`)
      const renewed: Lease = Object.freeze({ ...lease, expiresAt: now() + ttlMs })
      book.set(leaseId, renewed)
      return renewed
    },
    release (leaseId) {
      prune()
      return book.delete(leaseId)
    },
    leases (did) {
      prune()
      return [...book.values()].filter(l => did === undefined || l.did === did)
    }
  }
}
