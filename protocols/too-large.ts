// Whether a read failed because the peer announced a message over the limit. lpStream says so
// with two errors: InvalidDataLengthError when the length fits the limit's varint size, and
// InvalidDataLengthLengthError when the length prefix itself is longer (any message of 128x the
// limit or more), which a check of the first name alone took for a peer hanging up.
export function tooLarge (err: unknown): boolean {
  const name = (err as { name?: unknown } | null)?.name
  return name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError'
}
