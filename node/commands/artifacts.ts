// `mesh artifact …` and `mesh fn invoke`: Wasm artifacts on IPFS and the functions that run them.
import { readFile, writeFile } from 'node:fs/promises'
import { basename } from 'node:path'
import cliProgress from 'cli-progress'
import { client, collect, globals, print } from '../cli-kit.ts'
import { UserError } from '../errors.ts'
import { Repo } from '../repo.ts'
import type { CommandModule, GlobalOptions } from '../cli-kit.ts'
import type { Command } from 'commander'

/** Above this size a fetch on a terminal shows a progress bar. */
const PROGRESS_MIN_BYTES = 1024 * 1024

async function readInput (file: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(file))
  } catch (err: any) {
    throw new UserError(`cannot read ${file}: ${err.code ?? err.message}`)
  }
}

/**
 * A raw call to the node's API, for what the JSON client does not do: DELETE, and streaming a
 * download so that a progress bar can follow it.
 */
async function request (opts: GlobalOptions, method: string, path: string): Promise<Response> {
  const repo = new Repo(opts.repo)
  const running = await repo.running()
  if (running == null || running.api === '') throw new UserError(`no node is running on ${repo.path} (start one with \`mesh start --repo ${repo.path}\`)`)
  const headers: Record<string, string> = {}
  const token = await repo.readToken()
  if (method !== 'GET' && token != null) headers.authorization = `Bearer ${token}`
  let res: Response
  try {
    res = await fetch(`http://${running.api}${path}?timeout=${opts.timeout}`, { method, headers, signal: AbortSignal.timeout(opts.timeout + 5_000) })
  } catch (err: any) {
    if (err.name === 'TimeoutError') throw new UserError(`the node at ${running.api} did not answer within ${opts.timeout / 1000}s`)
    throw new UserError(`cannot reach the node on ${repo.path} at ${running.api}: ${err.cause?.code ?? err.message}`)
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`
    try { message = (await res.json()).error ?? message } catch {}
    throw new UserError(message)
  }
  return res
}

async function download (res: Response, size: number, label: string): Promise<Uint8Array> {
  const showBar = process.stderr.isTTY === true && size >= PROGRESS_MIN_BYTES && res.body != null
  if (!showBar) return new Uint8Array(await res.arrayBuffer())
  const bar = new cliProgress.SingleBar({ stream: process.stderr, format: `${label} [{bar}] {percentage}% {value}/{total} bytes` }, cliProgress.Presets.shades_classic)
  bar.start(size, 0)
  const chunks: Uint8Array[] = []
  let got = 0
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      chunks.push(chunk)
      got += chunk.length
      bar.update(got)
    }
  } finally {
    bar.stop()
  }
  return new Uint8Array(Buffer.concat(chunks))
}

const ref = (text: string): string => encodeURIComponent(text)

function parseEnv (pairs: string[] = []): Record<string, string> {
  const env: Record<string, string> = {}
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    if (eq <= 0) throw new UserError(`--env takes NAME=VALUE, got ${JSON.stringify(pair)}`)
    env[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  return env
}

function positiveInt (what: string) {
  return (text: string): number => {
    const n = Number(text)
    if (!Number.isSafeInteger(n) || n <= 0) throw new UserError(`${what} must be a positive whole number, got ${text}`)
    return n
  }
}

export const artifactCommands: CommandModule = (program) => {
  const artifact = program.command('artifact').description('Wasm artifacts on IPFS: publish, fetch, list, remove')

  artifact.command('publish')
    .description('publish a WASI module with a signed manifest; prints the manifest and module CIDs')
    .argument('<file>', 'the .wasm file')
    .option('--name <name>', 'artifact name (default: the file name without .wasm)')
    .option('--version <version>', 'artifact version', '0.0.0')
    .action(async (file: string, o, cmd: Command) => {
      const bytes = await readInput(file)
      const name = o.name ?? basename(file).replace(/\.wasm$/, '')
      const e = await (await client(cmd)).postBytes(`/v1/artifacts?name=${encodeURIComponent(name)}&version=${encodeURIComponent(o.version)}`, bytes)
      print(globals(cmd), e, () => [`published ${e.name}@${e.version}  ${e.size} bytes`, `manifest  ${e.manifest}`, `module    ${e.cid}`].join('\n'))
    })

  artifact.command('fetch')
    .description('fetch an artifact (verified against its signed manifest) and keep it on this node')
    .argument('<ref>', 'manifest CID or name@version')
    .option('-o, --output <file>', 'write the module to a file (default: stdout)')
    .action(async (text: string, o, cmd: Command) => {
      const opts = globals(cmd)
      const manifest = await (await client(cmd)).get(`/v1/artifacts/${ref(text)}/manifest`)
      const bytes = await download(await request(opts, 'GET', `/v1/artifacts/${ref(text)}`), manifest.size, `${manifest.name}@${manifest.version}`)
      if (o.output != null) {
        await writeFile(o.output, bytes)
        print(opts, { ...manifest, output: o.output }, () => `${manifest.name}@${manifest.version}  ${bytes.length} bytes  ${manifest.manifest}  -> ${o.output}`)
      } else {
        process.stdout.write(bytes)
      }
    })

  artifact.command('ls')
    .description('artifacts this node keeps')
    .action(async (_o, cmd: Command) => {
      const { artifacts } = await (await client(cmd)).get('/v1/artifacts')
      print(globals(cmd), artifacts, () => artifacts.length === 0
        ? 'no artifacts'
        : artifacts.map((a: any) => `${a.name}@${a.version}  ${a.size} bytes  ${a.origin}  ${a.manifest}`).join('\n'))
    })

  artifact.command('rm')
    .description('stop keeping an artifact on this node')
    .argument('<ref>', 'manifest CID or name@version')
    .action(async (text: string, _o, cmd: Command) => {
      const opts = globals(cmd)
      const e = await (await request(opts, 'DELETE', `/v1/artifacts/${ref(text)}`)).json()
      print(opts, e, () => `removed ${e.name}@${e.version} (${e.manifest})`)
    })

  const fn = program.command('fn').description('Wasm functions: run an artifact here or on another node')

  fn.command('invoke')
    .description('run an artifact under WASI; prints its stdout and stderr as they are and exits with its exit code')
    .argument('<ref>', 'manifest CID or name@version')
    .argument('[args...]', 'arguments for the program (after --)')
    .option('--node <peer>', 'run on this node (peer ID or did:key) instead of here')
    .option('--stdin <file>', 'feed this file to the program\'s stdin')
    .option('--env <NAME=VALUE>', 'an environment variable (repeatable)', collect)
    .option('--memory <bytes>', 'lower the memory limit', positiveInt('--memory'))
    .option('--time-limit <ms>', 'lower the wall-time limit', positiveInt('--time-limit'))
    .option('--region <region>', 'run on the nearest node in this region (unless --node)')
    .option('--max-latency <ms>', 'run on the nearest node within this latency (unless --node)', positiveInt('--max-latency'))
    .action(async (text: string, args: string[], o, cmd: Command) => {
      const opts = globals(cmd)
      const stdin = o.stdin != null ? Buffer.from(await readInput(o.stdin)).toString('base64') : undefined
      const limits: Record<string, number> = {}
      if (o.memory != null) limits.memoryBytes = o.memory
      if (o.timeLimit != null) limits.timeoutMs = o.timeLimit
      const r = await (await client(cmd)).post(`/v1/functions/${ref(text)}`, { args, env: parseEnv(o.env), stdin, node: o.node, region: o.region, maxLatency: o.maxLatency, limits })
      if (opts.json === true) {
        print(opts, r, () => '')
        return
      }
      process.stdout.write(Buffer.from(r.stdout, 'base64'))
      process.stderr.write(Buffer.from(r.stderr, 'base64'))
      if (r.outcome === 'ok' || r.outcome === 'exit-nonzero') {
        process.exitCode = r.exitCode
        return
      }
      // It did not exit by itself: say why, in one line, after whatever it printed.
      throw new UserError(`function ${r.outcome}${r.message != null ? `: ${r.message}` : ''} (on ${r.node})`, r.outcome === 'timeout' ? 124 : 1)
    })
}
