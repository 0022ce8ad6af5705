// The membership handshake settles on the key alone where the key decides (a root; any unrevoked
// peer of an open network), and a presentation that arrives afterwards can still raise the role.
// In-process MeshNodes over real TCP on 127.0.0.1 with real Noise.
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { didOfKey } from '../../identity/credentials.ts'
import { createGenesis, createRevocation, issueMembership } from '../../identity/network.ts'
import { Community } from '../../node/community.ts'
import { dhtProtocol } from '../../node/libp2p.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { tempDirs, waitFor } from '../helpers/process.ts'
import type { PrivateKey } from '@libp2p/interface'

const dirs = await tempDirs()
const nodes: MeshNode[] = []
after(async () => {
  for (const node of nodes) await node.stop().catch(() => {})
  await dirs.cleanup()
})

async function start (key: PrivateKey, genesis: Awaited<ReturnType<typeof createGenesis>>, credential?: string): Promise<MeshNode> {
  const node = new MeshNode({ privateKey: key, community: await Community.create(await dirs.make(), genesis, credential), gossip: false, minPeers: 0 })
  nodes.push(node)
  await node.start()
  return node
}

/** One DHT ping from `from` to `to`: a gated protocol, so it needs both verdicts. */
async function dhtPing (from: MeshNode, to: MeshNode): Promise<void> {
  const signal = AbortSignal.timeout(10_000)
  const stream = await from.libp2p.dialProtocol(to.peerId, dhtProtocol(from.network), { signal })
  const lp = lpStream(stream)
  await lp.write(Uint8Array.of(0x08, 0x05), { signal })
  assert.deepEqual([...(await lp.read({ signal })).subarray()], [0x08, 0x05])
  await stream.close()
}

const role = (node: MeshNode, peer: MeshNode): string | undefined => node.peers().find(p => p.peerId === peer.peerId.toString() && p.authenticated)?.role

test('open network: members without credentials pass, an admin credential still raises the role, a revoked key is refused', async () => {
  const rootKey = await generateKeyPair('Ed25519')
  const adminKey = await generateKeyPair('Ed25519')
  const revokedKey = await generateKeyPair('Ed25519')
  const genesis = await createGenesis({ key: rootKey, name: 'early-open', open: true })
  const adminCredential = await issueMembership({ key: rootKey, genesis, subject: didOfKey(adminKey), role: 'admin', expiresIn: 3600 })
  const root = await start(rootKey, genesis)
  await root.revoke(await createRevocation({ key: rootKey, genesis, target: didOfKey(revokedKey) }))
  const member = await start(await generateKeyPair('Ed25519'), genesis)
  const admin = await start(adminKey, genesis, adminCredential)
  const revoked = await start(revokedKey, genesis)

  await member.libp2p.dial(root.libp2p.getMultiaddrs()[0])
  await dhtPing(member, root)
  assert.equal(await waitFor('root sees the member', () => role(root, member)), 'member')
  assert.equal(await waitFor('the member sees the root', () => role(member, root)), 'root')

  await admin.libp2p.dial(root.libp2p.getMultiaddrs()[0])
  await dhtPing(admin, root)
  assert.equal(await waitFor('root sees the admin as admin', () => role(root, admin) === 'admin' ? 'admin' : undefined), 'admin')

  await revoked.libp2p.dial(root.libp2p.getMultiaddrs()[0]).catch(() => {})
  await waitFor('the revoked key is refused and counted', () => (root.counters.peersRejected.get('revoked') ?? 0) > 0)
  await waitFor('and hung up on', () => root.libp2p.getConnections(revoked.peerId).length === 0)
  assert.equal(role(root, revoked), undefined)
})

test('closed network: the root is settled on its key, a member still has to present its credential', async () => {
  const rootKey = await generateKeyPair('Ed25519')
  const memberKey = await generateKeyPair('Ed25519')
  const genesis = await createGenesis({ key: rootKey, name: 'early-closed' })
  const credential = await issueMembership({ key: rootKey, genesis, subject: didOfKey(memberKey), role: 'member', expiresIn: 3600 })
  const root = await start(rootKey, genesis)
  const member = await start(memberKey, genesis, credential)
  const outsider = await start(await generateKeyPair('Ed25519'), genesis)

  await member.libp2p.dial(root.libp2p.getMultiaddrs()[0])
  await dhtPing(member, root)
  assert.equal(await waitFor('root sees the member', () => role(root, member)), 'member')
  assert.equal(await waitFor('the member sees the root', () => role(member, root)), 'root')

  // the outsider settles the root early, but the root refuses the outsider, which has no credential
  await outsider.libp2p.dial(root.libp2p.getMultiaddrs()[0]).catch(() => {})
  await waitFor('the outsider is refused', () => (root.counters.peersRejected.get('no-credential') ?? 0) > 0)
  await waitFor('and hung up on', () => root.libp2p.getConnections(outsider.peerId).length === 0)
})
