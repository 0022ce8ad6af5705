// What the main thread and a sandbox worker say to each other.

export type Outcome = 'ok' | 'exit-nonzero' | 'timeout' | 'memory' | 'output' | 'trap' | 'refused'

export interface ImportedMemory {
  module: string
  name: string
  initial: number
  maximum: number
  shared: boolean
}

export interface RunRequest {
  type: 'run'
  id: number
  module: WebAssembly.Module
  // Names the module imports from wasi_snapshot_preview1.
  wasiImports: string[]
  importedMemory: ImportedMemory | undefined
  // The most linear memory the module can have, after capping: to tell "out of memory" from other traps.
  memoryMaxBytes: number
  argv: string[]
  env: Record<string, string>
  stdin: Uint8Array
  output: SharedArrayBuffer
}

export interface RunReply {
  type: 'done'
  id: number
  exitCode: number
  outcome: Outcome
  message?: string
  memoryBytes: number
}

export type WorkerMessage = RunReply | { type: 'ready' }
