// Per-operation outcomes for the simulation report.
import { percentile, round } from '../bench/lib/stats.ts'

export type Outcome = 'ok' | 'failed' | 'excluded'

export interface OpSummary {
  attempts: number
  ok: number
  failed: number
  /** Ended by churn or a partition change under it (node or target left, split, heal): not judged. */
  excluded: number
  successRate: number | null
  p50: number | null
  p99: number | null
  max: number | null
  /** Up to five failure reasons with counts. */
  failures: Record<string, number>
}

export class OpStats {
  private readonly ms: number[] = []
  private ok = 0
  private failed = 0
  private excluded = 0
  private readonly reasons = new Map<string, number>()

  record (outcome: Outcome, ms: number, reason?: string): void {
    if (outcome === 'excluded') {
      this.excluded++
      return
    }
    this.ms.push(ms)
    if (outcome === 'ok') this.ok++
    else {
      this.failed++
      const r = (reason ?? 'unknown').replace(/[0-9a-zA-Z]{40,}/g, '…').slice(0, 80)
      this.reasons.set(r, (this.reasons.get(r) ?? 0) + 1)
    }
  }

  summary (): OpSummary {
    const judged = this.ok + this.failed
    const failures = Object.fromEntries([...this.reasons].sort((a, b) => b[1] - a[1]).slice(0, 5))
    return {
      attempts: judged + this.excluded,
      ok: this.ok,
      failed: this.failed,
      excluded: this.excluded,
      successRate: judged === 0 ? null : round(this.ok / judged * 100, 2),
      p50: this.ms.length === 0 ? null : round(percentile(this.ms, 0.5)),
      p99: this.ms.length === 0 ? null : round(percentile(this.ms, 0.99)),
      max: this.ms.length === 0 ? null : round(Math.max(...this.ms)),
      failures
    }
  }
}
