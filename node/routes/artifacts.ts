// HTTP routes of artifacts and functions: publish, list, fetch, remove, invoke.
import { ArtifactError, MAX_ARTIFACT_BYTES, parseArtifactRef } from '../../registry/artifact.ts'
import { InvokeError, MAX_STDIN_BYTES } from '../../protocols/invoke.ts'
import { ConstraintError, constraintsFromOptions } from '../../registry/constraints.ts'
import { artifactsOf } from '../artifacts.ts'
import { descriptorsOf } from '../descriptors.ts'
import { functionsOf } from '../functions.ts'
import { HttpError, timeoutOf, withTimeout } from '../http-kit.ts'
import type { RouteContext } from './index.ts'
import type { FastifyInstance } from 'fastify'

/** Typed library errors become 400s with their own message. */
async function clear<T> (fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    if (err instanceof ArtifactError || err instanceof InvokeError) throw new HttpError(400, err.message)
    throw err
  }
}

function refOf (params: unknown): string {
  const ref = (params as any).ref as string
  try {
    parseArtifactRef(ref)
  } catch (err) {
    throw new HttpError(400, (err as Error).message)
  }
  return ref
}

export function artifactRoutes (app: FastifyInstance, { current }: RouteContext): void {
  app.post('/v1/artifacts', { bodyLimit: MAX_ARTIFACT_BYTES }, async (req) => {
    const body = req.body
    if (!(body instanceof Uint8Array)) throw new HttpError(415, 'send the module as application/octet-stream')
    const { name, version } = req.query as { name?: string, version?: string }
    if (name == null || version == null) throw new HttpError(400, 'give the artifact a ?name= and a ?version=')
    return await clear(async () => artifactsOf(current()).publish(body, { name, version }))
  })

  app.get('/v1/artifacts', async () => ({ artifacts: artifactsOf(current()).ls() }))

  // The manifest only: what the CLI asks first, to know the size before it downloads.
  app.get('/v1/artifacts/:ref/manifest', async (req) => {
    const ref = refOf(req.params)
    const { manifestCid, manifest } = await clear(async () => withTimeout(timeoutOf(req), `artifact ${ref}`, async signal => artifactsOf(current()).resolve(ref, { signal })))
    return { ...manifest, cid: manifest.cid.toString(), manifest: manifestCid.toString() }
  })

  app.get('/v1/artifacts/:ref', async (req, reply) => {
    const ref = refOf(req.params)
    const { entry, bytes } = await clear(async () => withTimeout(timeoutOf(req), `artifact ${ref}`, async signal => artifactsOf(current()).fetch(ref, { signal })))
    return reply.type('application/wasm').header('x-mesh-manifest', entry.manifest).header('x-mesh-cid', entry.cid).send(Buffer.from(bytes))
  })

  app.delete('/v1/artifacts/:ref', async (req) => {
    const ref = refOf(req.params)
    return await clear(async () => artifactsOf(current()).rm(ref))
  })

  app.post('/v1/functions/:ref', async (req) => {
    const ref = refOf(req.params)
    const b = (req.body ?? {}) as Record<string, any>
    if (typeof b !== 'object' || Array.isArray(b)) throw new HttpError(400, 'body must be a JSON object')
    if (b.stdin != null && typeof b.stdin !== 'string') throw new HttpError(400, 'stdin is base64 text')
    const stdin = b.stdin == null ? undefined : new Uint8Array(Buffer.from(b.stdin, 'base64'))
    if (stdin != null && stdin.length > MAX_STDIN_BYTES) throw new HttpError(413, `stdin is over ${MAX_STDIN_BYTES} bytes`)
    if (b.node != null && typeof b.node !== 'string') throw new HttpError(400, 'node is a peer ID or did:key')
    const node = current()
    // Placement: with constraints and no named node, the registry's allocation chooses the node
    // and holds a slot on it (a lease) for the length of the call.
    let placed: { did: string, peerId: string, self: boolean, lease: { id: string } } | undefined
    if (b.node == null && (b.region != null || b.maxLatency != null)) {
      let constraints
      try {
        constraints = constraintsFromOptions({ region: b.region, maxLatencyMs: b.maxLatency })
      } catch (err) {
        if (err instanceof ConstraintError) throw new HttpError(400, err.message)
        throw err
      }
      const outcome = await withTimeout(timeoutOf(req), 'a node for the function', async signal =>
        descriptorsOf(node).allocate({ constraints, count: 1, slots: 1, ttlMs: 60_000, signal }))
      if (!outcome.ok) throw new HttpError(outcome.status, `no node to run ${ref} on: ${outcome.explanation}`)
      placed = outcome.chosen[0]
    }
    const on = placed == null ? b.node : (placed.self ? undefined : placed.peerId)
    let result
    try {
      result = await clear(async () => withTimeout(timeoutOf(req), `function ${ref}`, async signal =>
        functionsOf(node).invoke(ref, { args: b.args, env: b.env, stdin, limits: b.limits }, { on, signal })))
    } finally {
      if (placed != null) await descriptorsOf(node).release(placed.did, placed.lease.id).catch(() => {})
    }
    return {
      node: result.node,
      exitCode: result.exitCode,
      outcome: result.outcome,
      message: result.message,
      ms: result.ms,
      stdout: Buffer.from(result.stdout).toString('base64'),
      stderr: Buffer.from(result.stderr).toString('base64')
    }
  })
}
