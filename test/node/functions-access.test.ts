// Integration: only members invoke. In a community network of real `mesh start` processes, a
// member runs a function on another member, while an outsider (one that holds the network's
// genesis but no credential, and one from another network altogether) gets one clear line and
// the serving node runs nothing for it.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createInvite } from '../../identity/network.ts'
import { Community } from '../../node/community.ts'
import { buildWasmFixtures } from '../../scripts/build-wasm-fixtures.ts'
import { mesh, meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'

function assertOneLineError (r: { code: number | null, stderr: string }, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `expected failure, got exit ${r.code}`)
  const lines = r.stderr.split('\n').filter(l => l !== '' && !l.startsWith('(node:') && !l.includes('--trace-warnings'))
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${r.stderr}`)
  assert.match(lines[0], pattern)
}

/** Invocations the node has run, by origin, from its Prometheus text. */
async function invocationsRun (node: NodeProcess, origin: 'local' | 'remote'): Promise<number> {
  const text = await (await fetch(`${node.info.api}/metrics`)).text()
  let n = 0
  for (const line of text.split('\n')) {
    if (line.startsWith('mesh_function_invocations_total{') && line.includes(`origin="${origin}"`)) n += Number(line.split(' ').at(-1))
  }
  return n
}

describe('who may invoke a function', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  const nodes: NodeProcess[] = []
  let a: NodeProcess
  let b: NodeProcess
  let manifest: string

  const start = async (repo: string, args: string[] = []): Promise<NodeProcess> => {
    const n = await startNode(repo, args)
    nodes.push(n)
    return n
  }

  before(async () => {
    dirs = await tempDirs()
    const fixtures = await dirs.make('mesh-wasm-')
    await buildWasmFixtures(fixtures, ['echo'])
    a = await start(join(await dirs.make(), 'a'))
    await meshJson(['network', 'create', 'lab', '--repo', a.repo])
    b = await start(join(await dirs.make(), 'b'))
    const { invite } = await meshJson(['network', 'invite', b.info.did, '--repo', a.repo])
    await meshJson(['join', invite, '--repo', b.repo])
    await waitFor('A to accept B as a member', async () =>
      (await meshJson(['peers', '--repo', a.repo])).some((p: any) => p.peerId === b.info.peerId && p.authenticated))
    manifest = (await meshJson(['artifact', 'publish', join(fixtures, 'echo.wasm'), '--name', 'echo', '--version', '1.0.0', '--repo', a.repo])).manifest
  })

  after(async () => {
    await Promise.all(nodes.map(stopNode))
    await dirs.cleanup()
  })

  it('a member invokes on another member', async () => {
    const r = await mesh(['fn', 'invoke', manifest, '--node', a.info.did, '--repo', b.repo, '--', 'member'])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout, 'args:member\nstdin:\n')
    assert.equal(r.stderr, 'argc 2 on stderr\n')
    assert.equal(await invocationsRun(a, 'remote'), 1)
  })

  it('a non-member cannot invoke on a member: one clear line, and nothing runs', async () => {
    const before = await invocationsRun(a, 'remote')
    const genesis = (await Community.load(a.repo))!.genesis
    const bootstrap = [a.info.addresses[0]]

    // Holds the genesis (so it speaks the network's protocols) but no credential.
    const noCredential = join(await dirs.make(), 'no-credential')
    await meshJson(['init', '--repo', noCredential])
    const joined = await mesh(['join', createInvite({ genesis, bootstrap, credential: undefined }), '--repo', noCredential, '--json'])
    assert.equal(joined.code, 0, joined.stderr)
    // Another network altogether, dialing A directly.
    const stranger = join(await dirs.make(), 'stranger')

    const outsiders = [
      { node: await start(noCredential), says: /this node is not a member of lab \(it holds no membership credential\), and only members may invoke/ },
      { node: await start(stranger, ['--bootstrap', a.info.addresses[0]]), says: /(it does not serve \/mesh\/default\/invoke\/1\.0\.0: it is not a node of this node's network|.* \(no known address or protocols: is it in this node's network, default\?\))/ }
    ]
    for (const o of outsiders) {
      const r = await mesh(['fn', 'invoke', manifest, '--node', a.info.did, '--repo', o.node.repo, '--timeout', '10s', '--', 'outsider'])
      assertOneLineError(r, new RegExp(`^mesh: cannot invoke on ${a.info.peerId}: ${o.says.source}`))
      assert.equal(r.stdout, '', 'an outsider gets no output')
    }
    assert.equal(await invocationsRun(a, 'remote'), before, 'A ran nothing for an outsider')

    // And the member still can, once the outsiders were refused.
    const r = await mesh(['fn', 'invoke', manifest, '--node', a.info.did, '--repo', b.repo, '--', 'again'])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout, 'args:again\nstdin:\n')
    assert.equal(await invocationsRun(a, 'remote'), before + 1)
  })
})
