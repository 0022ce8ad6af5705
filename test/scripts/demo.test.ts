// `npm run demo` as a user runs it: a child process that must pass every step, exit 0 and leave
// no node process and no temp dir behind; and on a failing step or Ctrl-C, clean up just as well.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { describe, it } from 'node:test'

const DEMO = new URL('../../scripts/demo.ts', import.meta.url).pathname
const STEPS = ['nodes', 'network', 'DHT', 'identity', 'outsider', 'descriptors', 'allocation', 'blocks',
  'artifact', 'function', 'document', 'partition', 'metrics', 'cleanup']

interface Run { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string, dir: string }

/** Runs the demo; `onLine` sees each stdout line as it comes (to interrupt it, say). */
async function runDemo (env: Record<string, string> = {}, onLine?: (line: string, child: ReturnType<typeof spawn>) => void): Promise<Run> {
  const childEnv = { ...process.env, ...env }
  delete childEnv.NODE_TEST_CONTEXT
  delete childEnv.MESH_REPO
  const child = spawn(process.execPath, [DEMO], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let pending = ''
  child.stdout.on('data', (d) => {
    stdout += String(d)
    pending += String(d)
    let nl: number
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl)
      pending = pending.slice(nl + 1)
      onLine?.(line, child)
    }
  })
  child.stderr.on('data', (d) => { stderr += String(d) })
  const timer = setTimeout(() => child.kill('SIGKILL'), 6 * 60_000)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => child.on('exit', (c, s) => resolve([c, s])))
  clearTimeout(timer)
  const dir = /repos in (\S+)/.exec(stdout)?.[1] ?? ''
  return { code, signal, stdout, stderr, dir }
}

/** Step lines: a mark, the step's label, what happened. */
function steps (stdout: string): Array<{ mark: string, label: string, text: string }> {
  return stdout.split('\n').flatMap(l => {
    const m = /^([✔✖–]) (\S+)\s+(.*)$/.exec(l)
    return m == null ? [] : [{ mark: m[1], label: m[2], text: m[3] }]
  })
}

/** Processes whose command line mentions `dir` (a node left running on one of the demo's repos). */
async function processesUsing (dir: string): Promise<string[]> {
  const found: string[] = []
  for (const pid of (await readdir('/proc')).filter(p => /^\d+$/.test(p))) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    if (cmdline.includes(dir)) found.push(`${pid}: ${cmdline.replaceAll('\0', ' ')}`)
  }
  return found
}

async function assertCleanedUp (run: Run): Promise<void> {
  assert.match(run.dir, /mesh-demo-/, `the demo names its temp dir:\n${run.stdout}`)
  assert.equal(existsSync(run.dir), false, `${run.dir} was removed`)
  assert.deepEqual(await processesUsing(run.dir), [], 'no process is left running on the demo\'s repos')
}

describe('npm run demo', () => {
  it('walks through every capability, one ✔ line per step, cleans up and exits 0', { timeout: 7 * 60_000 }, async () => {
    const run = await runDemo()
    const lines = steps(run.stdout)
    assert.equal(run.code, 0, `exit code\n${run.stdout}\n${run.stderr}`)
    assert.deepEqual(lines.map(l => l.label), STEPS, `one line per step, in order:\n${run.stdout}`)
    for (const l of lines) assert.equal(l.mark, '✔', `${l.label}: ${l.text}`)
    assert.match(run.stdout, /demo finished: 13 of 13 steps passed/)
    await assertCleanedUp(run)
  })

  it('stops at a failing step, says which and why, cleans up and exits 1', { timeout: 3 * 60_000 }, async () => {
    const run = await runDemo({ MESH_DEMO_FAIL: 'DHT' })
    assert.equal(run.code, 1, run.stdout)
    const lines = steps(run.stdout)
    assert.deepEqual(lines.map(l => `${l.mark} ${l.label}`), ['✔ nodes', '✔ network', '✖ DHT', '✔ cleanup'], run.stdout)
    assert.match(lines[2].text, /failed on purpose/)
    assert.match(run.stdout, /demo failed after 2 of 13 steps/)
    await assertCleanedUp(run)
  })

  it('cleans up on Ctrl-C', { timeout: 3 * 60_000 }, async () => {
    let sent = false
    const run = await runDemo({}, (line, child) => {
      if (!sent && line.startsWith('✔ nodes')) {
        sent = true
        child.kill('SIGINT')
      }
    })
    assert.ok(sent, run.stdout)
    assert.equal(run.code, 130, `${run.stdout}\n${run.stderr}`)
    assert.match(run.stdout, /✖ interrupted/)
    await assertCleanedUp(run)
  })
})
