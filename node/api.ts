// The node's HTTP API (JSON, loopback by default). The CLI is a client of it, as `ipfs` is of Kubo.
// Mutating calls carry the repo's token as `Authorization: Bearer <token>`.
import { timingSafeEqual } from 'node:crypto'
import Fastify from 'fastify'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { InvalidDidError, parsePeerOrDid } from '../identity/did-key.ts'
import { UserError } from './errors.ts'
import type { MeshNode } from './mesh-node.ts'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'

export const DEFAULT_TIMEOUT_MS = 30_000
const MAX_BLOCK_BYTES = 4 * 1024 * 1024

export interface ApiInit {
  node: MeshNode
  token: string
}

/** Where a request's waiting ends: `?timeout=ms`, capped, so no call can hang the client forever. */
function timeoutOf (req: FastifyRequest): number {
  const t = Number((req.query as any)?.timeout)
  return Number.isFinite(t) && t > 0 ? Math.min(t, 600_000) : DEFAULT_TIMEOUT_MS
}

export class HttpError extends Error {
  readonly status: number
  constructor (status: number, message: string) {
    super(message)
    this.status = status
  }
}

export function createApi ({ node, token }: ApiInit): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: MAX_BLOCK_BYTES })
  const expected = Buffer.from(`Bearer ${token}`)

  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => { done(null, body) })

  app.addHook('onRequest', async (req, reply) => {
    if (req.method === 'GET' || req.method === 'HEAD') return
    const given = Buffer.from(req.headers.authorization ?? '')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      await reply.code(401).send({ error: 'missing or wrong API token (see api.token in the repo)' })
    }
  })

  app.setErrorHandler(async (err: any, _req, reply) => {
    if (err instanceof HttpError) return reply.code(err.status).send({ error: err.message })
    if (err instanceof UserError || err instanceof InvalidDidError) return reply.code(400).send({ error: err.message })
    if (err.validation != null || err.statusCode === 400 || err.statusCode === 413 || err.statusCode === 415) {
      return reply.code(err.statusCode ?? 400).send({ error: err.message })
    }
    return reply.code(500).send({ error: err.message ?? String(err) })
  })

  app.get('/healthz', async () => ({ ok: true }))

  app.get('/v1/id', async () => node.identity())

  app.get('/v1/peers', async () => ({ peers: node.peers() }))

  app.post('/v1/peers', async (req) => {
    const { address } = (req.body ?? {}) as { address?: string }
    if (typeof address !== 'string') throw new HttpError(400, 'body must be {"address": "<multiaddr or peer ID>"}')
    const ms = timeoutOf(req)
    return await withTimeout(ms, `connecting to ${address}`, async signal => node.connect(address, { signal }))
  })

  app.get('/v1/routing/findpeer/:peer', async (req) => {
    const peer = parsePeerOrDid((req.params as any).peer)
    if (peer.equals(node.peerId)) throw new HttpError(400, 'that is this node itself')
    const ms = timeoutOf(req)
    return await withTimeout(ms, `a DHT lookup of ${peer}`, async signal => node.findPeer(peer, { signal }))
  })

  app.post('/v1/blocks', async (req) => {
    const body = req.body
    if (!(body instanceof Uint8Array)) throw new HttpError(415, 'send the block as application/octet-stream')
    const cid = CID.createV1(raw.code, await sha256.digest(body))
    await node.helia.blockstore.put(cid, body)
    return { cid: cid.toString(), size: body.length }
  })

  app.get('/v1/blocks/:cid', async (req, reply: FastifyReply) => {
    let cid: CID
    try {
      cid = CID.parse((req.params as any).cid)
    } catch {
      throw new HttpError(400, `not a CID: ${(req.params as any).cid}`)
    }
    const ms = timeoutOf(req)
    const bytes = await withTimeout(ms, `block ${cid} from the network`, async signal => {
      const chunks: Uint8Array[] = []
      for await (const chunk of node.helia.blockstore.get(cid, { signal })) chunks.push(chunk)
      return Buffer.concat(chunks)
    })
    return reply.type('application/octet-stream').send(bytes)
  })

  return app
}

/** Runs `fn` with an abort signal that fires after `ms`, and turns that into a 504 saying what it waited on. */
export async function withTimeout<T> (ms: number, what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const signal = AbortSignal.timeout(ms)
  try {
    return await fn(signal)
  } catch (err: any) {
    if (signal.aborted) throw new HttpError(504, `timed out after ${ms / 1000}s waiting for ${what}`)
    throw err
  }
}
