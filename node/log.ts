// The node's logs: structured (pino, one JSON object a line) on stderr, leveled, quiet by default
// (warn and worse). The last warnings and errors are also kept in a small ring, for `mesh status`
// and the dashboard. Process warnings (`process.emitWarning`, which the node and its features use
// for what went wrong in the background) go through the logger too, once `setupLogging` ran.
import { pino } from 'pino'
import type { Logger } from 'pino'

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = typeof LOG_LEVELS[number]

export interface RecentEntry { time: string, level: 'warn' | 'error' | 'fatal', msg: string, code?: string }

const RING_SIZE = 50
const ring: RecentEntry[] = []
const LEVEL_NAMES: Record<number, RecentEntry['level']> = { 40: 'warn', 50: 'error', 60: 'fatal' }

function remember (level: number, msg: string, code?: string): void {
  const name = LEVEL_NAMES[level]
  if (name == null) return
  ring.push({ time: new Date().toISOString(), level: name, msg, ...(code != null ? { code } : {}) })
  if (ring.length > RING_SIZE) ring.splice(0, ring.length - RING_SIZE)
}

function create (level: LogLevel): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    hooks: {
      logMethod (args, method, lvl) {
        // pino's call shapes: (msg), (obj, msg?, …), (err)
        const [first, second] = args as unknown[]
        const msg = typeof first === 'string' ? first : typeof second === 'string' ? second : (first as any)?.message ?? JSON.stringify(first)
        remember(lvl, msg, (first as any)?.code)
        method.apply(this, args as Parameters<typeof method>)
      }
    }
  }, pino.destination({ fd: 2, sync: true }))
}

/** The process's logger; `setupLogging` sets its level. */
export let log: Logger = create((process.env.MESH_LOG_LEVEL as LogLevel | undefined) ?? 'warn')

export function parseLogLevel (text: string): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(text)) throw new Error(`--log-level is one of ${LOG_LEVELS.join(', ')}, got ${text}`)
  return text as LogLevel
}

let warningsRouted = false

/**
 * Sets the level (default warn, or $MESH_LOG_LEVEL) and routes process warnings through the
 * logger instead of Node's `(node:pid) Warning:` lines. Call once, in `mesh start`.
 */
export function setupLogging (level?: string): Logger {
  const chosen = parseLogLevel(level ?? process.env.MESH_LOG_LEVEL ?? 'warn')
  log = create(chosen)
  if (!warningsRouted) {
    warningsRouted = true
    process.removeAllListeners('warning')
    process.on('warning', (w: Error & { code?: string }) => {
      // Node's own deprecation notices are not the node's trouble; keep them at info.
      if (w.name === 'DeprecationWarning' || w.name === 'ExperimentalWarning') log.info({ code: w.code, kind: w.name }, w.message)
      else log.warn({ code: w.code, kind: w.name }, w.message)
    })
  }
  return log
}

/** The last warnings and errors (newest last), at most 50. */
export function recentErrors (limit = RING_SIZE): RecentEntry[] {
  return ring.slice(-limit)
}
