"""Evaluation of checkpoints and sweeps over the paper's matrix (methods x environments x models x seeds).

splits      which tasks a "val" / "test" split is, per environment
metrics     the metrics each environment reports in the paper, and one evaluation's summary
evaluator   roll out a split with a checkpoint (``nemo-craft evaluate``)
sweep_spec  a sweep's YAML (conf/sweep/) expanded into runs; which runs finished
results     final validation metrics of a sweep's runs -> mean ± std table (CSV, Markdown)
plots       learning curves and the pillar ablation as PNG
slurm       the sbatch array commands of a sweep
"""

from nemo_craft.eval.metrics import PaperMetric, summarize
from nemo_craft.eval.splits import SPLITS, SplitSpec, split_spec
from nemo_craft.eval.sweep_spec import RunSpec, SweepSpec, is_finished

__all__ = [
    "PaperMetric",
    "summarize",
    "SPLITS",
    "SplitSpec",
    "split_spec",
    "RunSpec",
    "SweepSpec",
    "is_finished",
]
