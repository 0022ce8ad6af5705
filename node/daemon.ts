// `mesh start`: open the repo, start the node and its API, run until a signal, stop cleanly.
import { createApi } from './api.ts'
import { UserError } from './errors.ts'
import { MeshNode, parseMultiaddr } from './mesh-node.ts'
import { Repo } from './repo.ts'
import type { MeshConfig } from './repo.ts'
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
  node: MeshNode
  api: FastifyInstance
  apiAddress: string
  stop: () => Promise<void>
}

export async function startDaemon (opts: DaemonOptions): Promise<Daemon> {
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
  const node = new MeshNode({
    privateKey,
    network: config.network,
    listen: config.listen,
    bootstrap: config.bootstrap,
    region: config.region,
    storePath: { blocks: repo.blocksPath, datastore: repo.datastorePath }
  })
  let api: FastifyInstance | undefined
  try {
    await node.start()
    api = createApi({ node, token })
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
  const apiAddress = typeof address === 'object' && address != null ? `${apiHost}:${address.port}` : config.api
  await repo.setApi(apiAddress)

  let stopped: Promise<void> | undefined
  return {
    node,
    api,
    apiAddress,
    stop: async () => {
      stopped ??= (async () => {
        await repo.unlock()
        await api.close().catch(() => {})
        await node.stop()
      })()
      return stopped
    }
  }
}

function parseHostPort (text: string): [string, number] {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(text)
  const port = Number(m?.[2])
  if (m == null || port > 65535) throw new UserError(`--api wants HOST:PORT (like 127.0.0.1:5080), got ${text}`)
  return [m[1].replace(/^\[|\]$/g, ''), port]
}
