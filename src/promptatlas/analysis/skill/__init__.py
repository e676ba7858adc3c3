"""Skill neurons (Wang et al. 2022) for decoder LMs: read, score, select, perturb, prune.

* :mod:`~promptatlas.analysis.skill.states` — neurons of any supported family (the input of
  the FFN down-projection, or the gate pre-activation), read at the decoding token or reduced
  over the input tokens.
* :mod:`~promptatlas.analysis.skill.predictivity` — streaming predictivity (thresholds on the
  training split, accuracy on a held-out split, multi-class sub-tasks, seed averaging),
  selection of skill neurons, controls, similarity between tasks.
* :mod:`~promptatlas.analysis.skill.perturb` — zero / mean / Gaussian perturbation hooks and
  their effect against random and least-predictive controls; task × task matrix.
* :mod:`~promptatlas.analysis.skill.prune` — slicing FFNs to the kept neurons with the
  removed neurons' mean folded into a bias.

Exact definitions: ``specs/skill-neurons-and-indicators.md`` §A. Everything returns result
objects; nothing here writes files.
"""

from promptatlas.analysis.skill.perturb import (
    MODES,
    CrossTaskPerturbation,
    EvalSetup,
    PerturbationCurve,
    PerturbationResult,
    cross_task_perturbation,
    measure_perturbation,
    perturb_neurons,
    perturbation_curve,
)
from promptatlas.analysis.skill.predictivity import (
    NeuronActivations,
    Predictivity,
    PredictivityAccumulator,
    SkillNeurons,
    SkillSimilarity,
    SubTask,
    default_subtasks,
    example_labels,
    least_predictive,
    neuron_activations,
    neuron_predictivity,
    one_vs_rest,
    predictivity_correlation,
    predictivity_from_batches,
    random_control,
    reference_subtasks,
    seed_average,
    select_count,
    select_skill_neurons,
    simple_predictivity,
    skill_overlap,
    skill_similarity,
)
from promptatlas.analysis.skill.prune import (
    PrunedModel,
    default_prune_layers,
    forward_time,
    keep_by_predictivity,
    prune_ffn,
    pruning_means,
    random_keep,
)
from promptatlas.analysis.skill.states import (
    POSITIONS,
    STATES,
    FFNLayout,
    NeuronRead,
    ffn_layout,
    ffn_parts,
    read_neurons,
    readout,
)

__all__ = [
    "MODES",
    "POSITIONS",
    "STATES",
    "CrossTaskPerturbation",
    "EvalSetup",
    "FFNLayout",
    "NeuronActivations",
    "NeuronRead",
    "PerturbationCurve",
    "PerturbationResult",
    "Predictivity",
    "PredictivityAccumulator",
    "PrunedModel",
    "SkillNeurons",
    "SkillSimilarity",
    "SubTask",
    "cross_task_perturbation",
    "default_prune_layers",
    "default_subtasks",
    "example_labels",
    "ffn_layout",
    "ffn_parts",
    "forward_time",
    "keep_by_predictivity",
    "least_predictive",
    "measure_perturbation",
    "neuron_activations",
    "neuron_predictivity",
    "one_vs_rest",
    "perturb_neurons",
    "perturbation_curve",
    "predictivity_correlation",
    "predictivity_from_batches",
    "prune_ffn",
    "pruning_means",
    "random_control",
    "random_keep",
    "read_neurons",
    "readout",
    "reference_subtasks",
    "seed_average",
    "select_count",
    "select_skill_neurons",
    "simple_predictivity",
    "skill_overlap",
    "skill_similarity",
]
