// Capacity reservation on a remote node: `/mesh/<network>/lease/1.0.0`. An allocator that picked a
// node from its (possibly stale) descriptor asks the node itself for the slots; the node answers
// from its own lease book, one request at a time per book, so two allocators racing for its last
// slot cannot both win.
//
// Wire: the dialer writes a length-prefixed JSON request, the listener a JSON answer, and so on
// for as long as the dialer keeps the stream open (answers come back in request order):
//   {op:'reserve', slots, ttlMs} | {op:'renew', id, ttlMs} | {op:'release', id}
//   → {ok:true, lease:{id, slots, expiresAt}} | {ok:true, released:boolean} | {ok:false, reason, error}
// The dialer keeps one stream per peer and reuses it: libp2p 3 negotiates a new stream's protocol
// in a round trip of its own before the first byte of the request goes out, so a lease on a fresh
// stream took two round trips (measured in bench:registry: allocations to connected nodes took
// 2-2.5 RTTs). A dialer that sends one request and closes, as before, is answered as before.
import { lpStream } from '@libp2p/utils'
import { LeaseError } from '../registry/allocation.ts'
import { tooLarge } from './too-large.ts'
import type { Lease, LeaseBook, LeaseErrorReason } from '../registry/allocation.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

const MAX_MESSAGE_BYTES = 4096
const TIMEOUT_MS = 10_000
/** Requests one stream may carry before the listener hangs up (a bound on what one peer may ask). */
const MAX_REQUESTS_PER_STREAM = 100_000

export type LeaseRequest =
  | { op: 'reserve', slots: number, ttlMs: number }
  | { op: 'renew', id: string, ttlMs: number }
  | { op: 'release', id: string }

export interface LeaseGrant { id: string, did: string, slots: number, expiresAt: number }

export interface LeaseServiceInit {
  network: string
  /** This node's DID: the only node its book leases. */
  did: string
  book: LeaseBook
  /** Called after a reservation or release changed the free capacity. */
  onChange?: () => void
  onDropped?: (reason: string) => void
}

export interface LeaseService {
  readonly protocol: string
  start: () => Promise<void>
  stop: () => Promise<void>
  /** Answers one request locally, exactly as a remote peer would be answered. */
  answer: (request: unknown) => Record<string, unknown>
  /** Sends a request to `peer`; resolves with its answer, throws LeaseError when refused. */
  request: (peer: PeerId, request: LeaseRequest, options?: { signal?: AbortSignal }) => Promise<Record<string, any>>
  /** Opens the stream to `peer` ahead of a request, so that the request is one round trip. */
  prepare: (peer: PeerId, options?: { signal?: AbortSignal }) => Promise<void>
}

interface Session {
  stream: Stream
  lp: ReturnType<typeof lpStream>
  /** The request in flight: one at a time per stream, so answers pair with requests by order. */
  tail: Promise<unknown>
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

export function leaseProtocol (network: string): string {
  return `/mesh/${network}/lease/1.0.0`
}

function grant (lease: Lease): LeaseGrant {
  return { id: lease.id, did: lease.did, slots: lease.slots, expiresAt: lease.expiresAt }
}

export function leaseService (components: { libp2p: Libp2p }, init: LeaseServiceInit): LeaseService {
  const { libp2p } = components
  const protocol = leaseProtocol(init.network)

  // The book is synchronous, so each answer is atomic: that is what prevents oversubscription.
  function answer (request: unknown): Record<string, unknown> {
    try {
      if (request === null || typeof request !== 'object' || Array.isArray(request)) throw new LeaseError('bad-request', 'a lease request is a JSON object')
      const r = request as Record<string, unknown>
      switch (r.op) {
        case 'reserve': {
          const lease = init.book.reserve(init.did, r.slots as number, r.ttlMs as number)
          init.onChange?.()
          return { ok: true, lease: grant(lease) }
        }
        case 'renew':
          if (typeof r.id !== 'string') throw new LeaseError('bad-request', 'renew needs a lease id')
          return { ok: true, lease: grant(init.book.renew(r.id, r.ttlMs as number)) }
        case 'release': {
          if (typeof r.id !== 'string') throw new LeaseError('bad-request', 'release needs a lease id')
          const released = init.book.release(r.id)
          if (released) init.onChange?.()
          return { ok: true, released }
        }
        default:
          throw new LeaseError('bad-request', `unknown lease op ${JSON.stringify(r.op)}`)
      }
    } catch (err) {
      if (err instanceof LeaseError) return { ok: false, reason: err.reason, error: err.message }
      return { ok: false, reason: 'bad-request', error: (err as Error).message }
    }
  }

  async function serve (stream: Stream, _connection: Connection): Promise<void> {
    const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
    try {
      for (let n = 0; n < MAX_REQUESTS_PER_STREAM; n++) {
        // Between requests the stream idles as long as the dialer keeps it.
        let bytes
        try {
          bytes = await lp.read()
        } catch (err: any) {
          if (tooLarge(err)) {
            init.onDropped?.('too-large')
            throw err
          }
          break // the dialer hung up
        }
        let request: unknown
        try {
          request = JSON.parse(decoder.decode(bytes.subarray()))
        } catch {
          init.onDropped?.('malformed')
        }
        await lp.write(encoder.encode(JSON.stringify(answer(request))), { signal: AbortSignal.timeout(TIMEOUT_MS) })
      }
      await stream.close({ signal: AbortSignal.timeout(TIMEOUT_MS) })
    } catch (err: any) {
      stream.abort(err)
    }
  }

  const sessions = new Map<string, Session>()
  /** Streams being opened, so that requests arriving meanwhile share the one stream. */
  const opening = new Map<string, Promise<Session>>()

  async function session (peer: PeerId, signal: AbortSignal): Promise<Session> {
    const key = peer.toString()
    const open = sessions.get(key)
    if (open != null && open.stream.status === 'open' && open.stream.writeStatus === 'writable' && open.stream.remoteWriteStatus === 'writable') return open
    sessions.delete(key)
    let pending = opening.get(key)
    if (pending == null) {
      pending = (async () => {
        const stream = await libp2p.dialProtocol(peer, protocol, { signal })
        const s: Session = { stream, lp: lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES }), tail: Promise.resolve() }
        sessions.set(key, s)
        stream.addEventListener('close', () => { if (sessions.get(key) === s) sessions.delete(key) })
        return s
      })().finally(() => opening.delete(key))
      opening.set(key, pending)
    }
    return await pending
  }

  async function exchange (s: Session, request: LeaseRequest, signal: AbortSignal): Promise<unknown> {
    await s.lp.write(encoder.encode(JSON.stringify(request)), { signal })
    return JSON.parse(decoder.decode((await s.lp.read({ signal })).subarray()))
  }

  return {
    protocol,
    answer,
    async start () {
      await libp2p.handle(protocol, serve, { maxInboundStreams: 64, maxOutboundStreams: 64 })
    },
    async stop () {
      for (const s of sessions.values()) s.stream.abort(new Error('lease service stopped'))
      sessions.clear()
      await libp2p.unhandle(protocol).catch(() => {})
    },
    async prepare (peer, options = {}) {
      await session(peer, options.signal ?? AbortSignal.timeout(TIMEOUT_MS))
    },
    async request (peer, request, options = {}) {
      const signal = options.signal ?? AbortSignal.timeout(TIMEOUT_MS)
      const s = await session(peer, signal)
      const turn = s.tail.then(async () => exchange(s, request, signal))
      s.tail = turn.catch(() => {})
      let reply: any
      try {
        reply = await turn
      } catch (err: any) {
        // A request cut short leaves the stream mid-exchange: the next one starts on a fresh stream.
        if (sessions.get(peer.toString()) === s) sessions.delete(peer.toString())
        s.stream.abort(err)
        throw err
      }
      if (reply === null || typeof reply !== 'object') throw new LeaseError('bad-request', `peer ${peer} sent a malformed lease answer`)
      if (reply.ok !== true) {
        const reason: LeaseErrorReason = ['bad-request', 'oversubscribed', 'unknown-lease'].includes(reply.reason) ? reply.reason : 'bad-request'
        throw new LeaseError(reason, typeof reply.error === 'string' ? reply.error.slice(0, 500) : `peer ${peer} refused the lease`)
      }
      return reply
    }
  }
}
