"""A train-from-scratch baseline for Cream: search a space with keras-tuner under a MACs budget.

Cream's one-shot search shares weights across paths; this package is the honest baseline it is
compared with: every proposed path is built as a standalone child network, trained briefly and
scored on held-out data. It reuses keras-tuner's machinery (persistence, resuming, random search,
Bayesian optimisation) and, following keras-tuner's own split, adds what a NAS space needs:

* `hyperparameters`: the space as `keras_tuner.HyperParameters`, and paths to and from them;
* `range_sampler`: paths whose MACs lie in a range, drawn uniformly or repaired;
* `oracles`: random search and Bayesian optimisation that only propose in-range paths;
* `loss` and `hypermodel`: the child of a proposal, compiled and trained from scratch;
* `tuning`: `tune`, the whole run, with an atomically written JSON summary and resuming.

Every name is re-exported here: `cream_tf.tuner.tune(...)` is the entry point.
"""
from cream_tf.tuner.hyperparameters import (flat_from_values, hp_name,
                                            hyperparameters_from_path,
                                            hyperparameters_from_space,
                                            path_from_hyperparameters, values_from_flat)
from cream_tf.tuner.hypermodel import OBJECTIVE, OPTIMIZERS, CreamHyperModel, make_optimizer
from cream_tf.tuner.loss import SparseCategoricalCrossentropyWithSmoothing, make_loss
from cream_tf.tuner.oracles import MacsBayesianOptimizationOracle, MacsRandomSearchOracle
from cream_tf.tuner.range_sampler import (MacsRangeError, RangeSampler, resolve_macs_range,
                                          sample_path_in_range)
from cream_tf.tuner.tuning import (ALGORITHMS, CONFIG_FILE, PROJECT_NAME, RESULTS_FILE,
                                   CreamTuner, TrialResult, TuneResult, tune)

__all__ = [
    "hp_name", "hyperparameters_from_space", "hyperparameters_from_path",
    "path_from_hyperparameters", "MacsRangeError", "resolve_macs_range", "sample_path_in_range",
    "CreamHyperModel", "MacsRandomSearchOracle", "MacsBayesianOptimizationOracle", "CreamTuner",
    "TrialResult", "TuneResult", "tune", "OBJECTIVE", "RESULTS_FILE", "ALGORITHMS", "OPTIMIZERS",
]
