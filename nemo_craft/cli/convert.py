"""``nemo-craft convert``: checkpoints between Hugging Face and this project.

    nemo-craft convert to-hf   [overrides] checkpoint.resume=PATH --out DIR
        a training checkpoint (any layout it was saved at) -> Hugging Face safetensors + config.json
    nemo-craft convert from-hf [overrides] model.hf_path=DIR --out CKPT_DIR
        Hugging Face weights -> a step-0 checkpoint that ``checkpoint.resume=CKPT_DIR`` starts from

Run under torchrun with the layout's overrides for large models: each rank reads or writes only
its own TP/PP slice (export gathers to rank 0, which writes).
"""

from __future__ import annotations

import argparse
import sys

from nemo_craft.config import RunConfig, to_dataclass
from nemo_craft.eval.evaluator import eval_config, load_policy


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="nemo-craft convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("direction", choices=("to-hf", "from-hf"))
    ap.add_argument("--out", required=True, help="output directory")
    args, overrides = ap.parse_known_args(argv)
    cfg, _ = eval_config(overrides)
    run = RunConfig.from_omegaconf(cfg)
    if args.direction == "to-hf" and not cfg.checkpoint.get("resume"):
        ap.error("to-hf needs checkpoint.resume=PATH (the checkpoint to export)")
    if args.direction == "from-hf" and not run.model.hf_path:
        ap.error("from-hf needs model.hf_path=DIR (the Hugging Face checkpoint to import)")

    from nemo_craft.cli.train import _single_process_env
    from nemo_craft.parallel.initialize import destroy_parallel, initialize_parallel

    _single_process_env()
    initialize_parallel(run.parallel, seed=int(cfg.seed))
    chunks, step = load_policy(cfg, run)
    if args.direction == "to-hf":
        from nemo_craft.models.hf import save_hf_checkpoint

        save_hf_checkpoint(chunks, run.model, args.out, template_dir=run.model.hf_path)
    else:
        from omegaconf import OmegaConf

        from nemo_craft.trainer.checkpoint import CheckpointConfig, CheckpointManager

        manager = CheckpointManager(to_dataclass(CheckpointConfig, {"dir": args.out, "save_every": 0}, "checkpoint"))
        manager.save(0, chunks, None, None, {"step": 0}, OmegaConf.to_yaml(cfg, resolve=True))
    print(f"[nemo_craft] wrote {args.out} (from step {step if step is not None else 'init'})")
    destroy_parallel()
    return 0
