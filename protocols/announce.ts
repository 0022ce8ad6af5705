// How Edge-Node Descriptors travel. Two paths, because gossip alone loses whatever was said before
// a node joined:
//
// - push: signed envelopes on the gossipsub topic `/mesh/<network>/descriptors`. Every message is
//   size-checked and handed to `receive` inside gossipsub's validator, so an invalid one is neither
//   delivered nor forwarded, and its sender's score drops.
// - pull: `/mesh/<network>/descriptors/1.0.0`. The dialer writes one length-prefixed summary of
//   what it holds (JSON `[[id, seq], …]`; `[]` asks for everything), the listener a length-prefixed
//   count, then that many length-prefixed envelopes (everything live it holds that the dialer
//   lacks or holds an older seq of), and closes. A node asks each peer it meets, so it learns the
//   whole registry within a round trip, and a pull between peers in sync moves a summary, not the
//   registry (at 50 nodes a new connection cost ~125 kB of envelopes to encrypt and decode).
//   The summary also tells the listener whether the dialer holds anything newer (`onNewer`), so a
//   caller that pulls back then has a push-pull exchange, as in Serf's anti-entropy.
//
// This module only moves bytes: verifying and storing envelopes is the caller's (`receive`).
import { lpStream } from '@libp2p/utils'
import { tooLarge } from './too-large.ts'
import type { GossipSub } from '@libp2p/gossipsub'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

/**
 * How long receiving a pull answer may hold the event loop before it yields. At 100 nodes in one
 * process, pulls of republished descriptors held it for 400-600 ms at a time, and allocations
 * and pings waiting behind them were that late.
 */
const PULL_SLICE_MS = 5

export type Verdict = 'accept' | 'ignore' | 'reject'

export interface AnnounceInit {
  network: string
  /** Verifies and stores one envelope. 'accept' = new to us; 'ignore' = valid but not newer; 'reject' = invalid. */
  receive: (bytes: Uint8Array, from: PeerId, via: 'gossip' | 'pull') => Promise<Verdict>
  /** Every live envelope this node holds, its own included, with its node's id and seq. */
  all: () => Array<{ id: string, seq: number, bytes: Uint8Array }>
  /** What this node holds (id → seq), sent with a pull so the peer skips what we have. */
  have?: () => Array<[string, number]>
  /** Bound on one envelope. */
  maxBytes: number
  /** Bound on how many envelopes one pull answer may carry. Default 10 000. */
  maxEntries?: number
  /** A message refused before `receive` saw it (too large, malformed framing, unsigned). */
  onDropped?: (reason: string) => void
  /** A peer that pulled from us holds an envelope newer than ours, or one we lack. */
  onNewer?: (peer: PeerId) => void
}

export interface Announce {
  readonly topic: string
  readonly protocol: string
  start: () => Promise<void>
  stop: () => Promise<void>
  /**
   * Gossips one envelope; resolves even when no peer listens yet (the pull path covers that), with
   * how many peers it was sent to (0 also when gossip is off or the publish failed).
   */
  publish: (bytes: Uint8Array) => Promise<number>
  /**
   * Asks one peer for every live descriptor it holds that we lack; feeds each to `receive`.
   * Returns how many arrived. With `onlyDiff`, a registry too large for the summary is not pulled
   * at all (the answer would be the whole registry): for periodic syncs, where gossip is the rule.
   */
  pull: (peer: PeerId, options?: { signal?: AbortSignal, onlyDiff?: boolean }) => Promise<{ received: number, accepted: number }>
}

export function descriptorTopic (network: string): string {
  return `/mesh/${network}/descriptors`
}

export function descriptorProtocol (network: string): string {
  return `/mesh/${network}/descriptors/1.0.0`
}

export function announce (components: { libp2p: Libp2p<{ pubsub?: GossipSub }> }, init: AnnounceInit): Announce {
  const { libp2p } = components
  const topic = descriptorTopic(init.network)
  const protocol = descriptorProtocol(init.network)
  const maxEntries = init.maxEntries ?? 10_000
  const pubsub = libp2p.services.pubsub
  const encoder = new TextEncoder()

  async function validate (from: PeerId, msg: { type: string, data: Uint8Array }): Promise<Verdict> {
    if (msg.type !== 'signed') {
      init.onDropped?.('unsigned')
      return 'reject'
    }
    if (msg.data.length > init.maxBytes) {
      init.onDropped?.('too-large')
      return 'reject'
    }
    return await init.receive(msg.data, from, 'gossip').catch(() => 'reject' as const)
  }

  /** The dialer's summary; anything unreadable counts as "send everything". */
  function parseHave (bytes: Uint8Array): Map<string, number> {
    const have = new Map<string, number>()
    try {
      const list = JSON.parse(new TextDecoder().decode(bytes))
      if (!Array.isArray(list)) throw new Error('not a list')
      for (const e of list.slice(0, maxEntries)) {
        if (Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'number') have.set(e[0], e[1])
      }
    } catch {
      init.onDropped?.('malformed')
      have.clear()
    }
    return have
  }

  /** What we hold, or undefined when it does not fit in one message. */
  function summary (): Uint8Array | undefined {
    const bytes = encoder.encode(JSON.stringify((init.have?.() ?? []).slice(0, maxEntries)))
    return bytes.length <= init.maxBytes ? bytes : undefined
  }

  async function serve (stream: Stream, connection: Connection): Promise<void> {
    try {
      const signal = AbortSignal.timeout(30_000)
      const lp = lpStream(stream, { maxDataLength: init.maxBytes })
      const have = parseHave((await lp.read({ signal })).subarray())
      const all = init.all()
      const entries = all.filter(e => !((have.get(e.id) ?? -1) >= e.seq)).slice(0, maxEntries).map(e => e.bytes)
      if (init.onNewer != null && have.size > 0) {
        const ours = new Map(all.map(e => [e.id, e.seq]))
        for (const [id, seq] of have) {
          if (seq > (ours.get(id) ?? -1)) {
            init.onNewer(connection.remotePeer)
            break
          }
        }
      }
      // One write, not one per envelope: each write is a muxer frame, and on a slow link (or a
      // latency-injecting transport that delays frames one after another) frames cost round trips.
      await lp.writeV([encoder.encode(String(entries.length)), ...entries], { signal })
      await stream.close({ signal })
    } catch (err: any) {
      stream.abort(err)
    }
  }

  return {
    topic,
    protocol,
    async start () {
      await libp2p.handle(protocol, serve, { maxInboundStreams: 32, maxOutboundStreams: 32 })
      if (pubsub != null) {
        pubsub.topicValidators.set(topic, validate as any)
        pubsub.subscribe(topic)
      }
    },
    async stop () {
      if (pubsub != null) {
        pubsub.unsubscribe(topic)
        pubsub.topicValidators.delete(topic)
      }
      await libp2p.unhandle(protocol).catch(() => {})
    },
    async publish (bytes) {
      if (pubsub == null) return 0
      const result = await pubsub.publish(topic, bytes).catch(() => undefined)
      return result?.recipients.length ?? 0
    },
    async pull (peer, options = {}) {
      const have = summary()
      if (have == null && options.onlyDiff === true) return { received: 0, accepted: 0 }
      const signal = options.signal ?? AbortSignal.timeout(15_000)
      const stream = await libp2p.dialProtocol(peer, protocol, { signal })
      let received = 0
      let accepted = 0
      let slice = performance.now()
      try {
        const lp = lpStream(stream, { maxDataLength: init.maxBytes })
        await lp.write(have ?? encoder.encode('[]'), { signal })
        const header = new TextDecoder().decode((await lp.read({ signal })).subarray())
        const count = /^\d{1,6}$/.test(header) ? Number(header) : Number.NaN
        if (!(count <= maxEntries)) {
          init.onDropped?.('malformed')
          throw new Error(`peer ${peer} sent a bad descriptor count`)
        }
        for (let i = 0; i < count; i++) {
          let bytes: Uint8Array
          try {
            bytes = (await lp.read({ signal })).subarray()
          } catch (err: any) {
            if (tooLarge(err)) init.onDropped?.('too-large')
            throw err
          }
          received++
          if (await init.receive(bytes, peer, 'pull') === 'accept') accepted++
          // An answer arrives faster than it verifies (each new envelope is a signature check):
          // let timers and other streams in between, or a large answer stalls the whole node.
          if (performance.now() - slice > PULL_SLICE_MS) {
            await new Promise(resolve => setImmediate(resolve))
            slice = performance.now()
          }
        }
        await stream.close({ signal }).catch(() => {})
      } catch (err: any) {
        stream.abort(err)
        throw err
      }
      return { received, accepted }
    }
  }
}
