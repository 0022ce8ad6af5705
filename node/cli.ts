// The `mesh` command line. Every command takes --repo, --json, --timeout and --debug; results go to
// stdout, progress and logs to stderr, and a failure is one line on stderr with a non-zero exit.
import { readFile, writeFile } from 'node:fs/promises'
import { Command, CommanderError, Option } from 'commander'
import { client, collect, globals, parseDuration, print } from './cli-kit.ts'
import { commandModules } from './commands/index.ts'
import { UserError } from './errors.ts'
import { Repo, defaultRepoPath } from './repo.ts'

const program = new Command('mesh')
  .description('a peer-to-peer edge mesh node')
  .addOption(new Option('--repo <dir>', 'the node\'s repo folder').env('MESH_REPO').default(defaultRepoPath(), '$MESH_REPO or ~/.mesh'))
  .option('--json', 'machine-readable output on stdout')
  .option('--debug', 'print stack traces on errors')
  .option('--timeout <duration>', 'how long to wait on the network (30s, 2m, 500ms)', parseDuration, 30_000)
  .exitOverride()
  .configureOutput({ outputError: (str, write) => { write(str.replace(/^error: /, 'mesh: ')) } })
  .showSuggestionAfterError(true)

program.command('init')
  .description('create a repo: identity key (0600) and config; never overwrites an identity')
  .option('--network <name>', 'the network this node joins', 'default')
  .action(async (o, cmd) => {
    const opts = globals(cmd)
    const repo = new Repo(opts.repo)
    await repo.init({ network: o.network })
    const key = await repo.loadKey()
    const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
    const { didFromPeerId } = await import('../identity/did-key.ts')
    const id = peerIdFromPrivateKey(key)
    print(opts, { repo: repo.path, peerId: id.toString(), did: didFromPeerId(id) },
      () => `initialized ${repo.path}\npeer ID  ${id}\nDID      ${didFromPeerId(id)}`)
  })

program.command('start')
  .description('run a node in the foreground until SIGINT or SIGTERM')
  .option('--listen <multiaddr>', 'listen address (repeatable)', collect)
  .option('--api <host:port>', 'HTTP API address')
  .option('--bootstrap <multiaddr>', 'a peer to join the mesh through (repeatable)', collect)
  .option('--network <name>', 'network name (protocol prefix of the DHT and every Mesh protocol)')
  .option('--region <region>', 'this node\'s region, e.g. eu-west')
  .option('--log-level <level>', 'fatal, error, warn (default), info, debug, trace or silent; logs are JSON lines on stderr')
  .action(async (o, cmd) => {
    const opts = globals(cmd)
    const { setupLogging } = await import('./log.ts')
    const { startTracing } = await import('./tracing.ts')
    try { setupLogging(o.logLevel) } catch (err: any) { throw new UserError(err.message) }
    const tracing = await startTracing()
    // Loaded here so that the client commands start fast: the node's stack is heavy.
    const { startDaemon } = await import('./daemon.ts')
    const daemon = await startDaemon({ repo: opts.repo, listen: o.listen, api: o.api, bootstrap: o.bootstrap, network: o.network, region: o.region })
    const id = daemon.node.identity()
    tracing.setNodeAttributes({ 'service.instance.id': id.peerId, 'mesh.node.did': id.did })
    // Signal handlers go in before the ready line: whoever reads that line may signal at once.
    const stopped = new Promise<void>((resolve) => {
      let signals = 0
      const onSignal = (sig: string): void => {
        if (++signals > 1) {
          process.stderr.write(`mesh: second ${sig}, exiting now\n`)
          process.exit(130)
        }
        process.stderr.write(`mesh: ${sig}, stopping (again to force)\n`)
        // A peer that never answers must not keep us up: the stop gets 5 s, then we leave anyway.
        const force = setTimeout(() => { process.stderr.write('mesh: stop took over 5s, exiting\n'); process.exit(1) }, 5_000)
        force.unref()
        daemon.stop().then(() => { clearTimeout(force); resolve() }, (err) => {
          process.stderr.write(`mesh: error while stopping: ${err.message}\n`)
          process.exit(1)
        })
      }
      process.on('SIGINT', onSignal)
      process.on('SIGTERM', onSignal)
    })
    // One line of JSON, so a supervisor (or a test) can read it as soon as the node is up.
    if (opts.json === true) process.stdout.write(JSON.stringify({ ...id, api: `http://${daemon.apiAddress}` }) + '\n')
    else process.stdout.write([
      `peer ID   ${id.peerId}`,
      `DID       ${id.did}`,
      `network   ${id.network}`,
      ...id.addresses.map(a => `listening ${a}`),
      `API       http://${daemon.apiAddress}`,
      'node ready; Ctrl-C stops it'
    ].join('\n') + '\n')
    await stopped
    await tracing.shutdown()
    process.stderr.write('mesh: stopped\n')
    process.exit(0)
  })

program.command('id')
  .description('this node\'s peer ID, DID, addresses and network')
  .action(async (_o, cmd) => {
    const id = await (await client(cmd)).get('/v1/id')
    print(globals(cmd), id, () => [
      `peer ID   ${id.peerId}`, `DID       ${id.did}`,
      id.community != null ? `network   ${id.community.name} (${id.network}), ${id.community.role}` : `network   ${id.network}`,
      ...id.addresses.map((a: string) => `address   ${a}`)
    ].join('\n'))
  })

program.command('peers')
  .description('connected peers')
  .action(async (_o, cmd) => {
    const { peers } = await (await client(cmd)).get('/v1/peers')
    print(globals(cmd), peers, () => peers.length === 0
      ? 'no peers'
      : peers.map((p: any) => `${p.peerId}  ${p.address}  ${p.authenticated ? `authenticated ${p.role}` : 'unauthenticated'}  ${p.rttMs != null ? `${p.rttMs} ms` : '-'}\n  ${p.did}`).join('\n'))
  })

program.command('connect')
  .description('connect to a peer by multiaddr or peer ID')
  .argument('<address>', 'multiaddr, or peer ID (looked up in the DHT)')
  .action(async (address, _o, cmd) => {
    const peer = await (await client(cmd)).post('/v1/peers', { address })
    print(globals(cmd), peer, () => `connected to ${peer.peerId} at ${peer.address}`)
  })

const routing = program.command('routing').description('DHT operations')
routing.command('findpeer')
  .description('look a peer up in the DHT')
  .argument('<peer>', 'peer ID or did:key')
  .action(async (peer, _o, cmd) => {
    const found = await (await client(cmd)).get(`/v1/routing/findpeer/${encodeURIComponent(peer)}`)
    print(globals(cmd), found, () => found.addresses.join('\n'))
  })

const block = program.command('block').description('raw blocks in the node\'s blockstore')
block.command('put')
  .description('store a file as a raw block; prints its CID')
  .argument('<file>')
  .action(async (file, _o, cmd) => {
    let bytes: Uint8Array
    try { bytes = await readFile(file) } catch (err: any) { throw new UserError(`cannot read ${file}: ${err.code ?? err.message}`) }
    const res = await (await client(cmd)).postBytes('/v1/blocks', bytes)
    print(globals(cmd), res, () => res.cid)
  })
block.command('get')
  .description('print a block (fetched from peers if this node lacks it)')
  .argument('<cid>')
  .option('-o, --output <file>', 'write to a file instead of stdout')
  .action(async (cid, o, cmd) => {
    const bytes = await (await client(cmd)).getBytes(`/v1/blocks/${encodeURIComponent(cid)}`)
    if (o.output != null) await writeFile(o.output, bytes)
    else process.stdout.write(bytes)
  })

for (const add of commandModules) add(program)

async function main (): Promise<void> {
  try {
    await program.parseAsync(process.argv)
  } catch (err: any) {
    if (err instanceof CommanderError) {
      // Commander has already printed its one line (or the help text).
      process.exit(err.exitCode)
    }
    const debug = process.argv.includes('--debug')
    if (debug) process.stderr.write(`${err.stack ?? err}\n`)
    else process.stderr.write(`mesh: ${err instanceof UserError ? err.message : (err.message ?? String(err))}\n`)
    process.exit(err instanceof UserError ? err.exitCode : 1)
  }
}

await main()
