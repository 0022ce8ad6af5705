// Placement constraints: `latency <= 10`, `region in {eu-west, eu-central}`, `trust >= member`.
// They arrive from the CLI as strings and from the HTTP API as JSON, and both are parsed into the
// same normalized form, so `matches` has one meaning whichever way a request came in. Unknown
// fields and operators are errors, never ignored: a constraint silently dropped could place data
// somewhere it must not go.
import { ACCELERATOR_KINDS, TRUST_LEVELS, trustRank } from './descriptor.ts'
import type { EdgeNodeDescriptor, TrustLevel } from './descriptor.ts'

export type NumericField = 'latency' | 'cpus' | 'memory' | 'free-memory'
export type SetField = 'region' | 'zone' | 'accelerator' | 'runtime'
export type ConstraintField = NumericField | SetField | 'trust'
export type Comparison = '<=' | '<' | '>=' | '>' | '='
export type Operator = Comparison | '!=' | 'in'

export type Constraint =
  | { field: NumericField, op: Comparison, value: number }
  | { field: SetField, op: '=' | '!=', value: string }
  | { field: SetField, op: 'in', value: string[] }
  | { field: 'trust', op: Comparison, value: TrustLevel }

export type ConstraintErrorReason = 'syntax' | 'unknown-field' | 'unknown-operator' | 'bad-value'

export class ConstraintError extends Error {
  name = 'ConstraintError'
  readonly reason: ConstraintErrorReason
  constructor (reason: ConstraintErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

interface FieldSpec {
  ops: readonly Operator[]
  /** Unit suffixes accepted on a value, with their factor to the canonical unit (first is canonical). */
  units?: ReadonlyArray<readonly [string, number]>
  /** Closed vocabulary, if any. */
  values?: readonly string[]
}

const ORDERED: readonly Operator[] = ['>=', '>', '=', '<=', '<']
const SETS: readonly Operator[] = ['=', '!=', 'in']

const FIELDS: Record<ConstraintField, FieldSpec> = {
  // A lower bound on latency would mean "keep my work far away": nobody asks for that.
  latency: { ops: ['<=', '<'], units: [['ms', 1], ['s', 1000]] },
  cpus: { ops: ORDERED },
  memory: { ops: ORDERED, units: [['mb', 1], ['mib', 1], ['gb', 1024], ['gib', 1024]] },
  'free-memory': { ops: ORDERED, units: [['mb', 1], ['mib', 1], ['gb', 1024], ['gib', 1024]] },
  region: { ops: SETS },
  zone: { ops: SETS },
  accelerator: { ops: SETS, values: ACCELERATOR_KINDS },
  runtime: { ops: SETS },
  trust: { ops: ORDERED, values: TRUST_LEVELS }
}

const ALIASES: Record<string, ConstraintField> = {
  rtt: 'latency',
  cpu: 'cpus',
  cores: 'cpus',
  mem: 'memory',
  freememory: 'free-memory',
  'free-mem': 'free-memory',
  accelerators: 'accelerator',
  accel: 'accelerator',
  runtimes: 'runtime'
}

const OPERATORS: readonly Operator[] = ['<=', '>=', '!=', '<', '>', '=', 'in']
const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/

function fieldOf (name: unknown): ConstraintField {
  if (typeof name !== 'string') throw new ConstraintError('unknown-field', 'a constraint field is a string')
  const key = name.trim().toLowerCase()
  if (Object.hasOwn(FIELDS, key)) return key as ConstraintField
  if (Object.hasOwn(ALIASES, key)) return ALIASES[key]
  throw new ConstraintError('unknown-field', `unknown constraint field "${name}" (known: ${Object.keys(FIELDS).join(', ')})`)
}

function opOf (field: ConstraintField, op: unknown): Operator {
  const o = typeof op === 'string' ? (op.trim() === '==' ? '=' : op.trim().toLowerCase()) : op
  if (!OPERATORS.includes(o as Operator)) throw new ConstraintError('unknown-operator', `unknown operator "${String(op)}" (known: ${OPERATORS.join(' ')})`)
  if (!FIELDS[field].ops.includes(o as Operator)) {
    throw new ConstraintError('unknown-operator', `${field} takes ${FIELDS[field].ops.join(', ')}, not ${String(op)}`)
  }
  return o as Operator
}

function numberOf (field: ConstraintField, raw: unknown): number {
  const spec = FIELDS[field]
  let n: number
  if (typeof raw === 'number') {
    n = raw
  } else if (typeof raw === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(raw)
    if (m === null) throw new ConstraintError('bad-value', `${field} needs a number, got "${raw}"`)
    const unit = m[2].toLowerCase()
    const factor = unit === '' ? 1 : spec.units?.find(([u]) => u === unit)?.[1]
    if (factor === undefined) {
      const units = spec.units?.map(([u]) => u).join(', ')
      throw new ConstraintError('bad-value', `${field} ${units === undefined ? 'takes no unit' : `takes units ${units}`}, got "${m[2]}"`)
    }
    n = Number(m[1]) * factor
  } else {
    throw new ConstraintError('bad-value', `${field} needs a number`)
  }
  if (!Number.isFinite(n) || n < 0) throw new ConstraintError('bad-value', `${field} needs a finite number >= 0, got ${String(raw)}`)
  return n
}

function nameOf (field: ConstraintField, raw: unknown): string {
  if (typeof raw !== 'string') throw new ConstraintError('bad-value', `${field} needs a name, got ${JSON.stringify(raw)}`)
  const v = raw.trim().replace(/^(["'])(.*)\1$/, '$2').trim().toLowerCase()
  const allowed = FIELDS[field].values
  if (allowed !== undefined ? !allowed.includes(v) : !NAME.test(v)) {
    const hint = allowed !== undefined ? ` (one of ${allowed.join(', ')})` : ''
    throw new ConstraintError('bad-value', `bad ${field} "${raw}"${hint}`)
  }
  return v
}

function setOf (field: ConstraintField, raw: unknown): string[] {
  let items: unknown[]
  if (Array.isArray(raw)) {
    items = raw
  } else if (typeof raw === 'string') {
    const m = /^\s*\{(.*)\}\s*$/s.exec(raw)
    if (m === null) throw new ConstraintError('syntax', `${field} in needs a set like {a, b}, got "${raw}"`)
    items = m[1].split(',').filter(s => s.trim() !== '')
  } else {
    throw new ConstraintError('bad-value', `${field} in needs a set of names`)
  }
  if (items.length === 0) throw new ConstraintError('bad-value', `${field} in {} is an empty set: nothing could match`)
  if (items.length > 64) throw new ConstraintError('bad-value', `${field} in: at most 64 names`)
  return [...new Set(items.map(i => nameOf(field, i)))].sort()
}

/** Builds a normalized constraint from its three parts; the one path for strings and JSON alike. */
export function constraint (field: unknown, op: unknown, value: unknown): Constraint {
  const f = fieldOf(field)
  const o = opOf(f, op)
  switch (f) {
    case 'latency': case 'cpus': case 'memory': case 'free-memory':
      return { field: f, op: o as Comparison, value: numberOf(f, value) }
    case 'trust':
      return { field: f, op: o as Comparison, value: nameOf(f, value) as TrustLevel }
    default:
      return o === 'in' ? { field: f, op: 'in', value: setOf(f, value) } : { field: f, op: o as '=' | '!=', value: nameOf(f, value) }
  }
}

const TEXT = /^\s*([a-z][a-z-]*)\s*(<=|>=|!=|==|=|<|>|\s+in\s+|in(?=\s*\{))\s*(.*?)\s*$/is

/** One constraint from text: `latency <= 10`, `region in {eu-west, eu-central}`, `memory >= 2GB`. */
export function parseConstraint (text: string): Constraint {
  if (typeof text !== 'string' || text.length > 1024) throw new ConstraintError('syntax', 'a constraint is a string of at most 1024 characters')
  const m = TEXT.exec(text)
  if (m === null) {
    const word = /^\s*([a-z][a-z-]*)/i.exec(text)?.[1]
    if (word !== undefined) fieldOf(word) // an unknown field deserves that name, not "syntax"
    throw new ConstraintError('syntax', `cannot parse constraint "${text}": expected FIELD OP VALUE, e.g. "latency <= 10"`)
  }
  if (m[3] === '') throw new ConstraintError('syntax', `constraint "${text}" has no value`)
  return constraint(m[1], m[2], m[3])
}

/** Splits at commas and semicolons that are not inside {…}. */
function split (text: string): string[] {
  const parts: string[] = []
  let depth = 0
  let start = 0
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]
    if (ch === '{') depth++
    else if (ch === '}') depth = Math.max(depth - 1, 0)
    else if ((ch === ',' || ch === ';') && depth === 0) {
      parts.push(text.slice(start, i))
      start = i + 1
    }
  }
  parts.push(text.slice(start))
  return parts.filter(p => p.trim() !== '')
}

/**
 * Constraints from any of: a string ("latency <= 10, region = eu-west"), an array of such strings
 * (repeated CLI flags), or JSON: an array of `{ field, op, value }` objects (strings allowed too).
 */
export function parseConstraints (input: unknown): Constraint[] {
  if (typeof input === 'string') return split(input).map(parseConstraint)
  if (!Array.isArray(input)) throw new ConstraintError('syntax', 'constraints are a string or an array')
  if (input.length > 64) throw new ConstraintError('syntax', 'at most 64 constraints')
  return input.flatMap((item: unknown) => {
    if (typeof item === 'string') return split(item).map(parseConstraint)
    if (item !== null && typeof item === 'object' && !Array.isArray(item)) {
      const { field, op, value, ...rest } = item as Record<string, unknown>
      const extra = Object.keys(rest)
      if (extra.length > 0) throw new ConstraintError('syntax', `a constraint object has field, op, value; unexpected ${extra.join(', ')}`)
      return [constraint(field, op, value)]
    }
    throw new ConstraintError('syntax', `not a constraint: ${JSON.stringify(item)}`)
  })
}

export interface ConstraintOptions {
  /** Several regions mean "any of these". */
  region?: string | string[]
  zone?: string
  maxLatencyMs?: number
  minCpus?: number
  minMemoryMb?: number
  accelerator?: string
  runtime?: string
  minTrust?: string
}

/** The CLI's flags (`--region R --max-latency MS …`) as constraints. */
export function constraintsFromOptions (o: ConstraintOptions): Constraint[] {
  const out: Constraint[] = []
  if (o.region !== undefined) out.push(Array.isArray(o.region) ? constraint('region', 'in', o.region) : constraint('region', '=', o.region))
  if (o.zone !== undefined) out.push(constraint('zone', '=', o.zone))
  if (o.maxLatencyMs !== undefined) out.push(constraint('latency', '<=', o.maxLatencyMs))
  if (o.minCpus !== undefined) out.push(constraint('cpus', '>=', o.minCpus))
  if (o.minMemoryMb !== undefined) out.push(constraint('memory', '>=', o.minMemoryMb))
  if (o.accelerator !== undefined) out.push(constraint('accelerator', '=', o.accelerator))
  if (o.runtime !== undefined) out.push(constraint('runtime', '=', o.runtime))
  if (o.minTrust !== undefined) out.push(constraint('trust', '>=', o.minTrust))
  return out
}

export function formatConstraint (c: Constraint): string {
  const unit = c.field === 'latency' ? ' ms' : c.field === 'memory' || c.field === 'free-memory' ? ' MB' : ''
  const value = Array.isArray(c.value) ? `{${c.value.join(', ')}}` : `${c.value}${unit}`
  return `${c.field} ${c.op} ${value}`
}

export interface MatchContext {
  /** Round-trip time to a node in ms (measured or estimated), or undefined when unknown. */
  rttMs: (did: string) => number | undefined
  /**
   * The trust level the caller has verified for this node. The descriptor's own `trust.level` is
   * only a claim; without this hook it is taken at its word.
   */
  trust?: (descriptor: EdgeNodeDescriptor) => TrustLevel
}

export type MatchResult = { ok: true } | { ok: false, failed: Constraint[] }

function compare (op: Comparison, a: number, b: number): boolean {
  switch (op) {
    case '<=': return a <= b
    case '<': return a < b
    case '>=': return a >= b
    case '>': return a > b
    case '=': return a === b
  }
}

function setTest (op: '=' | '!=' | 'in', have: readonly string[], value: string | string[]): boolean {
  switch (op) {
    case '=': return have.includes(value as string)
    case '!=': return !have.includes(value as string)
    case 'in': return have.some(h => (value as string[]).includes(h))
  }
}

/** Whether one descriptor meets one constraint. Unknown latency never meets a latency bound. */
export function satisfies (d: EdgeNodeDescriptor, c: Constraint, ctx: MatchContext): boolean {
  switch (c.field) {
    case 'latency': {
      const rtt = ctx.rttMs(d.id)
      return typeof rtt === 'number' && Number.isFinite(rtt) && rtt >= 0 && compare(c.op, rtt, c.value)
    }
    case 'cpus': return compare(c.op, d.cpu.cores, c.value)
    case 'memory': return compare(c.op, d.memory.totalMb, c.value)
    case 'free-memory': return compare(c.op, d.memory.freeMb, c.value)
    case 'trust': {
      const level = ctx.trust?.(d) ?? d.trust.level
      return trustRank(level) >= 0 && compare(c.op, trustRank(level), trustRank(c.value))
    }
    case 'region': return setTest(c.op, [d.region], c.value)
    case 'zone': return setTest(c.op, [d.zone], c.value)
    case 'accelerator': return setTest(c.op, d.accelerators.map(a => a.kind), c.value)
    case 'runtime': return setTest(c.op, d.runtimes, c.value)
  }
}

/** Ok, or every constraint the descriptor fails. */
export function matches (d: EdgeNodeDescriptor, constraints: readonly Constraint[], ctx: MatchContext): MatchResult {
  const failed = constraints.filter(c => !satisfies(d, c, ctx))
  return failed.length === 0 ? { ok: true } : { ok: false, failed }
}
