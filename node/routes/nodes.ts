// The registry over HTTP: GET /v1/nodes (query), GET /v1/nodes/:did, POST /v1/allocations,
// DELETE /v1/allocations/:did/:lease. Latency is from this node: measured RTT, else a Vivaldi
// estimate, and the row says which.
import { ConstraintError, constraintsFromOptions, matches, parseConstraints } from '../../registry/constraints.ts'
import { LeaseError } from '../../registry/allocation.ts'
import { descriptorsOf } from '../descriptors.ts'
import { HttpError, timeoutOf, withTimeout } from '../http-kit.ts'
import type { Constraint } from '../../registry/constraints.ts'
import type { RouteModule } from './index.ts'

function number (value: unknown, name: string): number | undefined {
  if (value === undefined || value === '') return undefined
  const n = Number(value)
  if (!Number.isFinite(n) || n < 0) throw new HttpError(400, `${name} must be a non-negative number, got ${String(value)}`)
  return n
}

function list (value: unknown): string[] {
  if (value === undefined) return []
  return (Array.isArray(value) ? value : [value]).map(String)
}

/** The query string's filters (the CLI's flags) plus any `constraint=` expressions. */
export function constraintsOfQuery (q: Record<string, unknown>): Constraint[] {
  try {
    const regions = list(q.region).flatMap(r => r.split(',')).map(r => r.trim()).filter(r => r !== '')
    return [
      ...constraintsFromOptions({
        region: regions.length === 0 ? undefined : regions.length === 1 ? regions[0] : regions,
        zone: q.zone === undefined ? undefined : String(q.zone),
        maxLatencyMs: number(q.maxLatency, 'maxLatency'),
        minCpus: number(q.minCpus, 'minCpus'),
        minMemoryMb: number(q.minMemory, 'minMemory'),
        accelerator: q.accelerator === undefined ? undefined : String(q.accelerator),
        minTrust: q.trust === undefined ? undefined : String(q.trust)
      }),
      ...parseConstraints(list(q.constraint))
    ]
  } catch (err) {
    if (err instanceof ConstraintError) throw new HttpError(400, err.message)
    throw err
  }
}

export const nodeRoutes: RouteModule = (app, { current }) => {
  app.get('/v1/nodes', async (req) => {
    const registry = descriptorsOf(current())
    const constraints = constraintsOfQuery((req.query ?? {}) as Record<string, unknown>)
    const ctx = { rttMs: (did: string) => registry.latency(did).ms, trust: registry.trustOf }
    const nodes = registry.list()
      .filter(d => matches(d, constraints, ctx).ok)
      .map(registry.row)
      .sort((a, b) => (a.latencyMs ?? Infinity) - (b.latencyMs ?? Infinity) || (a.did < b.did ? -1 : a.did > b.did ? 1 : 0))
    return { nodes, dropped: registry.dropped(), stats: registry.stats() }
  })

  app.get('/v1/nodes/:did', async (req) => {
    const did = (req.params as { did: string }).did
    const source = (req.query as Record<string, unknown> | undefined)?.source
    if (source !== undefined && source !== 'any' && source !== 'dht') throw new HttpError(400, `source must be any or dht, got ${String(source)}`)
    const registry = descriptorsOf(current())
    // Not in the local store (or ?source=dht): look the node's record up in the DHT.
    const found = await withTimeout(timeoutOf(req), `the descriptor of ${did} in the DHT`, async signal =>
      registry.find(did, { signal, source: source as 'any' | 'dht' | undefined }))
    if (found == null) throw new HttpError(404, `no live descriptor of ${did}`)
    return { ...registry.row(found.descriptor), source: found.source, descriptor: found.descriptor }
  })

  app.post('/v1/allocations', async (req, reply) => {
    const body = (req.body ?? {}) as Record<string, unknown>
    let constraints: Constraint[]
    try {
      constraints = body.constraints === undefined ? [] : parseConstraints(body.constraints)
    } catch (err) {
      if (err instanceof ConstraintError) throw new HttpError(400, err.message)
      throw err
    }
    const count = body.count === undefined ? 1 : body.count
    const slots = body.slots === undefined ? 1 : body.slots
    const ttlMs = body.ttlMs === undefined ? 60_000 : body.ttlMs
    for (const [name, v, max] of [['count', count, 10_000], ['slots', slots, 1_000_000], ['ttlMs', ttlMs, 3_600_000]] as const) {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) throw new HttpError(400, `${name} must be an integer from 1 to ${max}`)
    }
    const registry = descriptorsOf(current())
    const outcome = await withTimeout(timeoutOf(req), 'leases from the chosen nodes', async signal =>
      registry.allocate({ constraints, count: count as number, slots: slots as number, ttlMs: ttlMs as number, signal }))
    if (!outcome.ok) return await reply.code(outcome.status).send({ error: outcome.explanation, ...outcome })
    return outcome
  })

  app.delete('/v1/allocations/:did/:lease', async (req) => {
    const { did, lease } = req.params as { did: string, lease: string }
    try {
      return { released: await descriptorsOf(current()).release(did, lease) }
    } catch (err) {
      if (err instanceof LeaseError) throw new HttpError(404, err.message)
      throw err
    }
  })
}
