// Peers whose connection broke are dialled again, with backoff, so that the two sides of a
// partition find each other within seconds of the heal. Without it a broken link came back only
// when something happened to dial across (a lookup, an allocation, the keeper's one extra dial a
// tick for nodes under 2 × minPeers, the nearness check every 15 s), and a healed mesh with
// nothing to do could stay split for tens of seconds.
//
// Broken means closed with an error (a reset, a failed keep-alive, a transport error), not closed
// on purpose: a peer that hung up (stopping, pruning, refusing us) closes gracefully and is left
// alone. libp2p's `local` flag on the close event does not tell the ends apart (a reset from the
// remote shows as a local abort of the connection), so the error alone decides.
//
// The node retries one broken peer at a time (the one tried longest ago), RETRY_FIRST_MS after a
// break, then at doubling intervals up to RETRY_MAX_MS (jittered, so a mesh's retries do not fall
// together), and keeps that pace after a success too: after a heal a node's links come back one
// at a time. A peer is forgotten after FORGET_AFTER_MS, or once connected by any means. In a mesh
// of N nodes split in two, some retry lands within about RETRY_MAX_MS / N of the heal, and its
// sync and gossip relay carry the rest (the 100-node simulation, a split with no link left
// across: first data across 0.2-0.8 s after the heal, every node converged 0.7-1.1 s after it).
// Tried and dropped: every broken peer on its own schedule (~7,000 extra refused dials over a 20 s
// split, then ~10 handshakes and document syncs per node at once at the heal: convergence 4.2 s),
// and stopping at the first link back (a node whose first success was a same-side peer stopped
// retrying the other side: 3.5-3.9 s).
import type { Connection, Libp2p, PeerId } from '@libp2p/interface'

const RETRY_FIRST_MS = 1_000
const RETRY_MAX_MS = 8_000
const FORGET_AFTER_MS = 10 * 60_000
const TICK_MS = 250
/** Broken peers remembered at most (the oldest go first). */
const MAX_PEERS = 16
const DIAL_TIMEOUT_MS = 5_000

export interface ReconnectStats {
  /** Peers waiting to be dialled again. */
  pending: number
  /** Connections seen breaking, retry dials made, and the ones that reconnected. */
  broken: number
  dials: number
  reconnected: number
}

export interface Reconnector {
  start: () => void
  stop: () => void
  stats: () => ReconnectStats
}

interface Broken { peer: PeerId, since: number, tried: number }

/** `belongs` says whether a peer is worth a retry (Mesh: it speaks this network's DHT protocol). */
export function reconnector (libp2p: Libp2p, belongs: (peer: PeerId) => Promise<boolean>): Reconnector {
  const broken = new Map<string, Broken>()
  const stats = { broken: 0, dials: 0, reconnected: 0 }
  let timer: ReturnType<typeof setInterval> | undefined
  let stopped = true
  let dialling = false
  let interval = RETRY_FIRST_MS
  let nextAt = 0

  const jitter = (ms: number): number => ms * (0.5 + Math.random())

  function watch (evt: CustomEvent<Connection>): void {
    const conn = evt.detail
    conn.addEventListener('close', (e) => {
      if (stopped || e.error == null) return
      void belongs(conn.remotePeer).then((yes) => {
        const key = conn.remotePeer.toString()
        if (!yes || stopped || broken.has(key)) return
        stats.broken++
        if (broken.size === 0) {
          interval = RETRY_FIRST_MS
          nextAt = Date.now() + jitter(interval)
        }
        broken.set(key, { peer: conn.remotePeer, since: Date.now(), tried: 0 })
        for (const k of broken.keys()) if (broken.size > MAX_PEERS) broken.delete(k)
      }, () => {})
    }, { once: true })
  }

  function tick (): void {
    const now = Date.now()
    for (const [key, b] of broken) {
      if (libp2p.getConnections(b.peer).length > 0 || now - b.since > FORGET_AFTER_MS) broken.delete(key)
    }
    if (dialling || broken.size === 0 || now < nextAt) return
    const b = [...broken.values()].sort((x, y) => x.tried - y.tried)[0]
    b.tried = now
    dialling = true
    stats.dials++
    libp2p.dial(b.peer, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) }).then(() => {
      if (broken.delete(b.peer.toString())) stats.reconnected++
      nextAt = Date.now() + jitter(interval)
    }, () => {
      interval = Math.min(RETRY_MAX_MS, interval * 2)
      nextAt = Date.now() + jitter(interval)
    }).finally(() => { dialling = false })
  }

  return {
    start () {
      if (!stopped) return
      stopped = false
      libp2p.addEventListener('connection:open', watch)
      for (const conn of libp2p.getConnections()) watch(new CustomEvent('connection:open', { detail: conn }))
      timer = setInterval(tick, TICK_MS)
      timer.unref()
    },
    stop () {
      stopped = true
      libp2p.removeEventListener('connection:open', watch)
      if (timer != null) clearInterval(timer)
      broken.clear()
    },
    stats: () => ({ pending: broken.size, ...stats })
  }
}
