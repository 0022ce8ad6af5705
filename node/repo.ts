// The repo: a node's folder on disk. It holds the identity key (0600), the config, the API token,
// the blockstore and datastore, and while a node runs, a lock naming its pid and API address.
import { randomBytes } from 'node:crypto'
import { constants, existsSync } from 'node:fs'
import { access, chmod, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { UserError } from './errors.ts'
import type { PrivateKey } from '@libp2p/interface'

export interface MeshConfig {
  network: string
  listen: string[]
  api: string
  bootstrap: string[]
  region?: string
}

export const DEFAULT_CONFIG: MeshConfig = {
  network: 'default',
  listen: ['/ip4/0.0.0.0/tcp/4001'],
  api: '127.0.0.1:5080',
  bootstrap: []
}

const KEY_FILE = 'identity.key'
const CONFIG_FILE = 'config.json'
const TOKEN_FILE = 'api.token'
const LOCK_FILE = 'node.lock'

export function defaultRepoPath (): string {
  return resolve(process.env.MESH_REPO ?? join(homedir(), '.mesh'))
}

export interface RunningNode {
  pid: number
  api: string
}

export class Repo {
  readonly path: string

  constructor (path: string) {
    this.path = resolve(path)
  }

  get keyPath (): string { return join(this.path, KEY_FILE) }
  get blocksPath (): string { return join(this.path, 'blocks') }
  get datastorePath (): string { return join(this.path, 'datastore') }

  exists (): boolean {
    return existsSync(this.keyPath)
  }

  /** Creates the repo. Refuses to overwrite an identity: a lost key is a lost node. */
  async init (config: Partial<MeshConfig> = {}): Promise<void> {
    if (this.exists()) {
      throw new UserError(`${this.path} already holds a Mesh identity; refusing to overwrite it`)
    }
    await this.writable()
    const key = await generateKeyPair('Ed25519')
    await writeAtomic(this.keyPath, privateKeyToProtobuf(key), 0o600)
    await writeAtomic(join(this.path, CONFIG_FILE), JSON.stringify({ ...DEFAULT_CONFIG, ...config }, null, 2) + '\n', 0o644)
  }

  private async writable (): Promise<void> {
    try {
      await mkdir(this.path, { recursive: true, mode: 0o700 })
      await access(this.path, constants.W_OK)
    } catch (err: any) {
      throw new UserError(`cannot write the repo at ${this.path}: ${err.code ?? err.message}`)
    }
  }

  async loadKey (): Promise<PrivateKey> {
    let bytes: Uint8Array
    try {
      bytes = await readFile(this.keyPath)
    } catch (err: any) {
      throw new UserError(`cannot read the identity key ${this.keyPath}: ${err.code ?? err.message} (run \`mesh init\`)`)
    }
    try {
      const key = privateKeyFromProtobuf(bytes)
      if (key.type !== 'Ed25519') throw new Error(`${key.type} key`)
      return key
    } catch (err: any) {
      throw new UserError(`the identity key ${this.keyPath} is corrupted (${err.message}); restore it from a backup, or move it away and run \`mesh init\` for a new identity`)
    }
  }

  async loadConfig (): Promise<MeshConfig> {
    const file = join(this.path, CONFIG_FILE)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err: any) {
      if (err.code === 'ENOENT') return { ...DEFAULT_CONFIG }
      throw new UserError(`cannot read ${file}: ${err.code ?? err.message}`)
    }
    try {
      return { ...DEFAULT_CONFIG, ...JSON.parse(text) }
    } catch (err: any) {
      throw new UserError(`${file} is not valid JSON: ${err.message}`)
    }
  }

  async saveConfig (config: MeshConfig): Promise<void> {
    await writeAtomic(join(this.path, CONFIG_FILE), JSON.stringify(config, null, 2) + '\n', 0o644)
  }

  /** The token that mutating API calls must carry; created on first use. */
  async apiToken (): Promise<string> {
    const file = join(this.path, TOKEN_FILE)
    try {
      return (await readFile(file, 'utf8')).trim()
    } catch {
      const token = randomBytes(24).toString('base64url')
      await writeAtomic(file, token + '\n', 0o600)
      return token
    }
  }

  async readToken (): Promise<string | undefined> {
    try {
      return (await readFile(join(this.path, TOKEN_FILE), 'utf8')).trim()
    } catch {
      return undefined
    }
  }

  /**
   * Takes the repo for a running node. A lock left by a node that died (kill -9) is stale and taken
   * over; one held by a live process is an error.
   */
  async lock (): Promise<void> {
    const running = await this.running()
    if (running != null && running.pid !== process.pid) {
      throw new UserError(`a node is already running on ${this.path} (pid ${running.pid}, API ${running.api})`)
    }
    await writeAtomic(join(this.path, LOCK_FILE), JSON.stringify({ pid: process.pid, api: '' }), 0o600)
  }

  async setApi (api: string): Promise<void> {
    await writeAtomic(join(this.path, LOCK_FILE), JSON.stringify({ pid: process.pid, api }), 0o600)
  }

  async unlock (): Promise<void> {
    await rm(join(this.path, LOCK_FILE), { force: true })
  }

  /** The node running on this repo, if any (its lock names a live pid). */
  async running (): Promise<RunningNode | undefined> {
    let lock: RunningNode
    try {
      lock = JSON.parse(await readFile(join(this.path, LOCK_FILE), 'utf8'))
    } catch {
      return undefined
    }
    if (typeof lock.pid !== 'number' || !alive(lock.pid)) return undefined
    return lock
  }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err: any) {
    return err.code === 'EPERM'
  }
}

/** Write to a temp file, fsync, rename: a crash leaves the old file or the new one, never half. */
export async function writeAtomic (file: string, data: string | Uint8Array, mode: number): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`
  const fh = await open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await chmod(tmp, mode)
  await rename(tmp, file)
}
