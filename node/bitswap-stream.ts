// Bitswap as Mesh runs it: @helia/bitswap 4, with three changes that move a module's bytes sooner
// and one fix. Wire format, protocol ID and want-list semantics are stock, so stock peers interoperate.
//
// 1. The holder streams. Stock bitswap answers a want list by reading every wanted block, then
//    encoding them all (each block twice: once to size the message, once for real) and writing the
//    messages in one synchronous run: a reader asking for the 56 remaining blocks of a 64 MB module
//    got its first byte ~200 ms later, the holder's event loop busy all that time, and the bytes
//    reached the socket only after the last one was encoded. Here each wanted block goes out as a
//    one-block message as soon as it is read, framed by hand around the block's own bytes (no copy),
//    and the holder yields to its event loop between blocks so Noise and TCP send it while the next
//    is read. Blocks the peer asked only about (WANT_HAVE), blocks this node lacks (DONT_HAVE) and
//    everything else still go through bitswap's own code, after the streamed blocks.
// 2. The reader hashes once. Bitswap hashes every block it receives to learn its CID and matches it
//    to a want by that hash; Helia then hashes the same bytes again to verify them. Helia's sha2-256
//    here first looks the bytes up among those bitswap has just hashed (same object, kept weakly),
//    so each block is hashed once and still verified: an entry exists only for bytes whose digest
//    bitswap computed itself.
// 3. One stream per peer. Stock bitswap opens a new stream for every message it sends (a want
//    list, a cancel, a batch of blocks), and libp2p negotiates each new stream's protocol in a
//    round trip of its own before the message goes out: two extra round trips on the way to any
//    block, one for the want and one for the answer. Here this node's bitswap messages to a peer
//    share one outgoing stream, kept while it is used and closed after IDLE_CLOSE_MS without a
//    message (a stock receiver waits 10 s for the next message on a stream; messages are whole
//    length-prefixed writes, so concurrent senders never interleave inside one). Its flow-control
//    window also stays grown between transfers.
// 4. Cancels go out. When a wanted block arrives, Helia 7's want list marks the want cancelled and
//    then, in the loop meant to send cancels, skips every cancelled entry (`if (sentPreviously ||
//    entry.cancel) continue`) and forgets it: no peer ever hears of a cancel. A peer that lacks the
//    blocks keeps every want it was sent (up to bitswap's want-list limit) and, on every message
//    from us, checks each against its blockstore and throws a NotFoundError per miss. In the
//    functions benchmark, a third node in the same thread as the holder gathered 36 more stale
//    wants per 64 MB transfer, and the holder's thread spent 170 -> 590 ms per transfer over five
//    rounds (MB/s 158 -> 94). Here the cancels go out on the peer's shared stream before
//    bitswap's own send runs: the holder's CPU per transfer stays flat (120-170 ms).
//
// All four reach into @helia/bitswap's objects (its network, ledgers and want list); if a later
// version renames them, `withStreamingBitswap` leaves that part stock and the hasher hashes.
// (Stock peers still never cancel to a Mesh holder; their stale wants stay until bitswap truncates.)
//
// Measured (bench:functions, 2026-12-04, one run each, against stock Helia in the same run):
// 1 MB 40.9 -> 112.7 MB/s (time to first byte 39 -> 9 ms), 16 MB 58 -> 87 MB/s, 64 MB 96 -> 104 MB/s.
import { varint } from 'multiformats'
import { sha256 } from 'multiformats/hashes/sha2'
import type { Helia } from '@helia/interface'
import type { AbortOptions, PeerId, Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import type { MultihashDigest, MultihashHasher } from 'multiformats/hashes/interface'

const BITSWAP_120 = '/ipfs/bitswap/1.2.0'
/** An outgoing bitswap stream unused this long is closed (stock receivers wait 10 s). */
export const IDLE_CLOSE_MS = 5_000
// message.proto: BitswapMessage.payload = 3, Block.prefix = 1, Block.data = 2 (all length-delimited).
const PAYLOAD_TAG = 0x1a
const PREFIX_TAG = 0x0a
const DATA_TAG = 0x12
const WANT_HAVE = 1 // WantType.WantHave
// BitswapMessage.wantlist = 1 and Wantlist.entries = 1 (length-delimited), WantlistEntry.cid = 1, .cancel = 3 (varint).
const WANTLIST_TAG = 0x0a
const ENTRY_TAG = 0x0a
const CID_TAG = 0x0a
const CANCEL_TAG = 0x18

interface WantEntry { cid: CID, status: 'want' | 'sending' | 'sent', wantType: number, expires?: number }

interface LedgerLike {
  peerId: PeerId
  blockstore: { has: (cid: CID, o?: AbortOptions) => Promise<boolean>, get: (cid: CID, o?: AbortOptions) => AsyncIterable<Uint8Array> }
  network: NetworkLike
  wants: Map<string, WantEntry>
  doNotResendBlockWindow: number
  maxSizeReplaceHasWithBlock: number
  removeExpiredWants: () => void
  sentBytes: (n: number) => void
  sendBlocksToPeer: (options?: AbortOptions) => Promise<void>
}

interface NetworkLike {
  libp2p: { dialProtocol: DialProtocol }
  messageSendTimeout: number
  runOnLimitedConnections?: boolean
  _updateSentStats?: (blocks: Map<string, { data: Uint8Array }>) => void
}

type DialProtocol = (peer: PeerId, protocol: string | string[], options?: AbortOptions & { runOnLimitedConnection?: boolean }) => Promise<Stream>

interface WantListLike {
  /** Per peer, the keys of the wants sent to it. */
  peers: { entries: () => Iterable<[PeerId, Set<string>]> }
  wants: Map<string, { cid: CID, cancel?: boolean }>
  sendMessages: () => Promise<void>
  addEventListener: (type: 'block', fn: (evt: CustomEvent<{ cid: CID, block: Uint8Array }>) => void) => void
}

interface BitswapLike {
  network?: { libp2p?: { dialProtocol: DialProtocol }, messageSendTimeout?: number }
  peerWantLists?: { ledgerMap?: Map<PeerId, LedgerLike> & { set: (peer: PeerId, ledger: LedgerLike) => unknown } }
  wantList?: WantListLike
}

/**
 * A length-prefixed bitswap message carrying one block: the bytes before the block's data (the
 * data itself follows as it is, uncopied).
 */
export function blockMessageHead (cid: CID, data: Uint8Array): Uint8Array {
  // The CID prefix, as bitswap 1.1+ sends it: version, codec, hash function, digest length.
  const fields = [cid.version, cid.code, cid.multihash.code, cid.multihash.digest.byteLength]
  const prefix = new Uint8Array(fields.reduce((n, f) => n + varint.encodingLength(f), 0))
  fields.reduce((at, f) => { varint.encodeTo(f, prefix, at); return at + varint.encodingLength(f) }, 0)
  const blockLength = 1 + varint.encodingLength(prefix.byteLength) + prefix.byteLength + 1 + varint.encodingLength(data.byteLength) + data.byteLength
  const messageLength = 1 + varint.encodingLength(blockLength) + blockLength
  const head = new Uint8Array(varint.encodingLength(messageLength) + messageLength - data.byteLength)
  let at = 0
  const put = (n: number): void => { varint.encodeTo(n, head, at); at += varint.encodingLength(n) }
  put(messageLength)
  head[at++] = PAYLOAD_TAG
  put(blockLength)
  head[at++] = PREFIX_TAG
  put(prefix.byteLength)
  head.set(prefix, at)
  at += prefix.byteLength
  head[at++] = DATA_TAG
  put(data.byteLength)
  return head
}

/** A length-prefixed bitswap message that cancels this node's wants for `cids`. */
function cancelMessage (cids: CID[]): Uint8Array {
  const prefixed = (bytes: number[]): number[] => {
    const length = new Uint8Array(varint.encodingLength(bytes.length))
    varint.encodeTo(bytes.length, length)
    return [...length, ...bytes]
  }
  // message.proto: BitswapMessage.wantlist = 1 { entries = 1 { cid = 1, cancel = 3 } }.
  const entries = cids.flatMap(cid => [ENTRY_TAG, ...prefixed([CID_TAG, ...prefixed([...cid.bytes]), CANCEL_TAG, 1])])
  return Uint8Array.from(prefixed([WANTLIST_TAG, ...prefixed(entries)]))
}

async function readBlock (ledger: LedgerLike, cid: CID, options: AbortOptions): Promise<Uint8Array> {
  // The blockstore yields a block in chunks (one, for every store Mesh uses); only join when split.
  const chunks: Uint8Array[] = []
  for await (const chunk of ledger.blockstore.get(cid, options)) chunks.push(chunk)
  if (chunks.length === 1) return chunks[0]
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0))
  chunks.reduce((at, c) => { out.set(c, at); return at + c.byteLength }, 0)
  return out
}

/** A bitswap stream as a sender sees it: writes go to the peer's shared stream; close only lets go. */
export interface SharedStream {
  send: (data: Uint8Array) => boolean
  onDrain: (options?: AbortOptions) => Promise<void>
  closeRead: (options?: AbortOptions) => Promise<void>
  close: (options?: AbortOptions) => Promise<void>
  abort: (err: Error) => void
}

interface OpenStream {
  stream: Promise<Stream>
  timer?: ReturnType<typeof setTimeout>
  /** Senders waiting for the peer to take their bytes: the stream is not idle while any wait. */
  draining: number
}

/** One outgoing bitswap stream per peer, opened on first use, closed when idle (see above). */
export class SharedBitswapStreams {
  private readonly open = new Map<string, OpenStream>()

  private readonly dial: DialProtocol
  private readonly idleMs: number

  constructor (dial: DialProtocol, idleMs = IDLE_CLOSE_MS) {
    this.dial = dial
    this.idleMs = idleMs
  }

  /** `dialProtocol` for bitswap's network: bitswap streams are shared, anything else is dialled. */
  readonly dialProtocol: DialProtocol = async (peer, protocol, options) => {
    if (protocol !== BITSWAP_120) return this.dial(peer, protocol, options)
    return this.streamTo(peer, options) as unknown as Stream
  }

  async streamTo (peer: PeerId, options?: AbortOptions & { runOnLimitedConnection?: boolean }): Promise<SharedStream> {
    const key = peer.toString()
    let entry = this.open.get(key)
    let stream = entry != null ? await entry.stream.catch(() => undefined) : undefined
    if (entry == null || stream == null || stream.status !== 'open' || stream.writeStatus !== 'writable') {
      if (entry != null && this.open.get(key) === entry) this.forget(key)
      const dialling = this.dial(peer, BITSWAP_120, options).then(async s => {
        await s.closeRead() // a bitswap stream carries one direction; answers come on the peer's own
        s.addEventListener('close', () => { if (this.open.get(key)?.stream === dialling) this.forget(key) })
        return s
      })
      const fresh: OpenStream = { stream: dialling, draining: 0 }
      entry = fresh
      this.open.set(key, fresh)
      try {
        stream = await dialling
      } catch (err) {
        if (this.open.get(key) === fresh) this.forget(key)
        throw err
      }
    }
    const s = stream
    const used = entry
    const touch = (): void => {
      clearTimeout(used.timer)
      used.timer = setTimeout(() => {
        if (used.draining > 0) { touch(); return }
        if (this.open.get(key) === used) this.forget(key)
        s.close().catch((err: Error) => { s.abort(err) })
      }, this.idleMs)
      used.timer.unref?.()
    }
    touch()
    return {
      send: (data) => { touch(); return s.send(data) },
      onDrain: async (o) => {
        used.draining++
        try {
          await s.onDrain(o)
        } finally {
          used.draining--
          touch()
        }
      },
      closeRead: async () => {},
      close: async () => { touch() },
      abort: (err) => { if (this.open.get(key) === used) this.forget(key); s.abort(err) }
    }
  }

  private forget (key: string): void {
    clearTimeout(this.open.get(key)?.timer)
    this.open.delete(key)
  }
}

const nextTurn = async (): Promise<void> => new Promise(resolve => setImmediate(resolve))

/**
 * The ledger's send, streaming: the wanted blocks this node has go out one per message on one
 * stream as they are read, then bitswap's own send handles what is left (presences, WANT_HAVEs).
 */
async function streamWantedBlocks (ledger: LedgerLike, stockSend: (options?: AbortOptions) => Promise<void>, options: AbortOptions = {}): Promise<void> {
  ledger.removeExpiredWants()
  const wanted = [...ledger.wants.entries()].filter(([, w]) => w.status === 'want' && w.wantType !== WANT_HAVE)
  for (const [, w] of wanted) w.status = 'sending'
  const { network } = ledger
  let stream: SharedStream | undefined
  let sent = 0
  try {
    for (const [key, entry] of wanted) {
      if (entry.status !== 'sending') continue
      // Each block gets bitswap's send timeout, as each stock message does.
      const signal = AbortSignal.any([AbortSignal.timeout(network.messageSendTimeout), ...(options.signal != null ? [options.signal] : [])])
      if (!await ledger.blockstore.has(entry.cid, { signal })) {
        entry.status = 'want' // bitswap's own send answers it (DONT_HAVE if asked)
        continue
      }
      const block = await readBlock(ledger, entry.cid, { signal })
      if (entry.status !== 'sending') continue // cancelled while it was read
      stream ??= await network.libp2p.dialProtocol(ledger.peerId, BITSWAP_120, { signal, runOnLimitedConnection: network.runOnLimitedConnections }) as unknown as SharedStream
      stream.send(blockMessageHead(entry.cid, block))
      if (!stream.send(block)) await stream.onDrain({ signal })
      entry.status = 'sent'
      entry.expires = Date.now() + ledger.doNotResendBlockWindow
      sent += block.byteLength
      network._updateSentStats?.(new Map([[key, { data: block }]]))
      await nextTurn()
    }
    await stream?.close({ signal: AbortSignal.timeout(network.messageSendTimeout) })
  } catch (err: any) {
    stream?.abort(err)
    // Unsent blocks are wanted again: the peer's next want list (or a retry) asks for them.
    for (const [, entry] of wanted) if (entry.status === 'sending') entry.status = 'want'
    throw err
  } finally {
    if (sent > 0) ledger.sentBytes(sent)
  }
  await stockSend.call(ledger, options)
}

function streamLedger (ledger: LedgerLike): void {
  const stockSend = ledger.sendBlocksToPeer
  if (typeof stockSend !== 'function' || ledger.wants == null || ledger.network?.libp2p == null) return
  ledger.sendBlocksToPeer = async (options?: AbortOptions) => streamWantedBlocks(ledger, stockSend, options)
}

/**
 * The want list's send, with cancels: each want this node no longer has (the block came, or the
 * caller gave up) is cancelled with every peer it was sent to, then bitswap's own send runs.
 */
function sendCancels (wantList: WantListLike, shared: SharedBitswapStreams, timeoutMs: number): void {
  const stockSend = wantList.sendMessages
  wantList.sendMessages = async function (this: WantListLike) {
    const cancels: Array<[PeerId, CID[]]> = []
    for (const [peer, sent] of this.peers.entries()) {
      const cids: CID[] = []
      for (const [key, entry] of this.wants) if (entry.cancel === true && sent.has(key)) cids.push(entry.cid)
      if (cids.length > 0) cancels.push([peer, cids])
    }
    // Best effort, as a want is: a peer that misses a cancel only keeps a stale entry.
    await Promise.all(cancels.map(async ([peer, cids]) => {
      try {
        const stream = await shared.streamTo(peer, { signal: AbortSignal.timeout(timeoutMs) })
        stream.send(cancelMessage(cids))
        await stream.close()
      } catch {}
    }))
    await stockSend.call(this)
  }
}

/** Bytes bitswap hashed on arrival -> their digest, for as long as the bytes live. */
const hashedOnArrival = new WeakMap<Uint8Array, MultihashDigest>()
/** How often the hasher below found bitswap's digest, and how often it had to hash. */
export const hasherStats = { reused: 0, hashed: 0 }

/**
 * Helia's sha2-256 for Mesh nodes: the digest bitswap computed for these very bytes when it has
 * one, otherwise a hash. Only for digests that are not truncated (all of Mesh's, and every CID a
 * stock IPFS node makes).
 */
export const sha256OnceHasher: MultihashHasher<typeof sha256.code> = {
  name: sha256.name,
  code: sha256.code,
  digest (input: Uint8Array, options?: { truncate?: number }) {
    const known = hashedOnArrival.get(input)
    if (known != null && (options?.truncate == null || options.truncate === known.digest.byteLength)) {
      hasherStats.reused++
      return known
    }
    hasherStats.hashed++
    return sha256.digest(input, options)
  }
} as MultihashHasher<typeof sha256.code>

/**
 * A Helia mixin, added after `withBitswap`: streams this node's bitswap sends over one stream per
 * peer and records the digests bitswap computes for arriving blocks (see above). Other Helia nodes in the process (a
 * benchmark's baseline) keep stock bitswap.
 */
export function withStreamingBitswap<T extends Helia> (helia: T): T {
  helia.addMixin({
    name: 'mesh-bitswap-stream',
    start: async () => {
      const brokers = (helia as unknown as { blockBrokers?: Array<{ name?: string }> }).blockBrokers ?? []
      const broker = brokers.find(b => b.name === 'bitswap') as { bitswap?: BitswapLike } | undefined
      const bitswap = broker?.bitswap
      const network = bitswap?.network
      const libp2p = network?.libp2p
      const wantList = bitswap?.wantList
      if (network != null && libp2p != null && typeof libp2p.dialProtocol === 'function') {
        const shared = new SharedBitswapStreams(libp2p.dialProtocol.bind(libp2p))
        if (wantList?.peers != null && wantList.wants != null && typeof wantList.sendMessages === 'function') {
          sendCancels(wantList, shared, network.messageSendTimeout ?? 10_000)
        }
        // Bound, so libp2p's own methods never run with the proxy as `this`.
        network.libp2p = new Proxy(libp2p, {
          get: (target, prop) => {
            if (prop === 'dialProtocol') return shared.dialProtocol
            const value = Reflect.get(target, prop)
            return typeof value === 'function' ? value.bind(target) : value
          }
        })
      }
      const ledgers = bitswap?.peerWantLists?.ledgerMap
      if (ledgers != null && typeof ledgers.set === 'function') {
        for (const ledger of ledgers.values()) streamLedger(ledger)
        const set = ledgers.set.bind(ledgers)
        ledgers.set = (peer: PeerId, ledger: LedgerLike) => { streamLedger(ledger); return set(peer, ledger) }
      }
      wantList?.addEventListener('block', evt => {
        if (evt.detail.cid.multihash.code === sha256.code) hashedOnArrival.set(evt.detail.block, evt.detail.cid.multihash)
      })
    }
  })
  return helia
}
