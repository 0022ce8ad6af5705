// Helia's routing over this node's libp2p (the DHT), with one change: bitswap asks the DHT for a
// block's providers only when its connected peers have not sent the block soon enough.
//
// Why: bitswap (@helia/bitswap 4) starts a DHT provider lookup for every block it wants, next to
// sending its want list to every connected peer, and cancels the lookup when the block arrives.
// Reading a 64 MB module wants 256 blocks at once, so 256 lookups ran against the very peer that
// was streaming the blocks, and their queries competed with the transfer itself. Kubo's bitswap
// broadcasts to connected peers first and searches for providers after a delay (boxo's
// ProviderSearchDelay, 1 s); this does the same for Helia.
//
// A block no connected peer holds is still found through the DHT, `PROVIDER_SEARCH_DELAY_MS`
// later. At most `MAX_LOOKUPS` deferred lookups run at once, so a transfer slower than the delay
// does not start one lookup per outstanding block either; a lookup whose block arrives while it
// waits is dropped (bitswap aborts it). Everything but `findProviders` goes straight to libp2p.
import { setTimeout as delay } from 'node:timers/promises'
import { peerIdFromCID } from '@libp2p/peer-id'
import type { Peer, Provider, Router, RoutingOptions } from '@helia/interface'
import type { AbortOptions, PeerInfo } from '@libp2p/interface'
import type { Libp2p } from 'libp2p'
import type { CID } from 'multiformats/cid'

export const PROVIDER_SEARCH_DELAY_MS = 1000
const MAX_LOOKUPS = 4
const ROUTER = 'libp2p-router'

/** A Helia router over `libp2p()` (called once Helia has started it). */
export function meshBlockRouting (libp2p: () => Libp2p, delayMs = PROVIDER_SEARCH_DELAY_MS): Router {
  const gate = new Gate(MAX_LOOKUPS)
  return {
    // withLibp2pLight adds its own libp2p router unless one of this name is already there.
    name: ROUTER,

    async * findProviders (cid: CID, options: RoutingOptions = {}): AsyncGenerator<Provider> {
      await delay(delayMs, undefined, { signal: options.signal, ref: false })
      await gate.enter(options.signal)
      try {
        for await (const info of libp2p().contentRouting.findProviders(cid, options)) {
          yield { ...toPeer(info), fallback: false } satisfies Provider
        }
      } finally {
        gate.leave()
      }
    },

    async provide (cid: CID, options?: AbortOptions) {
      await libp2p().contentRouting.provide(cid, options)
    },

    async cancelReprovide (cid: CID, options?: AbortOptions) {
      await libp2p().contentRouting.cancelReprovide(cid, options)
    },

    async put (key: Uint8Array, value: Uint8Array, options?: AbortOptions) {
      await libp2p().contentRouting.put(key, value, options)
    },

    async get (key: Uint8Array, options?: AbortOptions) {
      return new Uint8Array(await libp2p().contentRouting.get(key, options))
    },

    async findPeer (peer: CID, options?: AbortOptions) {
      return toPeer(await libp2p().peerRouting.findPeer(peerIdFromCID(peer), options))
    },

    async * getClosestPeers (key: Uint8Array, options?: AbortOptions) {
      for await (const info of libp2p().peerRouting.getClosestPeers(key, options)) yield toPeer(info)
    }
  }
}

function toPeer (info: PeerInfo): Peer {
  return { id: info.id.toCID(), multiaddrs: info.multiaddrs, router: ROUTER }
}

/** At most `limit` holders at once; waiters leave the line when their signal aborts. */
class Gate {
  private inside = 0
  private readonly line: Array<() => void> = []
  private readonly limit: number
  constructor (limit: number) {
    this.limit = limit
  }

  async enter (signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted()
    if (this.inside < this.limit) {
      this.inside++
      return
    }
    await new Promise<void>((resolve, reject) => {
      const admit = (): void => {
        signal?.removeEventListener('abort', onAbort)
        this.inside++
        resolve()
      }
      const onAbort = (): void => {
        this.line.splice(this.line.indexOf(admit), 1)
        reject(signal?.reason)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.line.push(admit)
    })
  }

  leave (): void {
    this.inside--
    this.line.shift()?.()
  }
}
