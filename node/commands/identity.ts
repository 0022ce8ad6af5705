// Identity commands: community networks (create, invite, join, revoke), DIDs and credentials.
// `did resolve` and `vc issue/verify` need no running node; the network commands are API clients,
// except `join`, which writes the repo itself when no node runs on it.
import { client, collect, globals, parseDuration, print } from '../cli-kit.ts'
import { UserError } from '../errors.ts'
import { Repo } from '../repo.ts'
import type { CommandModule } from '../cli-kit.ts'

export const identityCommands: CommandModule = (program) => {
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
      const { joinRepo } = await import('../daemon.ts')
      const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
      const { didFromPeerId } = await import('../../identity/did-key.ts')
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
      const { didResolver } = await import('../../identity/resolver.ts')
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
      const { issueCredential } = await import('../../identity/credentials.ts')
      const { parsePeerOrDid } = await import('../../identity/did-key.ts')
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
      const { verifyCredential, CredentialError } = await import('../../identity/credentials.ts')
      const { didResolver } = await import('../../identity/resolver.ts')
      try {
        const v = await verifyCredential(jwt.trim(), { resolver: didResolver({ allowInsecureLocalhost: o.insecureLocalhost === true, timeoutMs: opts.timeout }) })
        print(opts, { valid: true, ...v }, () => [`valid     yes`, `issuer    ${v.issuer}`, `subject   ${v.subject}`, `types     ${v.types.join(', ')}`,
          `id        ${v.id ?? '-'}`, `expires   ${v.expiresAt?.toISOString() ?? 'never'}`, `claims    ${JSON.stringify(v.claims)}`].join('\n'))
      } catch (err: any) {
        if (err instanceof CredentialError) throw new UserError(`invalid credential (${err.reason}): ${err.message}`)
        throw err
      }
    })
}
