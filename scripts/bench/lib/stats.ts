// Small statistics helpers shared by the benchmarks.

/** The q-quantile (0..1) of `values` by nearest rank; NaN for an empty list. */
export function percentile (values: number[], q: number): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.ceil(q * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]
}

export function median (values: number[]): number {
  return percentile(values, 0.5)
}

export function mean (values: number[]): number {
  if (values.length === 0) return NaN
  return values.reduce((a, b) => a + b, 0) / values.length
}

/** A number rounded to `digits` decimals, for tables and JSON. */
export function round (value: number, digits = 1): number {
  const f = 10 ** digits
  return Math.round(value * f) / f
}

/** Runs `fn` over `items` with at most `limit` calls in flight; results keep the input order. */
export async function mapLimit<T, R> (items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i], i)
    }
  })
  await Promise.all(workers)
  return out
}

/** A fixed-seed PRNG (mulberry32), so runs pick the same pairs. */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Prints rows as an aligned text table. */
export function table (header: string[], rows: Array<Array<string | number>>): string {
  const cells = [header, ...rows.map(r => r.map(String))]
  const widths = header.map((_, i) => Math.max(...cells.map(r => (r[i] ?? '').length)))
  return cells.map(r => r.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join('  ')).join('\n')
}
