// Builds the WASI test programs in test/fixtures/wasm/*.as with the AssemblyScript compiler and
// its WASI shim, so the repo carries sources only. The sources end in .as (not .ts) so that tsc,
// which type-checks test/, leaves them alone; they are copied to NAME.ts for asc, which insists on
// .ts. Tests call buildWasmFixtures() in a before hook; run directly to build into a directory:
//   node scripts/build-wasm-fixtures.ts OUT_DIR

import { copyFile, mkdir, readFile, readdir } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
export const FIXTURE_SOURCES = join(ROOT, 'test', 'fixtures', 'wasm')
const WASI_SHIM_CONFIG = join(ROOT, 'node_modules', '@assemblyscript', 'wasi-shim', 'asconfig.json')

// The shim's asconfig.json, spelled out as flags, so the build works from any working directory.
async function shimOptions (): Promise<string[]> {
  const { options } = JSON.parse(await readFile(WASI_SHIM_CONFIG, 'utf8')) as { options: { lib: string, use: string[], exportStart: string } }
  return [
    '--lib', resolve(dirname(WASI_SHIM_CONFIG), options.lib),
    ...options.use.flatMap(u => ['--use', u]),
    '--exportStart', options.exportStart
  ]
}

// asc's own listFiles joins (rather than resolves) an absolute --lib path onto its base dir.
async function listFiles (dir: string, baseDir: string): Promise<string[] | null> {
  try {
    return (await readdir(resolve(baseDir, dir))).filter(f => f.endsWith('.ts') && !f.endsWith('.d.ts'))
  } catch {
    return null
  }
}

// Returns fixture name -> compiled bytes; the .wasm files are also left in outDir.
export async function buildWasmFixtures (outDir: string, names?: string[]): Promise<Record<string, Uint8Array>> {
  // Imported lazily: the compiler is big, and only building needs it.
  const { default: asc } = await import('assemblyscript/asc')
  await mkdir(outDir, { recursive: true })
  const all = (await readdir(FIXTURE_SOURCES)).filter(f => f.endsWith('.as')).map(f => basename(f, '.as'))
  const wanted = names ?? all
  const shim = await shimOptions()
  const built: Record<string, Uint8Array> = {}
  for (const name of wanted) {
    if (!all.includes(name)) throw new Error(`no fixture source ${name}.as in ${FIXTURE_SOURCES}`)
    const source = join(outDir, `${name}.ts`)
    const wasm = join(outDir, `${name}.wasm`)
    await copyFile(join(FIXTURE_SOURCES, `${name}.as`), source)
    const log: string[] = []
    const sink = { write: (s: string | Uint8Array) => { log.push(String(s)); return true } }
    const { error } = await asc.main([source, ...shim, '--outFile', wasm], { stdout: sink as any, stderr: sink as any, listFiles })
    if (error !== null) throw new Error(`asc failed on ${name}.as: ${error.message}\n${log.join('')}`)
    built[name] = new Uint8Array(await readFile(wasm))
  }
  return built
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const out = process.argv[2]
  if (out === undefined) {
    console.error('usage: node scripts/build-wasm-fixtures.ts OUT_DIR')
    process.exit(2)
  }
  const built = await buildWasmFixtures(resolve(out))
  for (const [name, bytes] of Object.entries(built)) console.error(`${name}.wasm ${bytes.length} bytes`)
}
