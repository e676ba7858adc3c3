"""Many runs and a results folder: experiments (:mod:`~promptatlas.studies.experiment`), transfer
grids (:mod:`~promptatlas.studies.grid`) and the analysis atlas
(:mod:`~promptatlas.studies.atlas`). Only studies (and the CLI) decide where result folders go."""
