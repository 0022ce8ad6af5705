// How V8 collects garbage in a process that runs a Mesh node.
//
// By default V8 starts a full mark of the heap each time ~64 MB of new external memory (the
// ArrayBuffers behind every Buffer) has been allocated since the last one, however small the heap.
// A node moving bytes allocates that much for every 64 MB it sends or receives, more than once:
// each socket read, each Noise frame decrypted or encrypted, each bitswap message joined into a
// block is a new ArrayBuffer. A 64 MB artifact transfer between two nodes ran 4-6 full marks on
// each end (and their helper threads), and used ~1.8 of this machine's 2 cores, nearly half of it
// garbage collection. With `--external-memory-accounted-in-global-limit` V8 counts external memory
// in the same global limit as the heap itself, which grows with what survives collections, so
// short-lived buffers are collected when the heap as a whole calls for it. Measured
// (bench:functions, two runs each way, alternated, 2026-12-05): 64 MB 138-156 -> 223-258 MB/s,
// 16 MB 121-126 -> 160-178 MB/s, CPU of both ends' JavaScript threads per 64 MB 364-390 ->
// 297-307 ms (the GC helper threads, not counted there, saved more: the whole process used
// ~800 -> ~500 ms per 64 MB). Peak RSS moving 8 x 64 MB between two nodes: 955 -> 1026 MB, with
// 512 MB of blocks held.
//
// V8 flags are per process, so this is a decision for a process that runs one node: startDaemon
// (`mesh start`) makes it, a MeshNode alone does not. Where one process hosts a hundred nodes in
// one heap (the simulation, the tests), the global limit grows with that shared heap and lets far
// more garbage gather: the 100-node simulation peaked at 1854 MB RSS with the flag against 1129 MB
// without, its latencies unchanged. MESH_V8_DEFAULT_GC=1 leaves V8's default in a daemon too.
import { setFlagsFromString } from 'node:v8'

let applied = false

export function tuneGarbageCollection (): void {
  if (applied || process.env.MESH_V8_DEFAULT_GC === '1') return
  applied = true
  setFlagsFromString('--external-memory-accounted-in-global-limit')
}
