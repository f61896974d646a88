"""The shared patch core: what every capability uses to patch a ModelPatcher.

- ``shared``: the base class of objects placed in ``model_options`` (one copy/move convention).
- ``runs``: per-sampling-run state created by an OUTER_SAMPLE wrapper.
- ``patches``: one multiplexing object per stacking patch slot, and replace chains that wrap
  whatever already sits at a replace key.
- ``weights``: safetensors files read header-first, and auxiliary modules cached per (file, part,
  dtype) in ModelPatchers that the host loads and offloads.
- ``safe_pickle``: a restricted, streaming reader for torch zip checkpoints (offline converters):
  it rebuilds tensors and plain containers only and refuses any other pickled global.

Pure tensor math stays in ``kernels`` (``kernels.patch_layout`` and ``kernels.steps`` hold the
layer-address, CFG-chunk and step helpers these modules build on).
"""
