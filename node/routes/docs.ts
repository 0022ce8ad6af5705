// Documents over HTTP: list, read, write, a server-sent-event stream of changes, and the
// y-websocket protocol on `/v1/docs/<id>`, so any Yjs app can use its nearest node as provider.
//
// WebSocket access needs the API token (`?token=` or `Authorization: Bearer`), unless the repo's
// config says `"docsWebSocketToken": false`. Loopback is not enough: browsers let any web page
// open a WebSocket to 127.0.0.1 (there is no CORS for WebSockets), so without the token any site
// the user visits could read and edit their documents. Plain GETs stay open, like the rest of the
// API: a page on another origin cannot read their answers.
import { timingSafeEqual } from 'node:crypto'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as Y from 'yjs'
import { WebSocketServer } from 'ws'
import { isValidDocId } from '../doc-store.ts'
import { DATA_MAP, documentsOf } from '../documents.ts'
import { HttpError, timeoutOf, withTimeout } from '../http-kit.ts'
import type { RouteModule } from './index.ts'
import type { Documents } from '../documents.ts'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { WebSocket } from 'ws'

const MESSAGE_SYNC = 0
const MESSAGE_AWARENESS = 1
const MESSAGE_AUTH = 2
const MESSAGE_QUERY_AWARENESS = 3
const SYNC_STEP1 = 0
const SYNC_STEP2 = 1
const SYNC_UPDATE = 2
/** Largest WebSocket message taken in: a client's first step 2 carries its whole offline state. */
const MAX_WS_MESSAGE = 8 * 1024 * 1024
/** The y-websocket client hangs up after 30 s without a message; speak well before that. */
const KEEPALIVE_MS = 10_000
/** A client that sends more than this unanswered backlog is too slow: hang up on it. */
const MAX_BUFFERED = 32 * 1024 * 1024
const PATH = /^\/v1\/docs\/([^/?]+)\/?(?:\?.*)?$/

/** WebSocket counters, exported for the metrics and the tests. */
export const wsStats = { connections: 0, open: 0, malformed: 0, refused: 0 }

export const docRoutes: RouteModule = (app, { daemon, current }) => {
  const docsOf = (): Documents => {
    try {
      return documentsOf(current())
    } catch (err: any) {
      throw new HttpError(503, err.message)
    }
  }
  const docIdOf = (req: any): string => {
    const id = req.params.id as string
    if (!isValidDocId(id)) throw new HttpError(400, `invalid document ID ${JSON.stringify(String(id).slice(0, 140))}: use 1-128 characters of a-z 0-9 . _ - starting with a letter or digit`)
    return id
  }
  const failed = (err: any): never => {
    if (err instanceof HttpError) throw err
    throw new HttpError(/may only live in zones|cannot hold|not a writer|may not write/.test(err.message) ? 403 : 500, err.message)
  }

  app.get('/v1/docs', async () => ({ docs: await docsOf().list() }))

  app.get('/v1/docs/:id', async (req) => {
    const docId = docIdOf(req)
    const docs = docsOf()
    const doc = await withTimeout(timeoutOf(req), `document ${docId}`, async signal => docs.open(docId, { signal })).catch(failed)
    const data = doc.getMap(DATA_MAP).toJSON()
    const key = (req.query as any).key
    if (typeof key === 'string') {
      if (!(key in data)) throw new HttpError(404, `document ${docId} has no key ${JSON.stringify(key)}`)
      return { docId, key, value: data[key] }
    }
    return { docId, data, policy: docs.policyOf(docId) }
  })

  app.post('/v1/docs/:id', async (req) => {
    const docId = docIdOf(req)
    const { key, value } = (req.body ?? {}) as { key?: unknown, value?: unknown }
    if (typeof key !== 'string' || key === '' || key.length > 1024) throw new HttpError(400, 'body must be {"key": "<1-1024 characters>", "value": <any JSON>}')
    if (value === undefined) throw new HttpError(400, 'body needs "value": any JSON value (null included)')
    const docs = docsOf()
    await withTimeout(timeoutOf(req), `the write to ${docId}`, async signal => docs.set(docId, key, value, { signal })).catch(failed)
    return { docId, key, value, written: true }
  })

  app.post('/v1/docs/:id/policy', async (req) => {
    const docId = docIdOf(req)
    const { writers, zones } = (req.body ?? {}) as { writers?: unknown, zones?: unknown }
    const list = (v: unknown, what: string, pattern: RegExp): string[] | undefined => {
      if (v == null) return undefined
      if (!Array.isArray(v) || v.length === 0 || !v.every(x => typeof x === 'string' && pattern.test(x))) throw new HttpError(400, `"${what}" must be a non-empty list of ${what === 'writers' ? 'did:key DIDs' : 'zone names'}`)
      return v
    }
    const policy = { writers: list(writers, 'writers', /^did:key:z[1-9A-HJ-NP-Za-km-z]+$/), zones: list(zones, 'zones', /^[\w.-]{1,64}$/) }
    const docs = docsOf()
    await withTimeout(timeoutOf(req), `the policy of ${docId}`, async signal => docs.setPolicy(docId, policy, { signal })).catch(failed)
    return { docId, policy: docs.policyOf(docId) }
  })

  // Changes as server-sent events: one `data:` line of JSON per changed key (and per presence
  // change with ?presence=1), until the client goes away or the node stops.
  app.get('/v1/docs/:id/events', async (req, reply) => {
    const docId = docIdOf(req)
    const docs = docsOf()
    const doc = await withTimeout(timeoutOf(req), `document ${docId}`, async signal => docs.open(docId, { signal })).catch(failed)
    const presence = ['1', 'true'].includes(String((req.query as any).presence))
    reply.hijack()
    const res = reply.raw
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    const send = (event: unknown): void => { res.write(`data: ${JSON.stringify(event)}\n\n`) }
    const data = doc.getMap(DATA_MAP)
    send({ type: 'snapshot', docId, data: data.toJSON() })
    const onData = (evt: Y.YMapEvent<unknown>): void => {
      for (const [key, change] of evt.changes.keys) {
        send(change.action === 'delete' ? { type: 'delete', docId, key } : { type: 'set', docId, key, value: data.get(key) })
      }
    }
    data.observe(onData)
    const awareness = docs.sync.awareness(docId)
    const onPresence = (): void => {
      send({ type: 'presence', docId, states: Object.fromEntries([...awareness.getStates()].map(([id, s]) => [String(id), s])) })
    }
    if (presence) awareness.on('change', onPresence)
    // A comment line now and then keeps proxies and idle timers from closing a quiet stream.
    const beat = setInterval(() => res.write(': keepalive\n\n'), 15_000)
    const end = (): void => {
      clearInterval(beat)
      data.unobserve(onData)
      awareness.off('change', onPresence)
      docs.signal.removeEventListener('abort', end)
      res.end()
    }
    req.raw.on('close', end)
    docs.signal.addEventListener('abort', end, { once: true })
  })

  // --- y-websocket ------------------------------------------------------------------------------

  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_WS_MESSAGE, perMessageDeflate: false })
  const sockets = new Set<WebSocket>()
  let expected: Buffer | undefined

  async function allowed (req: IncomingMessage, url: URL): Promise<boolean> {
    const config = await daemon.repo.loadConfig().catch(() => ({})) as Record<string, unknown>
    if (config.docsWebSocketToken === false) return true
    expected ??= Buffer.from(await daemon.repo.apiToken())
    const header = req.headers.authorization?.replace(/^Bearer /, '')
    const given = Buffer.from(url.searchParams.get('token') ?? header ?? '')
    return given.length === expected.length && timingSafeEqual(given, expected)
  }

  const refuse = (socket: Duplex, status: number, message: string): void => {
    wsStats.refused++
    socket.end(`HTTP/1.1 ${status} ${message}\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(message)}\r\n\r\n${message}`)
  }

  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const match = PATH.exec(req.url ?? '')
    // Other paths may belong to another route module's WebSocket: leave them alone.
    if (match == null) return
    socket.on('error', () => {})
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://localhost')
      let docId: string
      try { docId = decodeURIComponent(match[1]) } catch { docId = '' }
      if (!isValidDocId(docId)) return refuse(socket, 400, 'invalid document ID')
      if (!await allowed(req, url)) return refuse(socket, 401, 'missing or wrong API token: add ?token=<api.token of the repo>')
      let docs: Documents
      let doc: Y.Doc
      try {
        docs = documentsOf(current())
        doc = await docs.open(docId, { signal: AbortSignal.timeout(10_000) })
      } catch (err: any) {
        return refuse(socket, /zones|cannot hold/.test(err.message) ? 403 : 503, err.message.replace(/[\r\n]/g, ' '))
      }
      wss.handleUpgrade(req, socket, head, (ws) => { serve(ws, docs, docId, doc) })
    })().catch(() => { socket.destroy() })
  })

  app.addHook('preClose', async () => {
    for (const ws of sockets) ws.terminate()
    wss.close()
  })

  /** One y-websocket client on one document, as y-websocket's own server serves it. */
  function serve (ws: WebSocket, docs: Documents, docId: string, doc: Y.Doc): void {
    wsStats.connections++
    wsStats.open++
    sockets.add(ws)
    const awareness = docs.sync.awareness(docId)
    /** The awareness client IDs this connection introduced, to clear when it goes. */
    const clientIds = new Set<number>()
    const send = (message: Uint8Array): void => {
      if (ws.readyState !== ws.OPEN) return
      if (ws.bufferedAmount > MAX_BUFFERED) {
        ws.terminate()
        return
      }
      ws.send(message, { binary: true })
    }
    const onUpdate = (update: Uint8Array, origin: unknown): void => {
      if (origin === ws) return
      send(encode(e => {
        encoding.writeVarUint(e, MESSAGE_SYNC)
        encoding.writeVarUint(e, SYNC_UPDATE)
        encoding.writeVarUint8Array(e, update)
      }))
    }
    const onAwareness = ({ added, updated, removed }: { added: number[], updated: number[], removed: number[] }, origin: unknown): void => {
      const changed = [...added, ...updated, ...removed]
      if (origin === ws) {
        for (const id of added) clientIds.add(id)
        for (const id of removed) clientIds.delete(id)
      }
      send(awarenessMessage(awareness, changed))
    }
    doc.on('update', onUpdate)
    awareness.on('update', onAwareness)
    const keepalive = setInterval(() => { send(awarenessMessage(awareness, [])) }, KEEPALIVE_MS)
    const close = (code: number, reason: string): void => {
      if (ws.readyState === ws.OPEN) ws.close(code, reason)
      else ws.terminate()
    }
    const onStop = (): void => { close(1012, 'node restarting') }
    docs.signal.addEventListener('abort', onStop, { once: true })

    ws.on('message', (raw, isBinary) => {
      if (!isBinary) {
        wsStats.malformed++
        close(4400, 'y-websocket messages are binary')
        return
      }
      const data = Array.isArray(raw) ? Buffer.concat(raw) : Buffer.isBuffer(raw) ? raw : Buffer.from(raw)
      try {
        const replies = handle(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
        for (const r of replies) send(r)
      } catch (err: any) {
        wsStats.malformed++
        close(err instanceof Forbidden ? 4403 : 4400, err instanceof Forbidden ? err.message : 'malformed message')
      }
    })
    ws.on('error', () => {})
    ws.on('close', () => {
      wsStats.open--
      sockets.delete(ws)
      clearInterval(keepalive)
      docs.signal.removeEventListener('abort', onStop)
      doc.off('update', onUpdate)
      awareness.off('update', onAwareness)
      if (clientIds.size > 0 && !docs.signal.aborted) awarenessProtocol.removeAwarenessStates(awareness, [...clientIds], 'closed')
    })

    /**
     * Every message of a frame (newer clients batch several); validates before anything touches
     * the document, so a bad frame changes nothing and closes only this socket.
     */
    function handle (frame: Uint8Array): Uint8Array[] {
      const d = decoding.createDecoder(frame)
      const replies: Uint8Array[] = []
      const actions: Array<() => void> = []
      while (decoding.hasContent(d)) {
        const type = decoding.readVarUint(d)
        if (type === MESSAGE_SYNC) {
          const step = decoding.readVarUint(d)
          const payload = decoding.readVarUint8Array(d)
          if (step === SYNC_STEP1) {
            Y.decodeStateVector(payload)
            actions.push(() => {
              replies.push(encode(e => {
                encoding.writeVarUint(e, MESSAGE_SYNC)
                encoding.writeVarUint(e, SYNC_STEP2)
                encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(doc, payload))
              }))
            })
          } else if (step === SYNC_STEP2 || step === SYNC_UPDATE) {
            Y.decodeUpdate(payload)
            if (!docs.mayWrite(docId)) {
              // A client's step 2 with nothing new is not a write; anything else is refused.
              if (isEmptyUpdate(payload)) continue
              throw new Forbidden(`this node may not write ${docId}`)
            }
            actions.push(() => { Y.applyUpdate(doc, payload, ws) })
          } else {
            throw new Error('unknown sync step')
          }
        } else if (type === MESSAGE_AWARENESS) {
          const update = decoding.readVarUint8Array(d)
          actions.push(() => { awarenessProtocol.applyAwarenessUpdate(awareness, update, ws) })
        } else if (type === MESSAGE_QUERY_AWARENESS) {
          actions.push(() => { replies.push(awarenessMessage(awareness, [...awareness.getStates().keys()])) })
        } else if (type === MESSAGE_AUTH) {
          // Permission answers go from server to client; one from a client means nothing.
          decoding.readVarString(d)
        } else {
          throw new Error('unknown message type')
        }
      }
      for (const act of actions) act()
      return replies
    }

    // Greet as y-websocket's server does: our state vector, and who is here.
    send(encode(e => {
      encoding.writeVarUint(e, MESSAGE_SYNC)
      encoding.writeVarUint(e, SYNC_STEP1)
      encoding.writeVarUint8Array(e, Y.encodeStateVector(doc))
    }))
    if (awareness.getStates().size > 0) send(awarenessMessage(awareness, [...awareness.getStates().keys()]))
  }
}

class Forbidden extends Error {}

function encode (write: (e: encoding.Encoder) => void): Uint8Array {
  const e = encoding.createEncoder()
  write(e)
  return encoding.toUint8Array(e)
}

function awarenessMessage (awareness: awarenessProtocol.Awareness, clients: number[]): Uint8Array {
  return encode(e => {
    encoding.writeVarUint(e, MESSAGE_AWARENESS)
    encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
  })
}

function isEmptyUpdate (update: Uint8Array): boolean {
  const { structs, ds } = Y.decodeUpdate(update)
  return structs.length === 0 && ds.clients.size === 0
}
