// Spreading revocations through a community. A revocation is a signed token; every member keeps
// all it has seen. When a peer passes the membership handshake each side pushes its whole list
// (so a member that was offline catches up), and a member that learns something new pushes just
// that to its other members (a flood, ended by each node's "already had it").
//
// Wire: `<prefix>/revocations/1.0.0`, the sender writes one length-prefixed JSON array of tokens.
import { lpStream } from '@libp2p/utils'
import { tooLarge } from './too-large.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

export interface RevocationSyncInit {
  protocolPrefix: string
  /** Every token this node holds. */
  all: () => string[]
  /** Verifies and stores tokens; resolves with the new ones once stored. */
  receive: (tokens: unknown[], from: PeerId) => Promise<string[]>
  /** Peers to tell about something new (the accepted members). */
  peers: () => PeerId[]
  /** Bound on one message. Default 1 MiB (over a thousand revocations). */
  maxBytes?: number
  onDropped?: (from: PeerId, reason: string) => void
}

export interface RevocationSync {
  start: () => Promise<void>
  stop: () => Promise<void>
  /** Sends tokens to one peer; resolves when written (errors are the caller's to ignore). */
  push: (peer: PeerId, tokens: string[]) => Promise<void>
  /** Sends tokens to every member but `except`. */
  broadcast: (tokens: string[], except?: PeerId) => void
}

export function revocationSync (components: { libp2p: Libp2p }, init: RevocationSyncInit): RevocationSync {
  const { libp2p } = components
  const protocol = `${init.protocolPrefix}/revocations/1.0.0`
  const maxBytes = init.maxBytes ?? 1024 * 1024

  async function handle (stream: Stream, connection: Connection): Promise<void> {
    const from = connection.remotePeer
    let tokens: unknown
    try {
      const lp = lpStream(stream, { maxDataLength: maxBytes })
      tokens = JSON.parse(new TextDecoder().decode((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray()))
      await stream.close()
    } catch (err: any) {
      stream.abort(new Error('bad revocation message'))
      init.onDropped?.(from, tooLarge(err) ? 'too-large' : 'malformed')
      return
    }
    if (!Array.isArray(tokens)) {
      init.onDropped?.(from, 'malformed')
      return
    }
    const fresh = await init.receive(tokens, from)
    if (fresh.length > 0) self.broadcast(fresh, from)
  }

  const self: RevocationSync = {
    async start () {
      await libp2p.handle(protocol, handle, { maxInboundStreams: 4, maxOutboundStreams: 4 })
    },
    async stop () {
      await libp2p.unhandle(protocol).catch(() => {})
    },
    async push (peer, tokens) {
      const signal = AbortSignal.timeout(10_000)
      const stream = await libp2p.dialProtocol(peer, protocol, { signal })
      try {
        await lpStream(stream, { maxDataLength: maxBytes }).write(new TextEncoder().encode(JSON.stringify(tokens)), { signal })
        await stream.close({ signal })
      } catch (err: any) {
        stream.abort(err)
        throw err
      }
    },
    broadcast (tokens, except) {
      for (const peer of init.peers()) {
        if (except != null && peer.equals(except)) continue
        void self.push(peer, tokens).catch(() => {})
      }
    }
  }
  return self
}
