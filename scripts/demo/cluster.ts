// The demo's little process runner: `mesh start` nodes in one temp dir, `mesh …` commands against
// them, polling with a deadline, and a cleanup that leaves no process and no file behind.
import { execFile, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { ChildProcess } from 'node:child_process'

export const MESH_BIN = new URL('../../bin/mesh.js', import.meta.url).pathname

export interface Result { code: number | null, stdout: string, stderr: string, ms: number }

export interface NodeInfo { peerId: string, did: string, network: string, addresses: string[], api: string }

/** One `mesh start` process of the demo. */
export interface DemoNode {
  name: string
  region: string
  repo: string
  child: ChildProcess
  info: NodeInfo
  /** host:port of its HTTP API, kept across restarts so clients find it again. */
  apiAddress: string
  stderr: () => string
  exited: Promise<number | null>
}

export class DemoError extends Error {}

function cleanEnv (): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.MESH_REPO
  delete env.NODE_TEST_CONTEXT
  return env
}

/** Polls `check` until it returns a truthy value; fails after `timeoutMs` saying what it waited for. */
export async function waitFor<T> (what: string, check: () => Promise<T> | T, timeoutMs = 30_000, intervalMs = 200): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (true) {
    try {
      const value = await check()
      if (value) return value as NonNullable<T>
    } catch (err) {
      last = err
    }
    if (Date.now() >= deadline) break
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
  const why = last instanceof Error ? last.message : last != null ? String(last) : ''
  throw new DemoError(`timed out after ${timeoutMs / 1000} s waiting for ${what}${why !== '' ? ` (last error: ${why.split('\n')[0]})` : ''}`)
}

export class Cluster {
  readonly dir: string
  readonly nodes = new Map<string, DemoNode>()
  private readonly cleanups: Array<() => Promise<void> | void> = []
  private readonly children = new Set<ChildProcess>()
  private closing?: Promise<void>

  private constructor (dir: string) {
    this.dir = dir
  }

  static async create (): Promise<Cluster> {
    return new Cluster(await mkdtemp(join(tmpdir(), 'mesh-demo-')))
  }

  node (name: string): DemoNode {
    const n = this.nodes.get(name)
    if (n == null) throw new DemoError(`no node ${name}`)
    return n
  }

  repoOf (name: string): string {
    return join(this.dir, name)
  }

  /** Registers something to undo at cleanup (a WebSocket client, say), run before the nodes stop. */
  onCleanup (fn: () => Promise<void> | void): void {
    this.cleanups.push(fn)
  }

  /** Runs `mesh ARGS…` to completion, bounded by `timeoutMs`. */
  async mesh (args: string[], timeoutMs = 60_000): Promise<Result> {
    const started = performance.now()
    return new Promise((resolve) => {
      const child = execFile(process.execPath, [MESH_BIN, ...args], { timeout: timeoutMs, env: cleanEnv(), maxBuffer: 64 * 1024 * 1024 }, (err: any, stdout, stderr) => {
        this.children.delete(child)
        const code = err == null ? 0 : (typeof err.code === 'number' ? err.code : null)
        resolve({ code, stdout, stderr, ms: performance.now() - started })
      })
      this.children.add(child)
    })
  }

  /** `mesh ARGS… --repo <name's repo> --json`, parsed; throws the command's own error line when it fails. */
  async json (name: string, args: string[], timeoutMs?: number): Promise<any> {
    const r = await this.mesh([...args, '--repo', this.repoOf(name), '--json'], timeoutMs)
    if (r.code !== 0) throw new DemoError(`\`mesh ${args.join(' ')}\` on ${name} exited ${r.code}: ${errorLine(r.stderr)}`)
    return JSON.parse(r.stdout)
  }

  /** The bearer token mutating API calls (and the documents' WebSocket) need. */
  async token (name: string): Promise<string> {
    return (await readFile(join(this.repoOf(name), 'api.token'), 'utf8')).trim()
  }

  /** GET on a node's HTTP API, parsed as JSON; throws on an error status. */
  async get (name: string, path: string): Promise<any> {
    const res = await fetch(`http://${this.node(name).apiAddress}${path}`, { signal: AbortSignal.timeout(10_000) })
    if (!res.ok) throw new DemoError(`GET ${path} on ${name}: ${res.status} ${await res.text()}`)
    return await res.json()
  }

  /** A mutating call on a node's HTTP API (with the repo's token), parsed as JSON; throws on an error status. */
  async call (name: string, method: string, path: string, body?: unknown): Promise<any> {
    const res = await fetch(`http://${this.node(name).apiAddress}${path}`, {
      method,
      headers: { authorization: `Bearer ${await this.token(name)}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(30_000)
    })
    if (!res.ok) throw new DemoError(`${method} ${path} on ${name}: ${res.status} ${await res.text()}`)
    return await res.json()
  }

  /** Starts `mesh start --json` on the repo named `name` and waits for its ready line. */
  async start (name: string, region: string, args: string[] = [], opts: { listen?: string, api?: string } = {}, timeoutMs = 60_000): Promise<DemoNode> {
    const repo = this.repoOf(name)
    const child = spawn(process.execPath, [MESH_BIN, 'start', '--repo', repo, '--json', '--region', region,
      '--listen', opts.listen ?? '/ip4/127.0.0.1/tcp/0', '--api', opts.api ?? '127.0.0.1:0', ...args],
    { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
    this.children.add(child)
    let err = ''
    child.stderr!.on('data', (d) => { err = (err + String(d)).slice(-20_000) })
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { this.children.delete(child); resolve(code) }))
    const lines = createInterface({ input: child.stdout! })
    const info = await new Promise<NodeInfo>((resolve, reject) => {
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new DemoError(`${name} not ready after ${timeoutMs / 1000} s: ${errorLine(err)}`)) }, timeoutMs)
      lines.once('line', (line) => { clearTimeout(timer); resolve(JSON.parse(line)) })
      void exited.then((code) => { clearTimeout(timer); reject(new DemoError(`${name} exited ${code} before it was ready: ${errorLine(err)}`)) })
    })
    lines.on('line', () => {}) // keep draining stdout
    const node: DemoNode = { name, region, repo, child, info, apiAddress: info.api.replace(/^https?:\/\//, ''), stderr: () => err, exited }
    this.nodes.set(name, node)
    // Ready means answering too: once the API answers, the node's event loop has run past its
    // ready line (and past setting up its signal handlers, so a SIGTERM now is a clean stop).
    await waitFor(`${name}'s API to answer`, async () => {
      if (child.exitCode != null || child.signalCode != null) throw new DemoError(`${name} exited: ${errorLine(err)}`)
      return (await fetch(`http://${node.apiAddress}/healthz`, { signal: AbortSignal.timeout(5_000) })).ok
    }, timeoutMs, 50)
    return node
  }

  /** Stops a node with SIGTERM and waits for it (SIGKILL if it takes more than 10 s). */
  async stop (name: string): Promise<number | string | null> {
    const node = this.node(name)
    this.nodes.delete(name)
    return stopChild(node.child, node.exited)
  }

  /** Nodes whose process has died on its own. */
  dead (): string[] {
    return [...this.nodes.values()].filter(n => n.child.exitCode != null || n.child.signalCode != null)
      .map(n => `${n.name} exited ${n.child.exitCode ?? n.child.signalCode}: ${errorLine(n.stderr())}`)
  }

  /** Undoes everything: clients, every node and command still running, the temp dir. Idempotent. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      for (const fn of this.cleanups.reverse()) await Promise.resolve().then(fn).catch(() => {})
      await Promise.all([...this.nodes.keys()].map(async name => this.stop(name).catch(() => null)))
      for (const child of this.children) child.kill('SIGKILL')
      await rm(this.dir, { recursive: true, force: true, maxRetries: 5 })
    })()
    return this.closing
  }
}

/** Stops a child with SIGTERM (SIGKILL after 10 s); its exit code, or the signal that ended it. */
async function stopChild (child: ChildProcess, exited: Promise<number | null>): Promise<number | string | null> {
  if (child.exitCode == null && child.signalCode == null) {
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(timer)
  }
  return child.exitCode ?? child.signalCode
}

/** The line of a command's stderr that says what went wrong (not Node's warnings). */
export function errorLine (stderr: string): string {
  const lines = stderr.split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('(node:') && !l.includes('--trace-warnings') && !l.includes('ExperimentalWarning'))
  return lines.at(-1) ?? '(no output)'
}
