// Helpers for integration tests that drive real `mesh` processes the way a user does.
import { spawn, execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { ChildProcess } from 'node:child_process'

export const MESH_BIN = new URL('../../bin/mesh.js', import.meta.url).pathname

export interface Result { code: number | null, stdout: string, stderr: string }

/** Runs `mesh ARGS…` to completion (bounded by `timeoutMs`). */
export async function mesh (args: string[], timeoutMs = 60_000): Promise<Result> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MESH_BIN, ...args], { timeout: timeoutMs, env: cleanEnv() }, (err: any, stdout, stderr) => {
      resolve({ code: err == null ? 0 : (typeof err.code === 'number' ? err.code : null), stdout, stderr })
    })
  })
}

/** Like `mesh` but parses stdout as JSON and fails loudly when the command failed. */
export async function meshJson (args: string[], timeoutMs?: number): Promise<any> {
  const r = await mesh([...args, '--json'], timeoutMs)
  if (r.code !== 0) throw new Error(`mesh ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

function cleanEnv (): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.MESH_REPO
  delete env.NODE_TEST_CONTEXT
  return env
}

export interface NodeProcess {
  repo: string
  child: ChildProcess
  info: { peerId: string, did: string, network: string, addresses: string[], api: string }
  stderr: () => string
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>
}

/** Starts `mesh start --json` and waits for its ready line. */
export async function startNode (repo: string, args: string[] = [], timeoutMs = 30_000): Promise<NodeProcess> {
  const child = spawn(process.execPath, [MESH_BIN, 'start', '--repo', repo, '--json',
    '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', ...args], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  child.stderr!.on('data', (d) => { err += String(d) })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const lines = createInterface({ input: child.stdout! })
  const info = await new Promise<any>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`node on ${repo} not ready after ${timeoutMs} ms: ${err}`)) }, timeoutMs)
    lines.once('line', (line) => { clearTimeout(timer); resolve(JSON.parse(line)) })
    void exited.then((code) => { clearTimeout(timer); reject(new Error(`node on ${repo} exited ${code}: ${err}`)) })
  })
  return { repo, child, info, stderr: () => err, exited }
}

/** Stops a node with SIGTERM and waits for it (SIGKILL if it ignores that for 10 s). */
export async function stopNode (node: NodeProcess): Promise<number | null> {
  if (node.child.exitCode != null || node.child.signalCode != null) return node.child.exitCode
  node.child.kill('SIGTERM')
  const timer = setTimeout(() => node.child.kill('SIGKILL'), 10_000)
  const code = await node.exited
  clearTimeout(timer)
  return code
}

/** Temp dirs that a test removes when it ends. */
export async function tempDirs (): Promise<{ make: (name?: string) => Promise<string>, cleanup: () => Promise<void> }> {
  const dirs: string[] = []
  return {
    make: async (name = 'mesh-') => {
      const dir = await mkdtemp(join(tmpdir(), name))
      dirs.push(dir)
      return dir
    },
    cleanup: async () => {
      await Promise.all(dirs.map(async d => rm(d, { recursive: true, force: true })))
    }
  }
}

/** Polls `check` until it returns a truthy value, or fails after `timeoutMs` saying what it waited for. */
export async function waitFor<T> (what: string, check: () => Promise<T> | T, timeoutMs = 20_000, intervalMs = 100): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < deadline) {
    try {
      const value = await check()
      if (value) return value as NonNullable<T>
    } catch (err) {
      last = err
    }
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last != null ? ` (last error: ${String(last)})` : ''}`)
}
