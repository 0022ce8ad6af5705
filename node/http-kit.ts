// What every API route shares: errors that carry an HTTP status, and bounded waiting.
import type { FastifyRequest } from 'fastify'

export const DEFAULT_TIMEOUT_MS = 30_000

/** Where a request's waiting ends: `?timeout=ms`, capped, so no call can hang the client forever. */
export function timeoutOf (req: FastifyRequest): number {
  const t = Number((req.query as any)?.timeout)
  return Number.isFinite(t) && t > 0 ? Math.min(t, 600_000) : DEFAULT_TIMEOUT_MS
}

export class HttpError extends Error {
  readonly status: number
  constructor (status: number, message: string) {
    super(message)
    this.status = status
  }
}

/** Runs `fn` with an abort signal that fires after `ms`, and turns that into a 504 saying what it waited on. */
export async function withTimeout<T> (ms: number, what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const signal = AbortSignal.timeout(ms)
  try {
    return await fn(signal)
  } catch (err: any) {
    if (signal.aborted) throw new HttpError(504, `timed out after ${ms / 1000}s waiting for ${what}`)
    throw err
  }
}
