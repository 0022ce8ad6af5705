// The community network a node belongs to, as kept in its repo (`community.json`): the network's
// genesis, this node's own membership credential and every revocation it has seen. A node in a
// community runs the membership handshake on every connection; a node on a plain named network
// (`--network NAME`, the `default` one included) has no community and checks no one.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { didFromPeerId } from '../identity/did-key.ts'
import { checkMembership, decodeGenesis, RevocationList } from '../identity/network.ts'
import { decodeJwt } from '../identity/credentials.ts'
import { writeAtomic } from './repo.ts'
import { UserError } from './errors.ts'
import type { Genesis, Revocation, Role } from '../identity/network.ts'
import type { Verdict } from '../protocols/membership.ts'
import type { PeerId } from '@libp2p/interface'

const FILE = 'community.json'

interface CommunityFile {
  genesis: string
  credential?: string
  revocations: string[]
}

export class Community {
  readonly genesis: Genesis
  readonly revocations: RevocationList
  credential?: string
  private readonly file: string
  /** Revocations are persisted one at a time, in order, each before it is acknowledged. */
  private saving: Promise<void> = Promise.resolve()

  private constructor (dir: string, genesis: Genesis, revocations: RevocationList, credential?: string) {
    this.file = join(dir, FILE)
    this.genesis = genesis
    this.revocations = revocations
    this.credential = credential
  }

  /** The community the repo at `dir` belongs to, if any. */
  static async load (dir: string): Promise<Community | undefined> {
    let text: string
    try {
      text = await readFile(join(dir, FILE), 'utf8')
    } catch (err: any) {
      if (err.code === 'ENOENT') return undefined
      throw new UserError(`cannot read ${join(dir, FILE)}: ${err.code ?? err.message}`)
    }
    try {
      const data = JSON.parse(text) as CommunityFile
      const genesis = await decodeGenesis(Buffer.from(data.genesis, 'base64'))
      const revocations = await RevocationList.fromJSON(genesis, data.revocations ?? [])
      return new Community(dir, genesis, revocations, data.credential)
    } catch (err: any) {
      throw new UserError(`${join(dir, FILE)} is damaged (${err.message}); restore it or join the network again`)
    }
  }

  /** Makes the repo at `dir` a member of `genesis`'s network, keeping no earlier revocations. */
  static async create (dir: string, genesis: Genesis, credential?: string): Promise<Community> {
    const community = new Community(dir, genesis, new RevocationList(genesis), credential)
    await community.save()
    return community
  }

  get id (): string { return this.genesis.id }
  get name (): string { return this.genesis.record.name }

  /** This node's standing: a root of the genesis, the role its credential grants, or open membership. */
  roleOf (did: string): Role | 'root' | 'open' | 'none' {
    if (this.genesis.record.roots.includes(did)) return 'root'
    if (this.credential != null) {
      const role = decodeJwt(this.credential).payload.vc as any
      const r = role?.credentialSubject?.role
      if (r === 'admin' || r === 'member') return r
    }
    return this.genesis.record.policy.open ? 'open' : 'none'
  }

  /** What this node presents in the handshake: its credential, or nothing (roots and open networks). */
  presentation (): Uint8Array {
    return new TextEncoder().encode(this.credential ?? '')
  }

  /**
   * The verdict a peer's key alone decides, before it presents anything: a root is a root, on an
   * open network any unrevoked key is a member (its presentation can only add a role), and a
   * revoked key is out.
   */
  earlyVerdict (remote: PeerId): Verdict | undefined {
    let did: string
    try {
      did = didFromPeerId(remote)
    } catch {
      return undefined
    }
    if (this.revocations.has(did)) return { ok: false, reason: 'revoked' }
    if (this.genesis.record.roots.includes(did)) return { ok: true, did, role: 'root' }
    if (this.genesis.record.policy.open) return { ok: true, did, role: 'member' }
    return undefined
  }

  async verify (remote: PeerId, presentation: Uint8Array): Promise<Verdict> {
    let did: string
    try {
      did = didFromPeerId(remote)
    } catch {
      return { ok: false, reason: 'malformed' }
    }
    if (this.genesis.record.roots.includes(did)) {
      return this.revocations.has(did) ? { ok: false, reason: 'revoked' } : { ok: true, did, role: 'root' }
    }
    const text = new TextDecoder('utf-8', { fatal: false }).decode(presentation)
    const result = await checkMembership({
      genesis: this.genesis,
      credential: text === '' ? undefined : text,
      remoteDid: did,
      revoked: this.revocations
    })
    if (!result.ok) return { ok: false, reason: result.reason }
    return { ok: true, did, role: result.role, credentialId: result.credentialId, expiresAt: result.expiresAt?.getTime() }
  }

  /**
   * Verifies and stores revocation tokens; resolves with those that were new, once they are on
   * disk. Invalid tokens are skipped and reported in `rejected`.
   */
  async addRevocations (tokens: unknown[]): Promise<{ added: Revocation[], rejected: number }> {
    const added: Revocation[] = []
    let rejected = 0
    for (const token of tokens) {
      if (typeof token !== 'string') { rejected++; continue }
      try {
        const before = this.revocations.size
        const revocation = await this.revocations.add(token)
        if (this.revocations.size > before) added.push(revocation)
      } catch {
        rejected++
      }
    }
    if (added.length > 0) await this.save()
    return { added, rejected }
  }

  /** Whether a peer that passed earlier is now revoked (by its DID or by its credential's ID). */
  isRevoked (verdict: Verdict & { ok: true }): boolean {
    return this.revocations.has(verdict.did) || (verdict.credentialId != null && this.revocations.has(verdict.credentialId))
  }

  async save (): Promise<void> {
    const data: CommunityFile = {
      genesis: Buffer.from(this.genesis.bytes).toString('base64'),
      credential: this.credential,
      revocations: this.revocations.toJSON()
    }
    this.saving = this.saving.catch(() => {}).then(async () => writeAtomic(this.file, JSON.stringify(data, null, 2) + '\n', 0o600))
    await this.saving
  }
}
