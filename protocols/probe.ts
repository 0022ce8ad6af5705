// Latency probes that carry Vivaldi coordinates: `/mesh/<network>/probe/1.0.0`, as Serf's probes
// carry them. libp2p's ping says only how long a round trip took; pairing that with the peer's
// coordinate from its descriptor pairs it with a coordinate as old as the peer's last publish, and
// while a mesh converges every coordinate moves, so samples chased stale targets (simulated at 100
// nodes: median estimate error 19% after 5 min, against 14% with the coordinate of the moment).
//
// Wire: a stream the prober keeps open per peer and reuses, one probe after another (a new
// libp2p stream, with its protocol negotiation and close, cost ~1.5 ms CPU for its two ends on this
// class of machine, a ping or a probe about as much again). Each probe is three length-prefixed
// JSON messages:
//   prober → answerer  {c: coordinate}     the prober starts its clock as it writes
//   answerer → prober  {c: coordinate}     the prober's round trip ends here; the answerer's starts
//   prober → answerer  {}                  the answerer's round trip ends here
// so one probe gives both ends a sample (the answerer times its own answer, not a figure the
// prober reports), timed with performance.now(), not libp2p ping's whole milliseconds (a
// whole-ms floor is 10-20% of a 5-10 ms link).
//
// This module only measures: coordinates are checked and used by the caller (`onSample`).
import { lpStream } from '@libp2p/utils'
import { tooLarge } from './too-large.ts'
import type { Coordinate } from '../registry/vivaldi.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'

/** A coordinate is ~300 bytes of JSON; anything much larger is not one. */
const MAX_MESSAGE_BYTES = 2048
const TIMEOUT_MS = 5_000
/** Probes one stream may carry before the answerer hangs up (a bound on what one peer may ask). */
const MAX_PROBES_PER_STREAM = 100_000

export interface ProbeSample {
  peer: PeerId
  rttMs: number
  /** The peer's coordinate as it stated it, unchecked. */
  coordinate: unknown
}

export interface ProbeInit {
  network: string
  /** This node's current coordinate, sent with every probe and answer. */
  coordinate: () => Coordinate
  /** A round trip the answerer timed (the prober's comes back from `probe`). */
  onSample?: (sample: ProbeSample) => void
  onDropped?: (reason: string) => void
}

export interface Probe {
  readonly protocol: string
  start: () => Promise<void>
  stop: () => Promise<void>
  /** One probe: the round trip (ms) and the coordinate the peer answered with. One at a time per peer. */
  probe: (peer: PeerId, options?: { signal?: AbortSignal }) => Promise<ProbeSample>
}

export function probeProtocol (network: string): string {
  return `/mesh/${network}/probe/1.0.0`
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

function encode (value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value))
}

function coordinateIn (bytes: Uint8Array): unknown {
  const msg = JSON.parse(decoder.decode(bytes))
  return msg !== null && typeof msg === 'object' ? msg.c : undefined
}

interface Session { stream: Stream, lp: ReturnType<typeof lpStream> }

export function probeService (components: { libp2p: Libp2p }, init: ProbeInit): Probe {
  const { libp2p } = components
  const protocol = probeProtocol(init.network)
  /** The prober's open stream to each peer. */
  const sessions = new Map<string, Session>()

  async function serve (stream: Stream, connection: Connection): Promise<void> {
    const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
    try {
      for (let n = 0; n < MAX_PROBES_PER_STREAM; n++) {
        // Between probes the stream idles as long as the connection lives; within one, each step has a deadline.
        let first
        try {
          first = await lp.read()
        } catch (err: any) {
          if (tooLarge(err)) throw err
          break // the prober hung up
        }
        let theirs: unknown
        try {
          theirs = coordinateIn(first.subarray())
        } catch {
          init.onDropped?.('probe-malformed')
          break
        }
        const signal = AbortSignal.timeout(TIMEOUT_MS)
        await lp.write(encode({ c: init.coordinate() }), { signal })
        const sent = performance.now()
        await lp.read({ signal })
        init.onSample?.({ peer: connection.remotePeer, rttMs: performance.now() - sent, coordinate: theirs })
      }
      await stream.close().catch(() => {})
    } catch (err: any) {
      if (tooLarge(err)) init.onDropped?.('probe-too-large')
      stream.abort(err)
    }
  }

  async function session (peer: PeerId, signal: AbortSignal): Promise<Session> {
    const key = peer.toString()
    const open = sessions.get(key)
    if (open != null && open.stream.status === 'open' && open.stream.writeStatus === 'writable') return open
    sessions.delete(key)
    const stream = await libp2p.dialProtocol(peer, protocol, { signal })
    const s = { stream, lp: lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES }) }
    sessions.set(key, s)
    stream.addEventListener('close', () => { if (sessions.get(key) === s) sessions.delete(key) })
    return s
  }

  return {
    protocol,
    async start () {
      await libp2p.handle(protocol, serve, { maxInboundStreams: 4, maxOutboundStreams: 4 })
    },
    async stop () {
      for (const s of sessions.values()) s.stream.abort(new Error('probe service stopped'))
      sessions.clear()
      await libp2p.unhandle(protocol).catch(() => {})
    },
    async probe (peer, options = {}) {
      const signal = options.signal ?? AbortSignal.timeout(TIMEOUT_MS)
      const s = await session(peer, signal)
      try {
        await s.lp.write(encode({ c: init.coordinate() }), { signal })
        const sent = performance.now()
        const answer = (await s.lp.read({ signal })).subarray()
        const rttMs = performance.now() - sent
        await s.lp.write(encode({}), { signal })
        let coordinate: unknown
        try {
          coordinate = coordinateIn(answer)
        } catch {
          init.onDropped?.('probe-malformed')
        }
        return { peer, rttMs, coordinate }
      } catch (err: any) {
        // A probe cut short leaves the stream mid-exchange: start the next one on a fresh stream.
        if (sessions.get(peer.toString()) === s) sessions.delete(peer.toString())
        s.stream.abort(err)
        throw err
      }
    }
  }
}
