// The node's HTTP API (JSON, loopback by default). The CLI is a client of it, as `ipfs` is of Kubo.
// Mutating calls carry the repo's token as `Authorization: Bearer <token>`.
import { timingSafeEqual } from 'node:crypto'
import Fastify from 'fastify'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { InvalidDidError, parsePeerOrDid } from '../identity/did-key.ts'
import { UserError } from './errors.ts'
import { didResolver } from '../identity/resolver.ts'
import { issueCredential, verifyCredential, CredentialError } from '../identity/credentials.ts'
import { DidResolutionError } from '../identity/resolver.ts'
import { NetworkError } from '../identity/network.ts'
import { HttpError, timeoutOf, withTimeout } from './http-kit.ts'
import { routeModules } from './routes/index.ts'
import { traceRequests } from './tracing.ts'
import type { Daemon } from './daemon.ts'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'

const MAX_BLOCK_BYTES = 4 * 1024 * 1024

export interface ApiInit {
  daemon: Daemon
  token: string
}

export function createApi ({ daemon, token }: ApiInit): FastifyInstance {
  // The daemon may swap its node (joining a network); every request takes the current one.
  const current = (): Daemon['node'] => daemon.node
  const resolver = didResolver()
  const app = Fastify({ logger: false, bodyLimit: MAX_BLOCK_BYTES })
  traceRequests(app)
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
    if (err instanceof UserError || err instanceof InvalidDidError || err instanceof NetworkError) return reply.code(400).send({ error: err.message })
    if (err instanceof CredentialError) return reply.code(400).send({ error: err.message, reason: err.reason })
    if (err instanceof DidResolutionError) return reply.code(err.code === 'not-found' ? 404 : 400).send({ error: err.message, code: err.code })
    if (err.validation != null || err.statusCode === 400 || err.statusCode === 413 || err.statusCode === 415) {
      return reply.code(err.statusCode ?? 400).send({ error: err.message })
    }
    return reply.code(500).send({ error: err.message ?? String(err) })
  })

  app.get('/healthz', async () => ({ ok: true }))

  app.get('/v1/id', async () => current().identity())

  app.get('/v1/peers', async () => ({ peers: current().peers() }))

  app.post('/v1/peers', async (req) => {
    const { address } = (req.body ?? {}) as { address?: string }
    if (typeof address !== 'string') throw new HttpError(400, 'body must be {"address": "<multiaddr or peer ID>"}')
    const ms = timeoutOf(req)
    return await withTimeout(ms, `connecting to ${address}`, async signal => current().connect(address, { signal }))
  })

  app.get('/v1/routing/findpeer/:peer', async (req) => {
    const peer = parsePeerOrDid((req.params as any).peer)
    if (peer.equals(current().peerId)) throw new HttpError(400, 'that is this node itself')
    const ms = timeoutOf(req)
    return await withTimeout(ms, `a DHT lookup of ${peer}`, async signal => current().findPeer(peer, { signal }))
  })

  app.post('/v1/blocks', async (req) => {
    const body = req.body
    if (!(body instanceof Uint8Array)) throw new HttpError(415, 'send the block as application/octet-stream')
    const cid = CID.createV1(raw.code, await sha256.digest(body))
    await current().helia.blockstore.put(cid, body)
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
      for await (const chunk of current().helia.blockstore.get(cid, { signal })) chunks.push(chunk)
      return Buffer.concat(chunks)
    })
    return reply.type('application/octet-stream').send(bytes)
  })

  app.get('/v1/network', async () => {
    const id = current().identity()
    const rejections = Object.fromEntries(current().counters.peersRejected)
    return { ...(id.community ?? { id: id.network, name: id.network, open: true, roots: [], role: 'open', community: false }), rejections }
  })

  app.post('/v1/networks', async (req) => {
    const { name, open } = (req.body ?? {}) as { name?: unknown, open?: unknown }
    if (typeof name !== 'string' || !/^[\w .-]{1,64}$/.test(name)) throw new HttpError(400, 'a network name is 1-64 letters, digits, spaces, dots, dashes or underscores')
    return await daemon.createNetwork(name, open === true)
  })

  app.post('/v1/networks/invites', async (req) => {
    const { did, role, expiresInMs } = (req.body ?? {}) as { did?: unknown, role?: unknown, expiresInMs?: unknown }
    if (typeof did !== 'string') throw new HttpError(400, 'body must name the invitee: {"did": "did:key:…"}')
    parsePeerOrDid(did)
    if (role != null && role !== 'member' && role !== 'admin') throw new HttpError(400, 'role is member or admin')
    if (expiresInMs != null && (typeof expiresInMs !== 'number' || !(expiresInMs > 0))) throw new HttpError(400, 'expiresInMs is a positive number')
    return await daemon.invite(did, (role ?? 'member') as 'member' | 'admin', expiresInMs as number | undefined)
  })

  app.post('/v1/networks/join', async (req) => {
    const { invite } = (req.body ?? {}) as { invite?: unknown }
    if (typeof invite !== 'string') throw new HttpError(400, 'body must be {"invite": "meshinvite1…"}')
    return await daemon.join(invite)
  })

  app.post('/v1/networks/revocations', async (req) => {
    const { target } = (req.body ?? {}) as { target?: unknown }
    if (typeof target !== 'string') throw new HttpError(400, 'body must be {"target": "<did or credential id>"}')
    return await daemon.revoke(target)
  })

  // DIDs: any DID the node can resolve; for did:key peers of this node, also their standing.
  app.get('/v1/dids/:did', async (req) => {
    const did = (req.params as any).did as string
    const document = await resolver.resolveDid(did)
    const member = current().peers().find(p => p.did === did)
    return { document, member: member == null ? undefined : { peerId: member.peerId, authenticated: member.authenticated, role: member.role } }
  })

  app.post('/v1/credentials', async (req) => {
    const { subject, type, claims, expiresInMs } = (req.body ?? {}) as Record<string, any>
    if (typeof subject !== 'string') throw new HttpError(400, 'body needs "subject": a DID')
    const jwt = await issueCredential({
      key: daemon.privateKey,
      subject,
      type: type == null ? undefined : (Array.isArray(type) ? type : [type]),
      claims: claims ?? {},
      expiresIn: typeof expiresInMs === 'number' ? Math.round(expiresInMs / 1000) : undefined
    })
    return { jwt }
  })

  app.post('/v1/credentials/verify', async (req) => {
    const { jwt } = (req.body ?? {}) as { jwt?: unknown }
    if (typeof jwt !== 'string') throw new HttpError(400, 'body must be {"jwt": "…"}')
    const vc = await verifyCredential(jwt, { resolver })
    return { valid: true, ...vc, issuedAt: vc.issuedAt?.toISOString(), expiresAt: vc.expiresAt?.toISOString() }
  })

  for (const add of routeModules) add(app, { daemon, current })

  return app
}

export { HttpError, withTimeout }

