// A bounded least-recently-used map for what identity work computes again and again: DID documents
// of self-certifying DIDs, public keys per DID, verified credentials. Bounded by entries and by an
// optional weight (e.g. the characters of a cached JWT), so a peer sending many distinct inputs
// only pushes old entries out. A Map keeps insertion order, so re-inserting on use makes the first
// key the least recently used one.

export interface BoundedCacheInit<V> {
  /** At most this many entries. */
  maxEntries: number
  /** At most this total weight, when `weigh` is given. */
  maxWeight?: number
  weigh?: (value: V) => number
}

export class BoundedCache<K, V> {
  readonly maxEntries: number
  readonly maxWeight: number
  private readonly weigh?: (value: V) => number
  private readonly entries = new Map<K, V>()
  private weight = 0

  constructor (init: BoundedCacheInit<V>) {
    if (!(init.maxEntries >= 0)) throw new RangeError('maxEntries must be a number >= 0')
    this.maxEntries = init.maxEntries
    this.maxWeight = init.maxWeight ?? Infinity
    this.weigh = init.weigh
  }

  get size (): number {
    return this.entries.size
  }

  get (key: K): V | undefined {
    const value = this.entries.get(key)
    if (value === undefined) return undefined
    this.entries.delete(key)
    this.entries.set(key, value)
    return value
  }

  has (key: K): boolean {
    return this.entries.has(key)
  }

  set (key: K, value: V): void {
    this.delete(key)
    const w = this.weigh?.(value) ?? 0
    if (this.maxEntries === 0 || w > this.maxWeight) return
    this.entries.set(key, value)
    this.weight += w
    while (this.entries.size > this.maxEntries || this.weight > this.maxWeight) {
      this.delete(this.entries.keys().next().value as K)
    }
  }

  delete (key: K): boolean {
    const value = this.entries.get(key)
    if (value === undefined) return false
    this.entries.delete(key)
    this.weight -= this.weigh?.(value) ?? 0
    return true
  }

  clear (): void {
    this.entries.clear()
    this.weight = 0
  }
}
