// Function invocation: ask a peer to run a Wasm artifact and answer with what it printed.
//
// Wire: `<prefix>/invoke/1.0.0`. The caller writes one length-prefixed dag-cbor request
// { artifact: CID (the manifest), args, env, stdin, limits }, the server one response
// { exitCode, stdout, stderr, outcome, message? , ms }. dag-cbor carries stdin and output as bytes,
// without base64's third. Both directions are bounded; a request that does not validate is answered
// with outcome 'error' and never reaches the runtime. A server at capacity answers 'busy' at once,
// so the caller can try the next node instead of queueing behind a long job.
//
// A stream carries one call at a time but may carry many in turn: the server reads the next
// request after answering, until the caller closes the stream or leaves it idle. Callers keep a
// few idle streams per peer, so a warm call skips opening a stream and negotiating the protocol
// (about a third of a loopback call). A caller that writes one request and closes is served as
// before. The membership gate still holds: it admits a stream when it opens, and a peer that is
// refused or revoked later is hung up on, which ends its streams.
import * as dagCbor from '@ipld/dag-cbor'
import { lpStream } from '@libp2p/utils'
import { CID } from 'multiformats/cid'
import { tooLarge } from './too-large.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

export const MAX_STDIN_BYTES = 1024 * 1024
const MAX_ARGS = 256
const MAX_ARGS_ENV_CHARS = 64 * 1024
export const MAX_REQUEST_BYTES = MAX_STDIN_BYTES + MAX_ARGS_ENV_CHARS * 2 + 4096
/** What a caller accepts back: the largest output a server may allow, plus room for the framing. */
export const MAX_RESPONSE_BYTES = 16 * 1024 * 1024 + 64 * 1024
/** A server closes a stream that brings no next request within this. */
const SERVER_IDLE_MS = 60_000
/** A caller closes an idle stream sooner than the server would, so it never reuses a closing one. */
const CALLER_IDLE_MS = 20_000
/** Idle streams a caller keeps per peer. */
const IDLE_PER_PEER = 8

export interface InvokeLimits {
  memoryBytes?: number
  timeoutMs?: number
  outputBytes?: number
}

export interface InvokeRequest {
  /** The artifact's manifest CID. */
  artifact: CID
  args: string[]
  env: Record<string, string>
  stdin: Uint8Array
  limits: InvokeLimits
  /** The caller's W3C trace context, so the serving node's span joins the caller's trace. */
  traceparent?: string
}

/** The runtime's outcomes, plus 'busy' (at capacity, try another node) and 'error' (could not run). */
export type InvokeOutcome = 'ok' | 'exit-nonzero' | 'timeout' | 'memory' | 'output' | 'trap' | 'refused' | 'busy' | 'error'
const OUTCOMES = new Set<string>(['ok', 'exit-nonzero', 'timeout', 'memory', 'output', 'trap', 'refused', 'busy', 'error'])

export interface InvokeResponse {
  exitCode: number
  stdout: Uint8Array
  stderr: Uint8Array
  outcome: InvokeOutcome
  message?: string
  /** Wall time on the serving node, fetching the artifact included. */
  ms: number
}

export class InvokeError extends Error {
  name = 'InvokeError'
}

/** Checks a request's shape and bounds; throws InvokeError saying what is wrong. */
export function validateRequest (value: unknown): InvokeRequest {
  const fail = (what: string): never => { throw new InvokeError(`invalid invocation: ${what}`) }
  if (value == null || typeof value !== 'object' || Array.isArray(value)) fail('not a map')
  const r = value as Record<string, any>
  const artifact = CID.asCID(r.artifact) ?? fail('artifact is not a CID')
  const args = r.args ?? []
  if (!Array.isArray(args) || args.length > MAX_ARGS || args.some((a: unknown) => typeof a !== 'string' || a.includes('\0'))) fail(`args must be at most ${MAX_ARGS} strings without NUL`)
  const env = r.env ?? {}
  if (typeof env !== 'object' || Array.isArray(env)) fail('env is not a map')
  for (const [k, v] of Object.entries(env)) {
    if (k === '' || k.includes('=') || k.includes('\0') || typeof v !== 'string' || v.includes('\0')) fail(`bad env entry ${JSON.stringify(k)}`)
  }
  const chars = [...args, ...Object.entries(env).flat()].reduce((n: number, s) => n + (s as string).length, 0)
  if (chars > MAX_ARGS_ENV_CHARS) fail(`args and env are over ${MAX_ARGS_ENV_CHARS} characters`)
  const stdin = r.stdin ?? new Uint8Array(0)
  if (!(stdin instanceof Uint8Array) || stdin.length > MAX_STDIN_BYTES) fail(`stdin must be at most ${MAX_STDIN_BYTES} bytes`)
  const limits = r.limits ?? {}
  if (typeof limits !== 'object' || Array.isArray(limits)) fail('limits is not a map')
  const out: InvokeLimits = {}
  for (const [k, v] of Object.entries(limits)) {
    if (k !== 'memoryBytes' && k !== 'timeoutMs' && k !== 'outputBytes') fail(`unknown limit ${k}`)
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`limits.${k} must be a positive number`)
    out[k as keyof InvokeLimits] = v as number
  }
  const traceparent = typeof r.traceparent === 'string' && /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/.test(r.traceparent) ? { traceparent: r.traceparent as string } : {}
  return { artifact, args, env: env as Record<string, string>, stdin, limits: out, ...traceparent }
}

function validateResponse (value: unknown): InvokeResponse {
  const r = value as Record<string, any>
  if (r == null || typeof r !== 'object' || !Number.isSafeInteger(r.exitCode) || !(r.stdout instanceof Uint8Array) ||
    !(r.stderr instanceof Uint8Array) || !OUTCOMES.has(r.outcome) || (r.message != null && typeof r.message !== 'string')) {
    throw new InvokeError('the serving node sent a malformed answer')
  }
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr, outcome: r.outcome, message: r.message ?? undefined, ms: typeof r.ms === 'number' ? r.ms : 0 }
}

export function failure (outcome: 'busy' | 'error' | 'refused', message: string, ms = 0): InvokeResponse {
  return { exitCode: -1, stdout: new Uint8Array(0), stderr: new Uint8Array(0), outcome, message, ms }
}

export interface InvokeProtocolInit {
  protocolPrefix: string
  /** Runs a validated request for `from`; never throws for the caller's mistakes (answers 'error'). */
  run: (request: InvokeRequest, from: PeerId) => Promise<InvokeResponse>
  maxInboundStreams?: number
}

export interface InvokeProtocol {
  readonly protocol: string
  start: () => Promise<void>
  stop: () => Promise<void>
  call: (peer: PeerId, request: InvokeRequest, options?: { signal?: AbortSignal }) => Promise<InvokeResponse>
}

export function invokeProtocol (components: { libp2p: Libp2p }, init: InvokeProtocolInit): InvokeProtocol {
  const { libp2p } = components
  const protocol = `${init.protocolPrefix}/invoke/1.0.0`

  async function handle (stream: Stream, connection: Connection): Promise<void> {
    const lp = lpStream(stream, { maxDataLength: MAX_REQUEST_BYTES })
    const refuse = async (message: string): Promise<void> => {
      await lp.write(dagCbor.encode(failure('error', message)), { signal: AbortSignal.timeout(10_000) })
      await stream.close({ signal: AbortSignal.timeout(10_000) })
    }
    try {
      for (let first = true; ; first = false) {
        let request: InvokeRequest
        try {
          const bytes = (await lp.read({ signal: AbortSignal.timeout(first ? 10_000 : SERVER_IDLE_MS) })).subarray()
          request = validateRequest(dagCbor.decode(bytes))
        } catch (err: any) {
          if (err instanceof InvokeError) return await refuse(err.message)
          if (tooLarge(err)) return await refuse(`invocation is over ${MAX_REQUEST_BYTES} bytes`)
          // After a call, the caller closing (or idling out) is the normal end of the stream.
          if (!first && (err?.name === 'UnexpectedEOFError' || err?.name === 'TimeoutError')) {
            return await stream.close({ signal: AbortSignal.timeout(10_000) })
          }
          return await refuse('malformed invocation')
        }
        const response = await init.run(request, connection.remotePeer)
        await lp.write(dagCbor.encode(response), { signal: AbortSignal.timeout(30_000) })
      }
    } catch (err: any) {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  interface Idle { stream: Stream, lp: ReturnType<typeof lpStream>, timer: ReturnType<typeof setTimeout> }
  const idle = new Map<string, Idle[]>()
  let stopped = false

  const takeIdle = (peer: PeerId): Idle | undefined => {
    const list = idle.get(peer.toString())
    while (list != null && list.length > 0) {
      const entry = list.pop() as Idle
      clearTimeout(entry.timer)
      const s = entry.stream
      if (s.status === 'open' && s.writeStatus === 'writable' && s.remoteWriteStatus === 'writable' && s.remoteReadStatus === 'readable') return entry
      s.abort(new Error('stale invoke stream'))
    }
    if (list != null) idle.delete(peer.toString())
    return undefined
  }

  const putIdle = (peer: PeerId, entry: Omit<Idle, 'timer'>): void => {
    const key = peer.toString()
    const list = idle.get(key) ?? []
    if (stopped || list.length >= IDLE_PER_PEER || entry.stream.status !== 'open') {
      void entry.stream.close().catch(() => {})
      return
    }
    const held: Idle = { ...entry, timer: setTimeout(() => {
      const at = list.indexOf(held)
      if (at >= 0) list.splice(at, 1)
      if (list.length === 0 && idle.get(key) === list) idle.delete(key)
      void entry.stream.close().catch(() => {})
    }, CALLER_IDLE_MS) }
    held.timer.unref?.()
    list.push(held)
    idle.set(key, list)
  }

  return {
    protocol,
    async start () {
      await libp2p.handle(protocol, handle, { maxInboundStreams: init.maxInboundStreams ?? 64, maxOutboundStreams: 64 })
    },
    async stop () {
      stopped = true
      for (const list of idle.values()) {
        for (const entry of list) {
          clearTimeout(entry.timer)
          entry.stream.abort(new Error('invoke protocol stopped'))
        }
      }
      idle.clear()
      await libp2p.unhandle(protocol).catch(() => {})
    },
    async call (peer, request, options = {}) {
      const body = dagCbor.encode(validateRequest(request))
      let entry = takeIdle(peer)
      if (entry == null) {
        const stream = await libp2p.dialProtocol(peer, protocol, { signal: options.signal })
        entry = { stream, lp: lpStream(stream, { maxDataLength: MAX_RESPONSE_BYTES }), timer: undefined as any }
      }
      const { stream, lp } = entry
      try {
        await lp.write(body, { signal: options.signal })
        const answer = validateResponse(dagCbor.decode((await lp.read({ signal: options.signal })).subarray()))
        putIdle(peer, { stream, lp })
        return answer
      } catch (err: any) {
        stream.abort(err instanceof Error ? err : new Error(String(err)))
        throw err
      }
    }
  }
}
