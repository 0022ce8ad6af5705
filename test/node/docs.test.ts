// Integration: shared documents on real `mesh start` processes, through the CLI, the HTTP API and
// the unmodified y-websocket client.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { after, before, describe, it } from 'node:test'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'
import { MESH_BIN, mesh, meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'

describe('shared documents on mesh nodes', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const nodes = new Set<NodeProcess>()
  let a: NodeProcess
  let b: NodeProcess
  let c: NodeProcess

  const track = (n: NodeProcess): NodeProcess => { nodes.add(n); return n }
  const wsBase = (n: NodeProcess): string => n.info.api.replace(/^http:/, 'ws:') + '/v1/docs'
  const tokenOf = async (n: NodeProcess): Promise<string> => (await readFile(join(n.repo, 'api.token'), 'utf8')).trim()
  const valueOn = async (n: NodeProcess, docId: string, key: string): Promise<unknown> => {
    const r = await mesh(['doc', 'get', docId, '--key', key, '--repo', n.repo, '--json'])
    return r.code === 0 ? JSON.parse(r.stdout).value : undefined
  }

  before(async () => {
    dirs = await tempDirs()
    a = track(await startNode(join(await dirs.make(), 'a')))
    b = track(await startNode(join(await dirs.make(), 'b'), ['--bootstrap', a.info.addresses[0]]))
    c = track(await startNode(join(await dirs.make(), 'c'), ['--bootstrap', b.info.addresses[0]]))
    await waitFor('C connected to A and B', async () => {
      const peers = await meshJson(['peers', '--repo', c.repo])
      return [a, b].every(n => peers.some((p: any) => p.peerId === n.info.peerId))
    }, 30_000)
  })
  after(async () => {
    await Promise.all([...nodes].map(stopNode))
    await dirs.cleanup()
  })

  it('a value set on A is read on C', async () => {
    const set = await meshJson(['doc', 'set', 'notes', 'title', '{"text":"hello","n":1}', '--repo', a.repo])
    assert.equal(set.written, true)
    await waitFor('C to read the title', async () => {
      const v = await valueOn(c, 'notes', 'title') as any
      return v?.text === 'hello'
    }, 30_000)
    // C now replicates the document: a later write on A reaches it by gossip.
    await meshJson(['doc', 'set', 'notes', 'count', '7', '--repo', a.repo])
    await waitFor('C to see the second write', async () => (await valueOn(c, 'notes', 'count')) === 7, 30_000)
    const whole = await meshJson(['doc', 'get', 'notes', '--repo', c.repo])
    assert.deepEqual(whole.data, { title: { text: 'hello', n: 1 }, count: 7 })
    const ls = await meshJson(['doc', 'ls', '--repo', c.repo])
    assert.ok(ls.some((d: any) => d.docId === 'notes' && d.bytes > 0), 'C stored it')

    const bad = await mesh(['doc', 'set', 'Not/Valid', 'k', '1', '--repo', a.repo])
    assert.notEqual(bad.code, 0)
    assert.match(bad.stderr, /invalid document ID/)
    const badJson = await mesh(['doc', 'set', 'notes', 'k', '{oops', '--repo', a.repo])
    assert.notEqual(badJson.code, 0)
    assert.match(badJson.stderr, /not valid JSON/)
    const missing = await mesh(['doc', 'get', 'notes', '--key', 'nope', '--repo', a.repo])
    assert.notEqual(missing.code, 0)
    assert.match(missing.stderr, /has no key "nope"/)
  })

  it('a policy names the writers: others are refused, and a node outside the zones cannot hold it', async () => {
    const created = await meshJson(['doc', 'create', 'locked', '--writers', c.info.did, '--repo', a.repo])
    assert.deepEqual(created.policy.writers, [c.info.did])
    const refused = await mesh(['doc', 'set', 'locked', 'k', '1', '--repo', a.repo])
    assert.notEqual(refused.code, 0)
    assert.match(refused.stderr, /may not write document locked/)
    await waitFor('C to learn the policy and write', async () => {
      const r = await mesh(['doc', 'set', 'locked', 'k', '2', '--repo', c.repo])
      return r.code === 0
    }, 30_000)
    await waitFor('A to see the writer\'s value', async () => (await valueOn(a, 'locked', 'k')) === 2, 30_000)
    const zoned = await mesh(['doc', 'create', 'eu-only', '--zones', 'eu-west', '--repo', a.repo])
    assert.notEqual(zoned.code, 0)
    assert.match(zoned.stderr, /cannot hold a document bound to eu-west/)
  })

  it('an acknowledged write survives kill -9 of the node', async () => {
    const repo = join(await dirs.make(), 'd')
    let d = track(await startNode(repo))
    for (let i = 0; i < 5; i++) await meshJson(['doc', 'set', 'durable', `k${i}`, String(i), '--repo', repo])
    d.child.kill('SIGKILL')
    await d.exited
    nodes.delete(d)
    // No bootstrap: whatever it has after the restart came from its own disk.
    d = track(await startNode(repo))
    const got = await meshJson(['doc', 'get', 'durable', '--repo', repo])
    assert.deepEqual(got.data, { k0: 0, k1: 1, k2: 2, k3: 3, k4: 4 })
    await stopNode(d)
    nodes.delete(d)
  })

  it('a y-websocket client on B edits the document that A reads, and sees A\'s edits', async () => {
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(wsBase(b), 'board', doc, {
      WebSocketPolyfill: WebSocket as any, disableBc: true, params: { token: await tokenOf(b) }
    })
    try {
      await waitFor('the provider to sync', () => provider.synced, 20_000)
      provider.awareness.setLocalStateField('user', { name: 'ada' })
      doc.getMap('data').set('fromWs', { by: 'ada' })
      await waitFor('A to read the WebSocket edit', async () => {
        const v = await valueOn(a, 'board', 'fromWs') as any
        return v?.by === 'ada'
      }, 30_000)
      await meshJson(['doc', 'set', 'board', 'fromA', 'true', '--repo', a.repo])
      await waitFor('the client to see A\'s edit', () => doc.getMap('data').get('fromA') === true, 30_000)
    } finally {
      provider.destroy()
      doc.destroy()
    }
  })

  it('y-websocket clients on two different nodes see each other\'s presence, and its end', async () => {
    const docs = [new Y.Doc(), new Y.Doc()]
    const providers = await Promise.all([a, c].map(async (n, i) => new WebsocketProvider(wsBase(n), 'presence', docs[i], {
      WebSocketPolyfill: WebSocket as any, disableBc: true, params: { token: await tokenOf(n) }
    })))
    const [onA, onC] = providers
    const sees = (p: WebsocketProvider, other: WebsocketProvider, name: string): boolean =>
      (p.awareness.getStates().get(other.awareness.clientID) as any)?.user?.name === name
    try {
      await waitFor('both providers to sync', () => providers.every(p => p.synced), 20_000)
      onA.awareness.setLocalStateField('user', { name: 'ada' })
      onC.awareness.setLocalStateField('user', { name: 'cy' })
      await waitFor('each client to see the other\'s presence through the mesh', () => sees(onA, onC, 'cy') && sees(onC, onA, 'ada'), 30_000)
      // A change travels too, not only the first state.
      onA.awareness.setLocalStateField('user', { name: 'ada lovelace' })
      await waitFor('C\'s client to see the change', () => sees(onC, onA, 'ada lovelace'), 30_000)
      // The node of a client that leaves says so, rather than the others waiting 30 s to time it out.
      onA.destroy()
      await waitFor('C\'s client to see A\'s client go', () => !onC.awareness.getStates().has(onA.awareness.clientID), 20_000)
    } finally {
      for (const p of providers) p.destroy()
      for (const d of docs) d.destroy()
    }
  })

  it('the WebSocket wants the token, and a malformed or oversized frame closes only that socket', async () => {
    const refused = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${wsBase(b)}/board`)
      ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode ?? 0); ws.terminate() })
      ws.on('error', () => {})
    })
    assert.equal(refused, 401)

    const token = await tokenOf(b)
    const closeCodeAfter = async (payload: Buffer | string): Promise<number> => new Promise((resolve, reject) => {
      const ws = new WebSocket(`${wsBase(b)}/board?token=${token}`)
      ws.on('open', () => { ws.send(payload) })
      ws.on('close', (code) => { resolve(code) })
      ws.on('error', () => {})
      setTimeout(() => reject(new Error('the socket stayed open')), 20_000).unref()
    })
    // Sync message, step 2, an update length far past the frame's end.
    assert.equal(await closeCodeAfter(Buffer.from([0, 1, 0xff, 0xff, 0x03, 1, 2])), 4400)
    // A well-framed update whose bytes are not a Yjs update.
    assert.equal(await closeCodeAfter(Buffer.from([0, 2, 4, 0xde, 0xad, 0xbe, 0xef])), 4400)
    assert.equal(await closeCodeAfter(Buffer.from([9, 9, 9])), 4400)
    assert.equal(await closeCodeAfter('hello, text'), 4400)
    assert.equal(await closeCodeAfter(Buffer.alloc(9 * 1024 * 1024)), 1009)

    assert.equal(b.child.exitCode, null, 'B is still running')
    const board = await meshJson(['doc', 'get', 'board', '--repo', b.repo])
    assert.deepEqual(board.data.fromWs, { by: 'ada' }, 'the document is untouched')
  })

  it('watch streams changes as JSON lines until SIGINT', async () => {
    const child = spawn(process.execPath, [MESH_BIN, 'doc', 'watch', 'notes', '--repo', c.repo, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
    const lines: any[] = []
    createInterface({ input: child.stdout }).on('line', (l) => { lines.push(JSON.parse(l)) })
    const exited = new Promise<number | null>(resolve => child.on('exit', code => resolve(code)))
    try {
      await waitFor('the snapshot line', () => lines.some(l => l.type === 'snapshot'), 20_000)
      assert.equal(lines[0].data.count, 7)
      await meshJson(['doc', 'set', 'notes', 'watched', '"yes"', '--repo', a.repo])
      await waitFor('the change line', () => lines.some(l => l.type === 'set' && l.key === 'watched' && l.value === 'yes'), 30_000)
    } finally {
      child.kill('SIGINT')
    }
    assert.equal(await exited, 0)
  })
})
