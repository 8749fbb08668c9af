"""Synthetic supervision: faces rendered from the 3DMM with exact ground truth
(:mod:`face3d.synth.faces`) and landmark-placed occluders with exact masks
(:mod:`face3d.synth.occluders`)."""
from face3d.synth.faces import (BackgroundSource, SyntheticBatch, SyntheticFaceConfig, SyntheticFaceDataset,
                                SyntheticFaces, directional_sh, sample_seed)
from face3d.synth.occluders import (OCCLUDER_KINDS, OccluderLibrary, OccluderSampler, OcclusionResult, occlude,
                                    occlude_batch)

__all__ = ["BackgroundSource", "SyntheticBatch", "SyntheticFaceConfig", "SyntheticFaceDataset", "SyntheticFaces",
           "directional_sh", "sample_seed", "OCCLUDER_KINDS", "OccluderLibrary", "OccluderSampler", "OcclusionResult",
           "occlude", "occlude_batch"]
