// What every `mesh` command shares: global options, output, durations, and the API client.
// Command modules (`node/commands/*.ts`) take these rather than reaching into cli.ts.
import ms from 'ms'
import { connectClient } from './client.ts'
import { UserError } from './errors.ts'
import { Repo } from './repo.ts'
import type { ApiClient } from './client.ts'
import type { Command } from 'commander'

export interface GlobalOptions {
  repo: string
  json?: boolean
  debug?: boolean
  timeout: number
}

export function globals (cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals() as GlobalOptions
}

export function parseDuration (text: string): number {
  const n = /^\d+(\.\d+)?$/.test(text) ? Number(text) * 1000 : ms(text as ms.StringValue)
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) throw new UserError(`not a duration: ${text} (try 30s, 2m or 500ms)`)
  return n
}

/** `--json` prints the value; otherwise the human text. Always to stdout, one trailing newline. */
export function print (opts: GlobalOptions, value: unknown, human: () => string): void {
  process.stdout.write(opts.json === true ? JSON.stringify(value, null, 2) + '\n' : human() + '\n')
}

/** A client of the node running on the command's repo. */
export async function client (cmd: Command): Promise<ApiClient> {
  const opts = globals(cmd)
  return connectClient(new Repo(opts.repo), opts.timeout)
}

/** For repeatable options: `--x a --x b` → ['a', 'b']. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

/** A command module adds its commands to the program. */
export type CommandModule = (program: Command) => void
