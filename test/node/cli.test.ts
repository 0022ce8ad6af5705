// Integration: real `mesh` processes on loopback, driven through the CLI and the HTTP API.
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { readFile, stat, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { didFromPeerId, peerIdFromDid } from '../../identity/did-key.ts'
import { mesh, meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'

/** A failure is one line on stderr, a non-zero exit, and no stack trace. */
function assertOneLineError (r: { code: number | null, stderr: string }, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `expected failure, got exit ${r.code}`)
  const lines = r.stderr.split('\n').filter(l => l !== '' && !l.includes('ExperimentalWarning') && !l.startsWith('(node:') && !l.includes('--trace-warnings'))
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${r.stderr}`)
  assert.match(lines[0], pattern)
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
}

describe('mesh CLI and node processes', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const nodes: NodeProcess[] = []

  before(async () => { dirs = await tempDirs() })
  after(async () => {
    await Promise.all(nodes.map(stopNode))
    await dirs.cleanup()
  })

  it('init creates a repo with a private key and refuses to overwrite it', async () => {
    const repo = join(await dirs.make(), 'repo')
    const out = await meshJson(['init', '--repo', repo])
    assert.match(out.peerId, /^12D3KooW/)
    assert.equal(out.did, didFromPeerId(peerIdFromString(out.peerId)))
    const key = await stat(join(repo, 'identity.key'))
    assert.equal(key.mode & 0o777, 0o600)
    JSON.parse(await readFile(join(repo, 'config.json'), 'utf8'))
    const before = await readFile(join(repo, 'identity.key'))
    const again = await mesh(['init', '--repo', repo])
    assertOneLineError(again, /refusing to overwrite/)
    assert.deepEqual(await readFile(join(repo, 'identity.key')), before, 'the identity is untouched')
  })

  let a: NodeProcess
  let b: NodeProcess

  it('start creates the repo, prints peer ID, DID, addresses and API; restart keeps the identity', async () => {
    const repo = join(await dirs.make(), 'a')
    a = await startNode(repo)
    assert.match(a.info.peerId, /^12D3KooW/)
    assert.ok(peerIdFromDid(a.info.did).equals(peerIdFromString(a.info.peerId)), 'the DID is the did:key of the peer key')
    assert.ok(a.info.addresses.some(addr => addr.startsWith('/ip4/127.0.0.1/tcp/')))
    assert.match(a.info.api, /^http:\/\/127\.0\.0\.1:\d+$/)
    const first = a.info
    const code = await stopNode(a)
    assert.equal(code, 0, `SIGTERM stops the node cleanly (signal ${a.child.signalCode}): ${a.stderr()}`)
    a = await startNode(repo)
    nodes.push(a)
    assert.equal(a.info.peerId, first.peerId)
    assert.equal(a.info.did, first.did)
    const id = await meshJson(['id', '--repo', repo])
    assert.equal(id.peerId, first.peerId)
    assert.equal(id.did, first.did)
  })

  it('a node bootstrapped to another lists it as a peer', async () => {
    b = await startNode(join(await dirs.make(), 'b'), ['--bootstrap', a.info.addresses[0]])
    nodes.push(b)
    const peers = await waitFor('B to list A', async () => {
      const list = await meshJson(['peers', '--repo', b.repo])
      return list.find((p: any) => p.peerId === a.info.peerId) != null ? list : undefined
    })
    const entry = peers.find((p: any) => p.peerId === a.info.peerId)
    assert.equal(entry.did, a.info.did)
    assert.match(entry.address, /^\/ip4\/127\.0\.0\.1\/tcp\//)
    const human = await mesh(['peers', '--repo', b.repo])
    assert.equal(human.code, 0)
    assert.ok(human.stdout.includes(a.info.peerId))
  })

  it('finds a peer through DHT lookups and connects to it directly', async () => {
    const more = await Promise.all(['c', 'd', 'e', 'f'].map(async n => startNode(join(await dirs.make(), n), ['--bootstrap', a.info.addresses[0]])))
    nodes.push(...more)
    const k = more[more.length - 1]
    // K is known to A as soon as it has connected; B learns of it only by asking the DHT.
    const found = await waitFor('B to find K in the DHT', async () => {
      const r = await mesh(['routing', 'findpeer', k.info.did, '--repo', b.repo, '--json', '--timeout', '5s'])
      return r.code === 0 ? JSON.parse(r.stdout) : undefined
    })
    assert.equal(found.peerId, k.info.peerId)
    assert.ok(found.queried >= 1, 'the answer came from the network')
    const port = /tcp\/(\d+)/.exec(k.info.addresses[0])![1]
    assert.ok(found.addresses.some((addr: string) => addr.includes(`/tcp/${port}`)), `K's listen address is among ${found.addresses}`)
    const byPeerId = await meshJson(['routing', 'findpeer', k.info.peerId, '--repo', b.repo])
    assert.equal(byPeerId.did, k.info.did)
    const conn = await meshJson(['connect', k.info.peerId, '--repo', b.repo])
    assert.equal(conn.peerId, k.info.peerId)
    const peers = await meshJson(['peers', '--repo', b.repo])
    assert.ok(peers.some((p: any) => p.peerId === k.info.peerId))
  })

  it('a lookup of a peer no one knows fails with a clear line, not a hang', async () => {
    const stranger = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    const r = await mesh(['routing', 'findpeer', stranger.toString(), '--repo', b.repo, '--timeout', '3s'])
    assertOneLineError(r, /not found in the DHT|timed out after 3s waiting for a DHT lookup/)
  })

  it('keeps blocks across a restart and serves them to peers over bitswap', async () => {
    const file = join(await dirs.make(), 'block.bin')
    const bytes = randomBytes(50_000)
    await writeFile(file, bytes)
    const { cid } = await meshJson(['block', 'put', file, '--repo', a.repo])
    assert.match(cid, /^bafk/)
    await stopNode(a)
    nodes.splice(nodes.indexOf(a), 1, a = await startNode(a.repo))
    const out = join(await dirs.make(), 'out.bin')
    assert.equal((await mesh(['block', 'get', cid, '-o', out, '--repo', a.repo])).code, 0)
    assert.deepEqual(await readFile(out), bytes, 'the block survived the restart')
    await meshJson(['connect', a.info.addresses[0], '--repo', b.repo])
    const fetched = join(await dirs.make(), 'fetched.bin')
    const r = await mesh(['block', 'get', cid, '-o', fetched, '--repo', b.repo, '--timeout', '20s'])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(await readFile(fetched), bytes, 'B fetched the exact bytes from A')
  })

  it('a block no one has times out saying what it waited for', async () => {
    const r = await mesh(['block', 'get', 'bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy', '--repo', b.repo, '--timeout', '2s'])
    assertOneLineError(r, /timed out after 2s waiting for block bafkrei/)
  })

  it('nodes of different networks never join each other\'s DHT', async () => {
    const x = await startNode(join(await dirs.make(), 'x'), ['--network', 'other', '--bootstrap', a.info.addresses[0]])
    nodes.push(x)
    assert.equal(x.info.network, 'other')
    await waitFor('A to hang up on X', async () => {
      const peers = await meshJson(['peers', '--repo', a.repo])
      return !peers.some((p: any) => p.peerId === x.info.peerId)
    })
    const r = await mesh(['routing', 'findpeer', b.info.peerId, '--repo', x.repo, '--timeout', '3s'])
    assert.notEqual(r.code, 0, 'X cannot look up B: it is in no routing table of network default')
    const r2 = await mesh(['routing', 'findpeer', x.info.peerId, '--repo', b.repo, '--timeout', '3s'])
    assert.notEqual(r2.code, 0, 'B cannot look up X')
  })

  it('rejects bad input with one clear line', async () => {
    const dir = await dirs.make()
    assertOneLineError(await mesh(['start', '--repo', join(dir, 'm'), '--listen', 'not-a-multiaddr', '--api', '127.0.0.1:0']), /not a valid multiaddr: not-a-multiaddr/)
    assertOneLineError(await mesh(['start', '--repo', join(dir, 'p'), '--listen', a.info.addresses[0].replace(/\/p2p\/.*/, ''), '--api', '127.0.0.1:0']), /cannot listen on \/ip4\/127.0.0.1\/tcp\/\d+: address already in use/)
    const apiPort = new URL(a.info.api).port
    assertOneLineError(await mesh(['start', '--repo', join(dir, 'q'), '--listen', '/ip4/127.0.0.1/tcp/0', '--api', `127.0.0.1:${apiPort}`]), /cannot serve the API on .*address already in use/)
    await writeFile(join(dir, 'file'), 'x')
    assertOneLineError(await mesh(['init', '--repo', join(dir, 'file', 'repo')]), /cannot write the repo/)
    const corrupt = join(dir, 'corrupt')
    await meshJson(['init', '--repo', corrupt])
    await writeFile(join(corrupt, 'identity.key'), 'garbage')
    assertOneLineError(await mesh(['start', '--repo', corrupt, '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0']), /identity key .* is corrupted/)
    assertOneLineError(await mesh(['frobnicate']), /unknown command 'frobnicate'/)
    assertOneLineError(await mesh(['peers', '--frobnicate']), /unknown option '--frobnicate'/)
    const empty = join(dir, 'empty')
    await mkdir(empty)
    assertOneLineError(await mesh(['peers', '--repo', empty]), /no node is running on/)
    assertOneLineError(await mesh(['routing', 'findpeer', 'not-a-peer', '--repo', b.repo]), /not a peer ID or did:key/)
    assertOneLineError(await mesh(['peers', '--repo', b.repo, '--timeout', 'soon']), /not a duration: soon/)
    assertOneLineError(await mesh(['start', '--repo', a.repo, '--api', '127.0.0.1:0']), /a node is already running on/)
  })

  it('a mutating API call without the token is refused', async () => {
    const res = await fetch(`${b.info.api}/v1/peers`, { method: 'POST', body: JSON.stringify({ address: a.info.addresses[0] }), headers: { 'content-type': 'application/json' } })
    assert.equal(res.status, 401)
    const ok = await fetch(`${b.info.api}/v1/id`)
    assert.equal((await ok.json()).peerId, b.info.peerId)
  })

  it('SIGINT stops a node cleanly and the CLI then says no node is running', async () => {
    const n = await startNode(join(await dirs.make(), 'g'), ['--bootstrap', a.info.addresses[0]])
    n.child.kill('SIGINT')
    assert.equal(await n.exited, 0, `exit code ${n.child.exitCode}, signal ${n.child.signalCode}: ${n.stderr()}`)
    assertOneLineError(await mesh(['id', '--repo', n.repo]), /no node is running/)
  })

  it('a second signal while stopping exits at once', async () => {
    const n = await startNode(join(await dirs.make(), 'h'))
    // 'close', not 'exit': the last stderr line may arrive after the exit itself
    const closed = once(n.child, 'close')
    n.child.kill('SIGINT')
    n.child.kill('SIGTERM')
    const [code] = await closed
    // 130: the forced exit; a clean stop would have answered 0
    assert.equal(code, 130, `exit code ${n.child.exitCode}, signal ${n.child.signalCode}: ${n.stderr()}`)
    // Two signals pending at once may be handled in either order.
    assert.match(n.stderr(), /mesh: (SIGINT|SIGTERM), stopping[^\n]*\nmesh: second (SIGTERM|SIGINT), exiting now/)
    assert.notEqual(/mesh: (SIG\w+), stopping/.exec(n.stderr())?.[1], /second (SIG\w+)/.exec(n.stderr())?.[1], 'each signal counted once')
  })
})
