// Seeded PRNG for reproducible simulations and property tests (mulberry32).
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function pick<T> (random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)]
}

export function intBetween (random: () => number, lo: number, hi: number): number {
  return lo + Math.floor(random() * (hi - lo + 1))
}
