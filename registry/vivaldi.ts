// Vivaldi network coordinates (Dabek et al., SIGCOMM 2004) with the adjustments Serf and Consul
// ship (hashicorp/serf/coordinate): a height term for the access link, an adaptive timestep
// weighted by the two nodes' error estimates, a floor on the height, a latency filter (median, or a low percentile) and a
// non-Euclidean adjustment term, plus an optional gravity pull towards the origin so a mesh's
// coordinates do not drift away forever. Units are milliseconds throughout (Serf uses seconds).
//
// `update` is pure: it validates its inputs before doing any arithmetic, so a hostile or broken
// peer can make it throw but cannot poison the local coordinate. `vivaldiEstimator` wraps it with
// the per-peer state Serf keeps (latency filter, adjustment window) for the node to hold.

export interface Coordinate {
  /** Euclidean part, in ms. */
  vec: number[]
  /** Access-link height, in ms; always at least the configured minimum. */
  height: number
  /** Confidence: 0 is certain, `errorMax` (1.5) knows nothing. */
  error: number
  /** Non-Euclidean correction (ms), averaged over recent samples; 0 when not tracked. */
  adjustment: number
}

export interface VivaldiConfig {
  dimensionality: number
  errorMax: number
  /** Weight of a new sample in the error estimate (Serf's VivaldiCE). */
  ce: number
  /** Timestep constant (Serf's VivaldiCC); the step is cc × local/(local+remote) error. */
  cc: number
  heightMinMs: number
  /** Gravity radius in ms (Serf: 150 s). `undefined` turns gravity off. */
  gravityRhoMs: number | undefined
  /** A sample above this is a measurement bug or an attack, not a latency. */
  maxRttMs: number
  adjustmentWindow: number
  latencyFilterSize: number
  /**
   * Which of a peer's last `latencyFilterSize` samples is used: 0.5 the median (Serf), 0 the
   * least. Queueing only ever adds delay, so where it is heavy (a loaded host, a busy link) a low
   * percentile over a longer window keeps a burst of late samples from moving the coordinate
   * (Ledlie et al., "Network Coordinates in the Wild", NSDI 2007: the moving-percentile filter).
   */
  latencyFilterPercentile: number
  /** Only used to pick a direction when two coordinates coincide. Inject a seeded one in tests. */
  random: () => number
}

export const DEFAULT_VIVALDI_CONFIG: Readonly<VivaldiConfig> = Object.freeze({
  dimensionality: 8,
  errorMax: 1.5,
  ce: 0.25,
  cc: 0.25,
  heightMinMs: 0.01,
  gravityRhoMs: 150_000,
  maxRttMs: 10_000,
  adjustmentWindow: 20,
  latencyFilterSize: 3,
  latencyFilterPercentile: 0.5,
  random: Math.random
})

/** Below this (ms) a distance or an error counts as zero, as in Serf (1 µs). */
const ZERO_THRESHOLD = 1e-3
/** Coordinates larger than this are garbage, whatever their origin (Earth's RTTs are < 1 s). */
const MAX_COMPONENT_MS = 1e6

export type VivaldiErrorReason = 'bad-rtt' | 'bad-coordinate'

export class VivaldiError extends Error {
  name = 'VivaldiError'
  readonly reason: VivaldiErrorReason
  constructor (reason: VivaldiErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

function configWith (config?: Partial<VivaldiConfig>): VivaldiConfig {
  return { ...DEFAULT_VIVALDI_CONFIG, ...config }
}

export function createCoordinate (config?: Partial<VivaldiConfig>): Coordinate {
  const c = configWith(config)
  return { vec: new Array<number>(c.dimensionality).fill(0), height: c.heightMinMs, error: c.errorMax, adjustment: 0 }
}

function finite (x: unknown, min: number, max: number): x is number {
  return typeof x === 'number' && Number.isFinite(x) && x >= min && x <= max
}

/** Throws VivaldiError('bad-coordinate') unless `c` is a usable coordinate of `dimensionality` (if given). */
export function checkCoordinate (c: unknown, dimensionality?: number): asserts c is Coordinate {
  if (c === null || typeof c !== 'object') throw new VivaldiError('bad-coordinate', 'a coordinate is an object')
  const { vec, height, error, adjustment } = c as Partial<Coordinate>
  if (!Array.isArray(vec) || vec.length === 0) throw new VivaldiError('bad-coordinate', 'coordinate vec must be a non-empty array')
  if (dimensionality !== undefined && vec.length !== dimensionality) {
    throw new VivaldiError('bad-coordinate', `coordinate has ${vec.length} dimensions, expected ${dimensionality}`)
  }
  if (!vec.every(x => finite(x, -MAX_COMPONENT_MS, MAX_COMPONENT_MS))) throw new VivaldiError('bad-coordinate', 'coordinate vec has a non-finite or huge component')
  if (!finite(height, 0, MAX_COMPONENT_MS)) throw new VivaldiError('bad-coordinate', 'coordinate height must be a finite number >= 0')
  if (!finite(error, 0, MAX_COMPONENT_MS)) throw new VivaldiError('bad-coordinate', 'coordinate error must be a finite number >= 0')
  if (adjustment !== undefined && !finite(adjustment, -MAX_COMPONENT_MS, MAX_COMPONENT_MS)) {
    throw new VivaldiError('bad-coordinate', 'coordinate adjustment must be finite')
  }
}

function checkRtt (rttMs: unknown, config: VivaldiConfig): asserts rttMs is number {
  if (typeof rttMs !== 'number' || !Number.isFinite(rttMs) || rttMs < 0 || rttMs > config.maxRttMs) {
    throw new VivaldiError('bad-rtt', `rtt must be a number in [0, ${config.maxRttMs}] ms, got ${String(rttMs)}`)
  }
}

function rawDistance (a: Coordinate, b: Coordinate): number {
  let sum = 0
  for (let i = 0; i < a.vec.length; i++) sum += (a.vec[i] - b.vec[i]) ** 2
  return Math.sqrt(sum) + a.height + b.height
}

/** Estimated round-trip time between two coordinates, in ms. */
export function estimateRtt (a: Coordinate, b: Coordinate): number {
  checkCoordinate(a)
  checkCoordinate(b, a.vec.length)
  const raw = rawDistance(a, b)
  // Serf applies the adjustment only when it keeps the estimate positive.
  const adjusted = raw + (a.adjustment ?? 0) + (b.adjustment ?? 0)
  return adjusted > 0 ? adjusted : raw
}

function unitVectorAt (from: number[], to: number[], random: () => number): { unit: number[], mag: number } {
  const d = from.map((x, i) => x - to[i])
  const mag = Math.hypot(...d)
  if (mag > ZERO_THRESHOLD) return { unit: d.map(x => x / mag), mag }
  // Coincident nodes: push apart in a random direction (reported as distance 0, so heights stay put).
  const r = d.map(() => random() - 0.5)
  const rmag = Math.hypot(...r)
  if (rmag > ZERO_THRESHOLD) return { unit: r.map(x => x / rmag), mag: 0 }
  const unit = new Array<number>(d.length).fill(0)
  unit[0] = 1
  return { unit, mag: 0 }
}

function applyForce (c: Coordinate, force: number, other: Coordinate, config: VivaldiConfig): Coordinate {
  const { unit, mag } = unitVectorAt(c.vec, other.vec, config.random)
  let height = c.height
  if (mag > ZERO_THRESHOLD) {
    height = Math.max((c.height + other.height) * force / mag + c.height, config.heightMinMs)
  }
  return { vec: c.vec.map((x, i) => x + unit[i] * force), height, error: c.error, adjustment: c.adjustment }
}

function valid (c: Coordinate): boolean {
  return c.vec.every(Number.isFinite) && Number.isFinite(c.height) && Number.isFinite(c.error) && Number.isFinite(c.adjustment)
}

/**
 * One Vivaldi step: move `local` according to a measured `rttMs` to the node at `remote`.
 * Returns a new coordinate (the adjustment term is carried over; `vivaldiEstimator` maintains it).
 */
export function update (local: Coordinate, remote: Coordinate, rttMs: number, config?: Partial<VivaldiConfig>): Coordinate {
  const cfg = configWith(config)
  checkCoordinate(local, cfg.dimensionality)
  checkCoordinate(remote, cfg.dimensionality)
  checkRtt(rttMs, cfg)
  const rtt = Math.max(rttMs, ZERO_THRESHOLD)

  const dist = estimateRtt(local, remote)
  const wrongness = Math.abs(dist - rtt) / rtt
  const totalError = Math.max(local.error + remote.error, ZERO_THRESHOLD)
  const weight = local.error / totalError
  const error = Math.min(cfg.ce * weight * wrongness + local.error * (1 - cfg.ce * weight), cfg.errorMax)
  // The adaptive timestep: a confident node facing an unsure one barely moves.
  const force = cfg.cc * weight * (rtt - dist)
  let next = applyForce({ ...local, adjustment: local.adjustment ?? 0, error }, force, remote, cfg)

  if (cfg.gravityRhoMs !== undefined) {
    const origin: Coordinate = { vec: new Array<number>(cfg.dimensionality).fill(0), height: cfg.heightMinMs, error: cfg.errorMax, adjustment: 0 }
    const pull = -1 * (estimateRtt(origin, next) / cfg.gravityRhoMs) ** 2
    next = applyForce(next, pull, origin, cfg)
  }
  // Serf resets rather than keep a coordinate that numerical trouble has wrecked.
  return valid(next) ? next : createCoordinate(cfg)
}

export interface VivaldiEstimator {
  /** The current local coordinate (a copy). */
  coordinate (): Coordinate
  /** Feed one RTT sample to `peer` (any stable key, e.g. its DID); returns the new local coordinate. */
  observe (peer: string, remote: Coordinate, rttMs: number): Coordinate
  /** Estimated RTT (ms) from here to a remote coordinate. */
  estimate (remote: Coordinate): number
  /** Drop a departed peer's latency samples. */
  forget (peer: string): void
}

/** Serf's `coordinate.Client`: filters each peer's samples (median, or a low percentile) and tracks the adjustment term. */
export function vivaldiEstimator (init?: Partial<VivaldiConfig> & { coordinate?: Coordinate }): VivaldiEstimator {
  const cfg = configWith(init)
  let local: Coordinate
  if (init?.coordinate !== undefined) {
    checkCoordinate(init.coordinate, cfg.dimensionality)
    local = structuredClone({ ...init.coordinate, adjustment: init.coordinate.adjustment ?? 0 })
  } else {
    local = createCoordinate(cfg)
  }
  const filters = new Map<string, number[]>()
  const adjustments = new Array<number>(cfg.adjustmentWindow).fill(0)
  let adjustmentIndex = 0

  return {
    // A copy (callers keep and publish it), made by hand: structuredClone was most of its cost.
    coordinate: () => ({ ...local, vec: [...local.vec] }),
    estimate: remote => estimateRtt(local, remote),
    forget: peer => { filters.delete(peer) },
    observe (peer, remote, rttMs) {
      // Validate before touching the filter, so rejected samples leave no trace.
      checkCoordinate(remote, cfg.dimensionality)
      checkRtt(rttMs, cfg)
      const samples = [...(filters.get(peer) ?? []), rttMs].slice(-cfg.latencyFilterSize)
      const filtered = [...samples].sort((a, b) => a - b)[Math.min(samples.length - 1, Math.floor(samples.length * cfg.latencyFilterPercentile))]
      let next = update(local, remote, filtered, cfg)
      if (cfg.adjustmentWindow > 0) {
        // The raw distance, without adjustments, is what the adjustment term corrects.
        const nextAdjustments = [...adjustments]
        nextAdjustments[adjustmentIndex] = filtered - rawDistance(next, remote)
        const adjustment = nextAdjustments.reduce((a, b) => a + b, 0) / (2 * cfg.adjustmentWindow)
        next = { ...next, adjustment }
        if (!valid(next)) return structuredClone(local)
        adjustments.splice(0, adjustments.length, ...nextAdjustments)
        adjustmentIndex = (adjustmentIndex + 1) % cfg.adjustmentWindow
      }
      filters.set(peer, samples)
      local = next
      return structuredClone(local)
    }
  }
}
