// Edge functions: any member may ask this node to run a Wasm artifact under WASI (protocols/invoke.ts),
// and this node may ask any other. The serving node fetches the artifact if it lacks it (verified
// by the artifacts feature), runs it in its own sandboxed runtime, and answers 'busy' beyond its
// capacity rather than queueing without bound. Who may call is the membership gate's job.
import { parsePeerOrDid } from '../identity/did-key.ts'
import { failure, invokeProtocol, validateRequest } from '../protocols/invoke.ts'
import { parseArtifactRef } from '../registry/artifact.ts'
import { artifactsOf, requireManifestCid } from './artifacts.ts'
import { UserError } from './errors.ts'
import { protocolPrefix } from './libp2p.ts'
import { createWasmRuntime } from './wasm/runtime.ts'
import { observeInvocation } from './telemetry.ts'
import { tracedCall } from './tracing.ts'
import type { InvokeLimits, InvokeProtocol, InvokeRequest, InvokeResponse } from '../protocols/invoke.ts'
import type { Feature, FeatureFactory } from './feature.ts'
import type { MeshNode } from './mesh-node.ts'
import type { WasmRuntime } from './wasm/runtime.ts'
import type { PeerId } from '@libp2p/interface'

const MiB = 1024 * 1024

export interface FunctionsConfig {
  maxMemoryBytes: number
  timeoutMs: number
  maxOutputBytes: number
  /** Calls running at once. */
  maxConcurrent: number
  /** Calls waiting for a slot before new ones are answered 'busy'. */
  maxQueued: number
  /** How long the serving node may spend fetching an artifact it lacks. */
  fetchTimeoutMs: number
}

export const DEFAULT_FUNCTIONS: FunctionsConfig = {
  maxMemoryBytes: 64 * MiB,
  timeoutMs: 10_000,
  maxOutputBytes: 1 * MiB,
  maxConcurrent: 1,
  maxQueued: 4,
  fetchTimeoutMs: 30_000
}

export interface Invocation {
  args?: string[]
  env?: Record<string, string>
  stdin?: Uint8Array
  limits?: InvokeLimits
}

export interface Functions extends Feature {
  /**
   * Runs an artifact (`ref`: manifest CID or name@version) here, or on `on` (peer ID or did:key).
   * The reference is resolved here, so the serving node is always told an exact manifest CID.
   */
  invoke: (ref: string, call: Invocation, options?: { on?: string, signal?: AbortSignal }) => Promise<InvokeResponse & { node: string }>
  stats: () => ReturnType<WasmRuntime['stats']> & { inFlight: number, busy: number }
}

export function functionsOf (node: MeshNode): Functions {
  const feature = node.features.get('functions')
  if (feature == null) throw new UserError('this node does not run the functions feature')
  return feature as Functions
}

export const functions: FeatureFactory = (node, init) => {
  const given = (init.config?.functions ?? {}) as Partial<FunctionsConfig>
  const config: FunctionsConfig = { ...DEFAULT_FUNCTIONS, ...given }
  let runtime: WasmRuntime | undefined
  let inFlight = 0
  let busy = 0

  /** Runs a request on this node, whoever asked. Answers every failure; never throws. */
  async function run (request: InvokeRequest, signal?: AbortSignal): Promise<InvokeResponse> {
    const started = performance.now()
    if (runtime == null) return failure('error', 'the functions runtime is not running')
    if (inFlight >= config.maxConcurrent + config.maxQueued) {
      busy++
      return failure('busy', `node ${node.peerId} is at capacity (${inFlight} calls running or waiting); try another node`)
    }
    inFlight++
    try {
      const fetchSignal = AbortSignal.any([AbortSignal.timeout(config.fetchTimeoutMs), ...(signal != null ? [signal] : [])])
      let fetched
      try {
        fetched = await artifactsOf(node).fetch(request.artifact.toString(), { signal: fetchSignal })
      } catch (err: any) {
        const why = fetchSignal.aborted ? `not found within ${config.fetchTimeoutMs / 1000}s` : err.message
        return failure('error', `cannot get artifact ${request.artifact}: ${why}`, performance.now() - started)
      }
      const { entry, bytes } = fetched
      // The publisher's limits lower the caller's defaults; the runtime clamps both to its own.
      const limits: InvokeLimits = { ...entry.limits, ...request.limits }
      const result = await runtime.invoke(entry.cid, bytes, { args: request.args, env: request.env, stdin: request.stdin, limits })
      return {
        exitCode: result.exitCode,
        stdout: result.stdout,
        stderr: result.stderr,
        outcome: result.outcome,
        ...(result.message != null ? { message: result.message } : {}),
        ms: performance.now() - started
      }
    } catch (err: any) {
      return failure('error', err.message ?? String(err), performance.now() - started)
    } finally {
      inFlight--
    }
  }

  // libp2p exists only once the node has started.
  let protocol: InvokeProtocol | undefined

  /**
   * Says why a peer would not take our call when it is a matter of membership: libp2p itself only
   * reports a hang-up ("Remote closed connection during opening"). Members gate the invoke
   * protocol, and a peer of another network never identifies as serving ours (and, refused for
   * that, is dropped from the peer store).
   */
  async function whyRefused (peer: PeerId, err: Error): Promise<string> {
    const community = node.community
    if (community != null && community.roleOf(node.did) === 'none') {
      return `this node is not a member of ${community.name} (it holds no membership credential), and only members may invoke; join with an invite`
    }
    const wanted = `${protocolPrefix(node.network)}/invoke/1.0.0`
    const refused = node.refusal(peer)
    if (refused != null) {
      const kept = `this node refused it (${refused.reason}) and keeps it out until ${new Date(refused.until).toISOString()}`
      return refused.reason === 'wrong-network'
        ? `it does not serve ${wanted}: it is not a node of this node's network (${community?.name ?? node.network}); ${kept}`
        : kept
    }
    const known = await node.libp2p.peerStore.get(peer).catch(() => undefined)
    if (known == null) return `${err.message} (no known address or protocols: is it in this node's network, ${community?.name ?? node.network}?)`
    if (known.protocols.length > 0 && !known.protocols.includes(wanted)) {
      return `it does not serve ${wanted}: it is not a node of this node's network (${community?.name ?? node.network}), or does not accept this node as a member`
    }
    return err.message
  }

  const self: Functions = {
    async start () {
      runtime = createWasmRuntime({
        maxMemoryBytes: config.maxMemoryBytes,
        timeoutMs: config.timeoutMs,
        maxOutputBytes: config.maxOutputBytes,
        maxConcurrent: config.maxConcurrent,
        maxQueued: config.maxQueued
      })
      protocol = invokeProtocol({ libp2p: node.libp2p }, {
        protocolPrefix: protocolPrefix(node.network),
        run: async (request, from) => observeInvocation(node, request, from.toString(), async () => run(request))
      })
      await protocol.start()
    },

    async stop () {
      await protocol?.stop()
      await runtime?.close()
      runtime = undefined
    },

    gatedProtocols: () => [`${protocolPrefix(node.network)}/invoke/1.0.0`],

    async invoke (ref, call, options = {}) {
      let peer: PeerId | undefined
      if (options.on != null) {
        peer = parsePeerOrDid(options.on)
        if (peer.equals(node.peerId)) peer = undefined
      }
      // A manifest CID goes to the serving node as it is (it verifies what it runs, this node
      // included); only a name is resolved here, so that the serving node is told an exact manifest.
      const parsed = parseArtifactRef(ref)
      if (parsed.kind === 'cid') requireManifestCid(ref, parsed.cid)
      const manifestCid = parsed.kind === 'cid'
        ? parsed.cid
        : (await artifactsOf(node).resolve(ref, { signal: options.signal })).manifestCid
      const request = validateRequest({ artifact: manifestCid, args: call.args, env: call.env, stdin: call.stdin, limits: call.limits })
      if (peer == null || protocol == null) return { ...await observeInvocation(node, request, undefined, async () => run(request, options.signal)), node: node.peerId.toString() }
      try {
        const p = protocol
        const to = peer
        return { ...await tracedCall(to.toString(), request, async (req) => p.call(to, req, { signal: options.signal })), node: peer.toString() }
      } catch (err: any) {
        if (options.signal?.aborted === true) throw err
        throw new UserError(`cannot invoke on ${peer}: ${await whyRefused(peer, err)}`)
      }
    },

    stats () {
      const s = runtime?.stats() ?? { invocations: 0, outcomes: {} as any, compiles: 0, cacheHits: 0, cachedModules: 0, workers: 0, running: 0, queued: 0 }
      return { ...s, inFlight, busy }
    }
  }
  return self
}
