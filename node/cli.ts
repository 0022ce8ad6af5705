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

const network = program.command('network').description('community networks: create, invite, revoke')
network.command('show', { isDefault: true })
  .description('the network this node is in')
  .action(async (_o, cmd) => {
    const n = await (await client(cmd)).get('/v1/network')
    print(globals(cmd), n, () => [`network   ${n.name} (${n.id})`, `policy    ${n.open ? 'open' : 'members only'}`, `role      ${n.role}`, ...n.roots.map((r: string) => `root      ${r}`)].join('\n'))
  })
network.command('create')
  .description('create a community network with this node as its root, and move the node into it')
  .argument('<name>')
  .option('--open', 'admit any node without an invite (revocations still apply)')
  .action(async (name, o, cmd) => {
    const n = await (await client(cmd)).post('/v1/networks', { name, open: o.open === true })
    print(globals(cmd), n, () => `created network ${n.name}\nID        ${n.id}\nnext: mesh network invite <did>`)
  })
network.command('invite')
  .description('issue a membership credential for a DID and print an invite for it')
  .argument('<did>', 'the invitee\'s DID (its `mesh id`)')
  .option('--role <role>', 'member or admin', 'member')
  .option('--expires <duration>', 'how long the membership lasts (30d, 12h)', parseDuration)
  .action(async (did, o, cmd) => {
    if (o.role !== 'member' && o.role !== 'admin') throw new UserError(`--role is member or admin, not ${o.role}`)
    const r = await (await client(cmd)).post('/v1/networks/invites', { did, role: o.role, expiresInMs: o.expires })
    print(globals(cmd), r, () => r.invite)
  })
network.command('revoke')
  .description('revoke a member (by DID) or one credential (by its urn:uuid ID); spreads to every member')
  .argument('<target>')
  .action(async (target, _o, cmd) => {
    const r = await (await client(cmd)).post('/v1/networks/revocations', { target })
    print(globals(cmd), r, () => `revoked ${r.target}`)
  })

program.command('join')
  .description('join a community network with an invite (the running node moves into it, or the next start does)')
  .argument('<invite>', 'the meshinvite1… token')
  .action(async (invite, _o, cmd) => {
    const opts = globals(cmd)
    const repo = new Repo(opts.repo)
    if ((await repo.running()) != null) {
      const n = await (await client(cmd)).post('/v1/networks/join', { invite })
      print(opts, n, () => `joined ${n.name} (${n.id}) as ${n.role}`)
      return
    }
    const { joinRepo } = await import('./daemon.ts')
    const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
    const { didFromPeerId } = await import('../identity/did-key.ts')
    if (!repo.exists()) await repo.init()
    const did = didFromPeerId(peerIdFromPrivateKey(await repo.loadKey()))
    const joined = await joinRepo(repo, invite, did)
    const n = { id: joined.genesis.id, name: joined.genesis.record.name, bootstrap: joined.bootstrap }
    print(opts, n, () => `joined ${n.name} (${n.id}); \`mesh start\` connects to it`)
  })

const did = program.command('did').description('decentralized identifiers')
did.command('resolve')
  .description('print the DID document of a did:key, did:jwk or did:web (no node needed)')
  .argument('<did>')
  .option('--insecure-localhost', 'let did:web use plain http, for localhost only (tests, local demos)')
  .action(async (text, o, cmd) => {
    const { didResolver } = await import('../identity/resolver.ts')
    const doc = await didResolver({ allowInsecureLocalhost: o.insecureLocalhost === true, timeoutMs: globals(cmd).timeout }).resolveDid(text)
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n')
  })

const vc = program.command('vc').description('verifiable credentials (vc-jwt, EdDSA)')
vc.command('issue')
  .description('issue a credential signed with this repo\'s key; prints the JWT')
  .requiredOption('--subject <did>', 'whom the credential is about')
  .option('--type <type>', 'credential type (repeatable)', collect)
  .option('--claims <json>', 'claims about the subject, as a JSON object', '{}')
  .option('--expires <duration>', 'lifetime (30d, 12h)', parseDuration)
  .action(async (o, cmd) => {
    const opts = globals(cmd)
    let claims: unknown
    try { claims = JSON.parse(o.claims) } catch (err: any) { throw new UserError(`--claims is not JSON: ${err.message}`) }
    if (typeof claims !== 'object' || claims == null || Array.isArray(claims)) throw new UserError('--claims must be a JSON object')
    const { issueCredential } = await import('../identity/credentials.ts')
    const { parsePeerOrDid } = await import('../identity/did-key.ts')
    if (!o.subject.startsWith('did:')) parsePeerOrDid(o.subject)
    const jwt = await issueCredential({
      key: await new Repo(opts.repo).loadKey(),
      subject: o.subject,
      type: o.type,
      claims: claims as Record<string, unknown>,
      expiresIn: o.expires != null ? Math.round(o.expires / 1000) : undefined
    })
    print(opts, { jwt }, () => jwt)
  })
vc.command('verify')
  .description('verify a credential: signature, validity period; prints its contents')
  .argument('<jwt>')
  .option('--insecure-localhost', 'let did:web issuers use plain http, for localhost only')
  .action(async (jwt, o, cmd) => {
    const opts = globals(cmd)
    const { verifyCredential, CredentialError } = await import('../identity/credentials.ts')
    const { didResolver } = await import('../identity/resolver.ts')
    try {
      const v = await verifyCredential(jwt.trim(), { resolver: didResolver({ allowInsecureLocalhost: o.insecureLocalhost === true, timeoutMs: opts.timeout }) })
      print(opts, { valid: true, ...v }, () => [`valid     yes`, `issuer    ${v.issuer}`, `subject   ${v.subject}`, `types     ${v.types.join(', ')}`,
        `id        ${v.id ?? '-'}`, `expires   ${v.expiresAt?.toISOString() ?? 'never'}`, `claims    ${JSON.stringify(v.claims)}`].join('\n'))
    } catch (err: any) {
      if (err instanceof CredentialError) throw new UserError(`invalid credential (${err.reason}): ${err.message}`)
      throw err
    }
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
