"""One unit of work each: train a prompt (:mod:`~promptatlas.runs.train`), transfer and zero-shot
evaluation (:mod:`~promptatlas.runs.transfer`), a projection across models
(:mod:`~promptatlas.runs.crossmodel`). A run takes a config and an output path it is given."""
