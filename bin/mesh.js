#!/usr/bin/env node
// The `mesh` command. Mesh needs Node 22.19+ (Helia's HTTP stack); the repo installs Node 24 as a
// devDependency, so when an older system Node runs this file we hand over to that one.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 22 || (major === 22 && minor < 19)) {
  const bundled = fileURLToPath(new URL('../node_modules/node/bin/node', import.meta.url))
  if (!existsSync(bundled)) {
    process.stderr.write(`mesh: Node ${process.versions.node} is too old (need 22.19 or newer); run \`npm install\` in the Mesh folder\n`)
    process.exit(1)
  }
  const child = spawn(bundled, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' })
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig))
  child.on('exit', (code, signal) => process.exit(code ?? (signal != null ? 128 + 1 : 1)))
} else {
  await import('../node/cli.ts')
}
