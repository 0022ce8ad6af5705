// The membership handshake of a community network. Noise already proves which key is on the other
// end; this proves that key belongs. On every new peer each side sends what it presents (its
// membership credential chain) over `<prefix>/membership/1.0.0` and checks what the other sent.
// Until a peer has passed, every gated protocol stream to or from it (DHT, gossip, bitswap, the
// Mesh protocols) waits at a middleware gate; a peer that fails, or says nothing in time, gets no
// stream at all and is handed to `onRejected` (the node hangs up and keeps it out).
//
// Wire: the dialer writes one length-prefixed presentation; the listener answers one
// length-prefixed verdict (`ok` or the reason it refused), so a refused node can say why.
// Where the key alone decides (`settleEarly`: roots, open networks, revoked keys) the verdict is
// given on connect, and a node that has nothing to present and is admitted by its key sends nothing.
// Neither side waits for the other: each presents on its own stream as soon as the peer connects.
import { lpStream } from '@libp2p/utils'
import { tooLarge } from './too-large.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

export type Verdict =
  | { ok: true, did: string, role: string, credentialId?: string, expiresAt?: number }
  | { ok: false, reason: string }

export interface MembershipInit {
  /** `/mesh/<network>`: the handshake runs on `<prefix>/membership/1.0.0`. */
  protocolPrefix: string
  /** What this node presents to every peer (its encoded credential chain). */
  presentation: () => Uint8Array
  /** Checks what a peer presented, against the key Noise authenticated. */
  verify: (remote: PeerId, presentation: Uint8Array) => Promise<Verdict>
  /**
   * A verdict the key alone decides (a root; any unrevoked peer of an open network), given on
   * connect so that no stream waits for the presentation; undefined when the presentation matters.
   * What the peer presents later can still raise its role.
   */
  settleEarly?: (remote: PeerId) => Verdict | undefined
  /** Protocols no unverified peer may use, either way. */
  gated: string[]
  /** How long a peer has to present before it is refused. Default 10 s. */
  timeoutMs?: number
  /** Presentations are small (a JWT chain); anything bigger is hostile. Default 64 KiB. */
  maxBytes?: number
  onAccepted?: (peer: PeerId, verdict: Verdict & { ok: true }) => void
  onRejected?: (peer: PeerId, reason: string) => void
  /** The reason a remote refused us, for the log. */
  onRefusedByRemote?: (peer: PeerId, reason: string) => void
}

export interface Membership {
  start: () => Promise<void>
  stop: () => Promise<void>
  /** The verdict on a connected peer, waiting for its handshake if it is still running. */
  verdict: (peer: PeerId) => Promise<Verdict>
  /** Peers that passed, by peer ID string. */
  accepted: () => Map<string, Verdict & { ok: true }>
  /** Forgets a verdict (after a revocation), so the peer is checked again if it reconnects. */
  forget: (peer: PeerId) => void
}

interface Pending {
  promise: Promise<Verdict>
  settle: (v: Verdict) => void
  settled?: Verdict
  timer: ReturnType<typeof setTimeout>
}

export function membership (components: { libp2p: Libp2p }, init: MembershipInit): Membership {
  const { libp2p } = components
  const protocol = `${init.protocolPrefix}/membership/1.0.0`
  const timeoutMs = init.timeoutMs ?? 10_000
  const maxBytes = init.maxBytes ?? 64 * 1024
  const pending = new Map<string, Pending>()
  const accepted = new Map<string, Verdict & { ok: true }>()
  let running = false

  function entry (peer: PeerId): Pending {
    const key = peer.toString()
    let p = pending.get(key)
    if (p != null) return p
    let settle!: (v: Verdict) => void
    const promise = new Promise<Verdict>(resolve => { settle = resolve })
    const created: Pending = {
      promise,
      settle: (v) => {
        if (created.settled != null) {
          // settled early on the key alone: a valid presentation may still raise the role
          if (created.settled.ok && v.ok && running && accepted.has(key)) accepted.set(key, v)
          return
        }
        created.settled = v
        clearTimeout(created.timer)
        settle(v)
        if (!running) return
        if (v.ok) {
          accepted.set(key, v)
          init.onAccepted?.(peer, v)
        } else {
          init.onRejected?.(peer, v.reason)
        }
      },
      timer: setTimeout(() => { created.settle({ ok: false, reason: 'no-presentation' }) }, timeoutMs)
    }
    created.timer.unref?.()
    pending.set(key, created)
    return created
  }

  async function handle (stream: Stream, connection: Connection): Promise<void> {
    const lp = lpStream(stream, { maxDataLength: maxBytes })
    const e = entry(connection.remotePeer)
    let bytes: Uint8Array
    try {
      bytes = (await lp.read({ signal: AbortSignal.timeout(timeoutMs) })).subarray()
    } catch (err: any) {
      if (tooLarge(err)) {
        e.settle({ ok: false, reason: 'too-large' })
      }
      // Otherwise the peer hung up or went quiet mid-handshake: no verdict on that (a peer we
      // refuse hangs up on us too); the timer decides if it stays connected and silent.
      stream.abort(new Error('membership presentation not received'))
      return
    }
    let verdict: Verdict
    try {
      verdict = await init.verify(connection.remotePeer, bytes)
    } catch {
      verdict = { ok: false, reason: 'malformed' }
    }
    e.settle(verdict)
    try {
      await lp.write(new TextEncoder().encode(verdict.ok ? 'ok' : verdict.reason), { signal: AbortSignal.timeout(timeoutMs) })
      await stream.close()
    } catch {
      stream.abort(new Error('membership answer not delivered'))
    }
  }

  async function present (peer: PeerId): Promise<void> {
    let stream: Stream | undefined
    try {
      const signal = AbortSignal.timeout(timeoutMs)
      // never a new dial: a peer that hung up meanwhile stays gone
      if (libp2p.getConnections(peer).length === 0) return
      // nothing to present, and our key alone admits us (a root, an open network): the peer
      // settles us on connect, so spare the stream
      const presentation = init.presentation()
      if (presentation.length === 0 && init.settleEarly?.(libp2p.peerId)?.ok === true) return
      stream = await libp2p.dialProtocol(peer, protocol, { signal })
      const lp = lpStream(stream, { maxDataLength: 1024 })
      await lp.write(presentation, { signal })
      const answer = new TextDecoder().decode((await lp.read({ signal })).subarray())
      if (answer !== 'ok') init.onRefusedByRemote?.(peer, answer)
      await stream.close()
    } catch {
      // The peer hung up or never answered: its own timeout decides about us, ours about it.
      stream?.abort(new Error('membership handshake failed'))
    }
  }

  const onConnect = (evt: CustomEvent<PeerId>): void => {
    if (!running) return
    const e = entry(evt.detail)
    const early = init.settleEarly?.(evt.detail)
    if (early != null) e.settle(early)
    void present(evt.detail)
  }
  const onDisconnect = (evt: CustomEvent<PeerId>): void => {
    const key = evt.detail.toString()
    const p = pending.get(key)
    if (p != null) clearTimeout(p.timer)
    pending.delete(key)
    accepted.delete(key)
  }

  // A stream waits here until its peer's verdict is in; then it goes on, or the throw makes libp2p
  // abort it (and fail the dial, for our own outbound streams).
  const gate = async (stream: Stream, connection: Connection, next: (s: Stream, c: Connection) => void): Promise<void> => {
    const verdict = await entry(connection.remotePeer).promise
    if (!verdict.ok) throw new Error(`peer is not a member of this network (${verdict.reason})`)
    next(stream, connection)
  }

  return {
    async start () {
      running = true
      copyMiddlewareChains(libp2p)
      await libp2p.handle(protocol, handle, { maxInboundStreams: 2, maxOutboundStreams: 2 })
      for (const p of init.gated) libp2p.use(p, gate)
      libp2p.addEventListener('peer:connect', onConnect)
      libp2p.addEventListener('peer:disconnect', onDisconnect)
      // Peers connected before we started (none, in the node's order of things, but be exact).
      for (const peer of libp2p.getPeers()) onConnect(new CustomEvent('peer:connect', { detail: peer }))
    },
    async stop () {
      running = false
      libp2p.removeEventListener('peer:connect', onConnect)
      libp2p.removeEventListener('peer:disconnect', onDisconnect)
      for (const p of init.gated) libp2p.unuse(p)
      await libp2p.unhandle(protocol).catch(() => {})
      for (const p of pending.values()) {
        clearTimeout(p.timer)
        p.settle({ ok: false, reason: 'stopping' })
      }
      pending.clear()
      accepted.clear()
    },
    verdict: async (peer) => entry(peer).promise,
    accepted: () => accepted,
    forget: (peer) => {
      const key = peer.toString()
      const p = pending.get(key)
      if (p != null) clearTimeout(p.timer)
      pending.delete(key)
      accepted.delete(key)
    }
  }
}

/**
 * libp2p 3.3.11 appends each incoming stream's handler to the very array the registrar keeps for a
 * protocol's middleware, so with any middleware registered the chain grows by one handler per
 * stream and handlers run again on spent streams (DHT queries then hang). Until that is fixed
 * upstream, the registrar hands out copies.
 */
function copyMiddlewareChains (libp2p: Libp2p): void {
  const registrar = (libp2p as any).components?.registrar
  if (registrar == null || typeof registrar.getMiddleware !== 'function' || registrar.meshCopiesChains === true) return
  const original = registrar.getMiddleware.bind(registrar)
  registrar.getMiddleware = (protocol: string) => [...original(protocol)]
  registrar.meshCopiesChains = true
}
