"""Pipeline stages: one Beam PTransform (or small family) per stage, pure helpers beside them."""
