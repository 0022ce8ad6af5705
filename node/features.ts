// The features every `mesh start` node runs, in start order. A capability adds its factory here.
import type { FeatureList } from './feature.ts'
import { artifacts } from './artifacts.ts'
import { functions } from './functions.ts'
import { documents } from './documents.ts'

import { descriptorsFeature } from './descriptors.ts'
import { telemetry } from './telemetry.ts'

export const nodeFeatures: FeatureList = [
  ['artifacts', artifacts],
  ['functions', functions],
  ['descriptors', descriptorsFeature],
  ['docs', documents],
  ['telemetry', telemetry],
]
