// The features every `mesh start` node runs, in start order. A capability adds its factory here.
import type { FeatureList } from './feature.ts'

export const nodeFeatures: FeatureList = [
]
