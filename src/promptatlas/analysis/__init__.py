"""Explaining soft prompts inside the model (SPEC §5).

* :mod:`~promptatlas.analysis.capture` — the capture engine (hooks through the architecture
  adapter, position bookkeeping, streaming reducers).
* :mod:`~promptatlas.analysis.attention` — attention variability, attention change (KL),
  their correlation.
* :mod:`~promptatlas.analysis.neurons` — ON score of FFN activations.
* :mod:`~promptatlas.analysis.geometry` — isotropy and label space.
* :mod:`~promptatlas.analysis.pca` — PCA of prompts.
* :mod:`~promptatlas.analysis.layers` — peak/trough layer selection for v2 compression.
"""
