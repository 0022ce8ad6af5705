// `mesh start`: open the repo, start the node and its API, run until a signal, stop cleanly.
// The daemon outlives its node: creating or joining a community network restarts the node under
// the network's protocol prefix while the API (and the CLI's view of it) stays where it is.
import { createApi } from './api.ts'
import { nodeFeatures } from './features.ts'
import { Community } from './community.ts'
import { UserError } from './errors.ts'
import { tuneGarbageCollection } from './gc-tuning.ts'
import { MeshNode, parseMultiaddr } from './mesh-node.ts'
import { Repo } from './repo.ts'
import { libp2pMetrics, useRegistry } from './telemetry.ts'
import { Registry } from 'prom-client'
import { createGenesis, createInvite, issueMembership, parseInvite, createRevocation } from '../identity/network.ts'
import { didFromPeerId } from '../identity/did-key.ts'
import type { MeshConfig } from './repo.ts'
import type { PrivateKey } from '@libp2p/interface'
import type { FastifyInstance } from 'fastify'

export interface DaemonOptions {
  repo: string
  listen?: string[]
  api?: string
  bootstrap?: string[]
  network?: string
  region?: string
}

export interface Daemon {
  readonly node: MeshNode
  readonly repo: Repo
  /** The node's identity key, for what the node signs on request (credentials, invites). */
  readonly privateKey: PrivateKey
  api: FastifyInstance
  apiAddress: string
  createNetwork: (name: string, open: boolean) => Promise<NetworkSummary>
  invite: (did: string, role: 'member' | 'admin', expiresInMs?: number) => Promise<{ invite: string, credentialId?: string, expiresAt?: string }>
  join: (invite: string) => Promise<NetworkSummary>
  revoke: (target: string) => Promise<{ target: string }>
  stop: () => Promise<void>
}

export interface NetworkSummary { id: string, name: string, open: boolean, roots: string[], role: string }

export async function startDaemon (opts: DaemonOptions): Promise<Daemon> {
  tuneGarbageCollection()
  const repo = new Repo(opts.repo)
  const overrides: Partial<MeshConfig> = {}
  if (opts.listen != null && opts.listen.length > 0) overrides.listen = opts.listen
  if (opts.api != null) overrides.api = opts.api
  if (opts.bootstrap != null && opts.bootstrap.length > 0) overrides.bootstrap = opts.bootstrap
  if (opts.network != null) overrides.network = opts.network
  if (opts.region != null) overrides.region = opts.region
  if (!repo.exists()) await repo.init(overrides)
  const config = { ...await repo.loadConfig(), ...overrides }
  config.listen.forEach(parseMultiaddr)
  config.bootstrap.forEach(parseMultiaddr)
  const [apiHost, apiPort] = parseHostPort(config.api)

  const privateKey = await repo.loadKey()
  await repo.lock()
  const token = await repo.apiToken()
  let community: Community | undefined
  let node: MeshNode
  let api: FastifyInstance | undefined
  try {
    community = await Community.load(repo.path)
    if (community != null && opts.network != null && opts.network !== community.id) {
      throw new UserError(`${repo.path} belongs to community network ${community.name} (${community.id}); --network cannot move it`)
    }
    node = await startNode(privateKey, repo, config, community)
  } catch (err) {
    await repo.unlock()
    throw err
  }

  let stopped: Promise<void> | undefined
  // One network change at a time; the API waits on it rather than seeing a half-started node.
  let switching: Promise<unknown> = Promise.resolve()

  async function switchTo (next: Community, bootstrap: string[]): Promise<void> {
    const old = node
    // Keep the ports: peers and invites already carry this node's addresses.
    config.listen = keepPorts(config.listen, old.identity().addresses)
    await old.stop()
    community = next
    config.bootstrap = bootstrap
    node = await startNode(privateKey, repo, config, next)
  }

  function summary (): NetworkSummary {
    const c = node.identity().community
    if (c == null) throw new UserError('this node is in no community network')
    return c
  }

  async function exclusive<T> (fn: () => Promise<T>): Promise<T> {
    const run = switching.catch(() => {}).then(fn)
    switching = run
    return run
  }

  const daemon: Daemon = {
    get node () { return node },
    repo,
    privateKey,
    api: undefined as any,
    apiAddress: '',
    createNetwork: async (name, open) => exclusive(async () => {
      if (community != null) throw new UserError(`this node already belongs to community network ${community.name} (${community.id})`)
      const genesis = await createGenesis({ key: privateKey, name, open })
      await node.helia.blockstore.put(genesis.cid, genesis.bytes)
      const next = await Community.create(repo.path, genesis)
      await repo.saveConfig({ ...await repo.loadConfig(), network: genesis.id })
      await switchTo(next, [])
      await node.helia.blockstore.put(genesis.cid, genesis.bytes)
      return summary()
    }),
    invite: async (did, role, expiresInMs) => {
      if (community == null) throw new UserError('this node is in no community network; create one first (`mesh network create <name>`)')
      const mine = community.roleOf(didFromPeerId(node.peerId))
      if (mine !== 'root' && mine !== 'admin') throw new UserError(`only a root or an admin of ${community.name} can invite (this node is ${mine})`)
      if (mine === 'admin' && role === 'admin') throw new UserError('only a root can appoint admins')
      let credential: string | undefined
      if (!community.genesis.record.policy.open || role === 'admin') {
        credential = await issueMembership({
          key: privateKey,
          genesis: community.genesis,
          subject: did,
          role,
          adminCredential: mine === 'admin' ? community.credential : undefined,
          expiresIn: expiresInMs != null ? Math.round(expiresInMs / 1000) : undefined
        })
      }
      const bootstrap = node.identity().addresses.slice(0, 8)
      const invite = createInvite({ genesis: community.genesis, bootstrap, credential })
      const { decodeJwt } = await import('../identity/credentials.ts')
      const payload = credential != null ? decodeJwt(credential).payload : undefined
      return {
        invite,
        credentialId: payload?.jti as string | undefined,
        expiresAt: typeof payload?.exp === 'number' ? new Date(payload.exp * 1000).toISOString() : undefined
      }
    },
    join: async (text) => exclusive(async () => {
      const invite = await joinRepo(repo, text, didFromPeerId(node.peerId))
      const next = await Community.load(repo.path)
      await switchTo(next!, invite.bootstrap)
      await node.helia.blockstore.put(invite.genesis.cid, invite.genesis.bytes)
      return summary()
    }),
    revoke: async (target) => {
      if (community == null) throw new UserError('this node is in no community network')
      const mine = community.roleOf(didFromPeerId(node.peerId))
      if (mine !== 'root' && mine !== 'admin') throw new UserError(`only a root or an admin of ${community.name} can revoke (this node is ${mine})`)
      const token = await createRevocation({
        key: privateKey,
        genesis: community.genesis,
        target,
        adminCredential: mine === 'admin' ? community.credential : undefined
      })
      await node.revoke(token)
      return { target }
    },
    stop: async () => {
      stopped ??= (async () => {
        await repo.unlock()
        await api?.close().catch(() => {})
        await switching.catch(() => {})
        await node.stop()
      })()
      return stopped
    }
  }

  try {
    api = createApi({ daemon, token })
    try {
      await api.listen({ host: apiHost, port: apiPort })
    } catch (err: any) {
      throw new UserError(`cannot serve the API on ${config.api}: ${err.code === 'EADDRINUSE' ? 'address already in use' : err.message}`)
    }
  } catch (err) {
    await api?.close().catch(() => {})
    await node.stop().catch(() => {})
    await repo.unlock()
    throw err
  }
  const address = api.server.address()
  daemon.api = api
  daemon.apiAddress = typeof address === 'object' && address != null ? `${apiHost}:${address.port}` : config.api
  await repo.setApi(daemon.apiAddress)
  return daemon
}

async function startNode (privateKey: PrivateKey, repo: Repo, config: MeshConfig, community: Community | undefined): Promise<MeshNode> {
  const registry = new Registry()
  const node = new MeshNode({
    metrics: libp2pMetrics(registry),
    privateKey,
    network: config.network,
    listen: config.listen,
    bootstrap: config.bootstrap,
    region: config.region,
    community,
    storePath: { blocks: repo.blocksPath, datastore: repo.datastorePath },
    features: nodeFeatures,
    repoPath: repo.path,
    config: config as unknown as Record<string, unknown>
  })
  useRegistry(node, registry)
  await node.start()
  return node
}

/**
 * Writes an invite into a repo: the network, this node's credential, and the network's ID and
 * bootstrap list into its config. Used by a running node and by `mesh join` when none runs.
 */
export async function joinRepo (repo: Repo, text: string, did: string): Promise<Awaited<ReturnType<typeof parseInvite>>> {
  let invite
  try {
    invite = await parseInvite(text.trim())
  } catch (err: any) {
    throw new UserError(`not a valid invite: ${err.message}`)
  }
  if (invite.credential != null) {
    const { decodeJwt } = await import('../identity/credentials.ts')
    const subject = (decodeJwt(invite.credential).payload.sub as string | undefined)
    if (subject !== did) throw new UserError(`this invite was issued to ${subject}, not to this node (${did})`)
  }
  const existing = await Community.load(repo.path)
  if (existing != null && existing.id !== invite.genesis.id) {
    throw new UserError(`this node already belongs to community network ${existing.name} (${existing.id})`)
  }
  await Community.create(repo.path, invite.genesis, invite.credential)
  await repo.saveConfig({ ...await repo.loadConfig(), network: invite.genesis.id, bootstrap: invite.bootstrap })
  return invite
}

/** Listen addresses with each `/tcp/0` replaced by a port the running node actually bound. */
export function keepPorts (listen: string[], bound: string[]): string[] {
  const explicit = new Set(listen.map(l => /\/tcp\/(\d+)/.exec(l)?.[1]).filter(p => p != null && p !== '0'))
  const ports = [...new Set(bound.map(b => /\/tcp\/(\d+)/.exec(b)?.[1]).filter((p): p is string => p != null && !explicit.has(p)))]
  return listen.map(l => /\/tcp\/0(\/|$)/.test(l) && ports.length > 0 ? l.replace(/\/tcp\/0(?=\/|$)/, `/tcp/${ports.shift()}`) : l)
}

function parseHostPort (text: string): [string, number] {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(text)
  const port = Number(m?.[2])
  if (m == null || port > 65535) throw new UserError(`--api wants HOST:PORT (like 127.0.0.1:5080), got ${text}`)
  return [m[1].replace(/^\[|\]$/g, ''), port]
}
