// Capacity reservation on a remote node: `/mesh/<network>/lease/1.0.0`. An allocator that picked a
// node from its (possibly stale) descriptor asks the node itself for the slots; the node answers
// from its own lease book, one request at a time per book, so two allocators racing for its last
// slot cannot both win.
//
// Wire: the dialer writes one length-prefixed JSON request, the listener one JSON answer:
//   {op:'reserve', slots, ttlMs} | {op:'renew', id, ttlMs} | {op:'release', id}
//   → {ok:true, lease:{id, slots, expiresAt}} | {ok:true, released:boolean} | {ok:false, reason, error}
import { lpStream } from '@libp2p/utils'
import { LeaseError } from '../registry/allocation.ts'
import type { Lease, LeaseBook, LeaseErrorReason } from '../registry/allocation.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

const MAX_MESSAGE_BYTES = 4096

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
}

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
    const signal = AbortSignal.timeout(10_000)
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
      let request: unknown
      try {
        request = JSON.parse(new TextDecoder().decode((await lp.read({ signal })).subarray()))
      } catch (err: any) {
        init.onDropped?.(err?.name === 'InvalidDataLengthError' ? 'too-large' : 'malformed')
        request = undefined
      }
      await lp.write(new TextEncoder().encode(JSON.stringify(answer(request))), { signal })
      await stream.close({ signal })
    } catch (err: any) {
      stream.abort(err)
    }
  }

  return {
    protocol,
    answer,
    async start () {
      await libp2p.handle(protocol, serve, { maxInboundStreams: 64, maxOutboundStreams: 64 })
    },
    async stop () {
      await libp2p.unhandle(protocol).catch(() => {})
    },
    async request (peer, request, options = {}) {
      const signal = options.signal ?? AbortSignal.timeout(10_000)
      const stream = await libp2p.dialProtocol(peer, protocol, { signal })
      let reply: any
      try {
        const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
        await lp.write(new TextEncoder().encode(JSON.stringify(request)), { signal })
        reply = JSON.parse(new TextDecoder().decode((await lp.read({ signal })).subarray()))
        await stream.close({ signal }).catch(() => {})
      } catch (err: any) {
        stream.abort(err)
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
