// Helia for a Mesh node, built from Helia's own class and a small libp2p mixin, without loading the
// defaults no Mesh node runs.
//
// Why: `helia`'s package index imports @helia/libp2p, and that module imports libp2p's whole
// default stack (AutoTLS with its X.509 and ACME libraries, WebRTC, UPnP, WebSockets...). Measured
// with a forced GC after the imports: the modules a node needs made ~50 MB of JS heap, ~23 MB of it
// for code no Mesh node runs, in every process and worker thread that starts a node; every full
// garbage collection marks all of it (and bulk transfers start one per ~64 MB of buffers, see
// noise.ts). Built this way they make ~27 MB.
//
// `createHelia` is Helia's own createHeliaLight: the package exports its class only through the
// index, so the class is loaded from its file next to the index (and, should a later Helia move it,
// from the index after all). `withLibp2p` does for a Mesh node what @helia/libp2p's
// withLibp2pLight does: creates libp2p from the options as given when Helia starts, names it as
// Helia would in identify, and stops it with Helia. It leaves out what never applies to Mesh: a
// key from Helia's keychain (a MeshNode always passes its own), and copying peers found by other
// routers into the peer store (Mesh's only router is libp2p's, block-routing.ts).
import { NotStartedError } from '@libp2p/interface'
import { createLibp2p } from 'libp2p'
import { userAgent } from 'libp2p/user-agent'
import type { Helia } from '@helia/interface'
import type { HeliaWithLibp2p } from '@helia/libp2p'
import type { HeliaInit } from 'helia'
import type { ServiceMap } from '@libp2p/interface'
import type { Libp2p, Libp2pOptions } from 'libp2p'

export type CreateHelia = (init?: Partial<HeliaInit>) => Helia

async function loadHelia (): Promise<CreateHelia> {
  try {
    const index = import.meta.resolve('helia')
    const [{ Helia: HeliaClass }, { name, version }] = await Promise.all([
      import(new URL('./helia.js', index).href),
      import(new URL('./version.js', index).href)
    ])
    if (typeof HeliaClass === 'function' && typeof version === 'string') {
      return (init = {}) => new HeliaClass({ name, version, ...init })
    }
  } catch {}
  const { createHeliaLight } = await import('helia')
  return createHeliaLight as CreateHelia
}

/** Helia with no routers, block brokers or libp2p of its own (createHeliaLight). */
export const createHelia: CreateHelia = await loadHelia()

/** Adds a libp2p made from `options` when Helia starts (withLibp2pLight, for Mesh). */
export function withLibp2p<S extends ServiceMap> (helia: Helia, options: Libp2pOptions<S>): HeliaWithLibp2p<S> {
  let libp2p: Libp2p<S> | undefined
  Object.defineProperty(helia, 'libp2p', {
    configurable: true,
    enumerable: true,
    get () {
      if (libp2p == null) throw new NotStartedError('Helia has not started')
      return libp2p
    }
  })
  helia.addMixin({
    name: 'libp2p',
    start: async () => {
      const { name, version } = helia.info
      libp2p ??= await createLibp2p({
        ...options,
        datastore: options.datastore ?? helia.datastore,
        nodeInfo: { name, version, userAgent: `${name}/${version} ${userAgent()}`, ...options.nodeInfo }
      })
      await libp2p.start()
    },
    stop: async () => { await libp2p?.stop() }
  })
  return helia as HeliaWithLibp2p<S>
}
