// Every command module of the CLI, in the order `mesh --help` lists them. A capability adds its
// commands in a module of its own here (see cli-kit.ts for what a module gets).
import type { CommandModule } from '../cli-kit.ts'
import { identityCommands } from './identity.ts'
import { artifactCommands } from './artifacts.ts'
import { nodeCommands } from './nodes.ts'
import { docCommands } from './docs.ts'
import { statusCommands } from './status.ts'

export const commandModules: CommandModule[] = [
  identityCommands,
  artifactCommands,
  nodeCommands,
  docCommands,
  statusCommands,
]
