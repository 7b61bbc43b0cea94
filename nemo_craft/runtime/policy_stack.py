"""The policy stack that training and evaluation both run, built in one place: the parallel state,
this rank's model chunks with their weights, the tokenizer, the generator and the episode runner.

    stack = PolicyStack.build(run, seed=cfg.seed, for_training=True)   # process groups, model, tokenizer
    model = wrap_ddp(stack.chunks, run.parallel)                        # the trainer's own part
    runner = stack.start_episodes(run, validation=False)

The generator comes last on purpose: it runs the bare chunks, which the trainer wraps in megatron's
DDP (that moves the parameters into its buffers) and the evaluator loads a checkpoint into; a
backend that captures the parameters (the dynamic engine's CUDA graphs) must see the final ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from nemo_craft.models.hf import load_hf_weights
from nemo_craft.models.provider import build_model
from nemo_craft.models.tokenizer import load_tokenizer
from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.parallel.initialize import initialize_parallel
from nemo_craft.rollout.episodes import EpisodeRunner
from nemo_craft.rollout.generation import Generator
from nemo_craft.runtime.checkpoint import CheckpointManager

if TYPE_CHECKING:
    from nemo_craft.config import RunConfig

__all__ = ["PolicyStack", "build_model_chunks", "load_checkpoint_weights", "policy_vocab_size"]


def build_model_chunks(run: RunConfig, *, for_training: bool) -> list:
    """This rank's bare model chunks with the ``model.hf_path`` weights (the initial ones when
    none). Training builds them with per-token loss normalisation (the loss contract with
    megatron, docs/design.md#the-loss-contract-with-megatron); generation does not need it."""
    run.model.check_weights()  # init / hf_path / config.json agree (also at start-up validation)
    overrides = {"calculate_per_token_loss": True} if for_training else None
    chunks = build_model(run.model, run.parallel, transformer_config_overrides=overrides)
    if run.model.hf_path:
        load_hf_weights(chunks, run.model, run.model.hf_path)
    return chunks


def load_checkpoint_weights(checkpoint_cfg, chunks: list) -> Optional[int]:
    """Load ``checkpoint.resume``'s model weights into ``chunks`` (no optimizer); the
    checkpoint's step, or None (and the chunks untouched) when no checkpoint is asked for."""
    ckpt = CheckpointManager(checkpoint_cfg)
    info = ckpt.find_resume()
    if info is None:
        return None
    ckpt.load(chunks, None, None, path=str(info.path))
    return info.step


def policy_vocab_size(tokenizer, model_vocab_size: int) -> int:
    """The vocabulary the policy is a distribution over: the tokenizer's ids, the ones the
    sampler can draw (logit columns beyond them, megatron's padding or unused rows of the
    embedding, are left out of every softmax, in rollouts and in the losses alike; otherwise
    pi_old in the losses would not be the distribution that sampled)."""
    vocab = tokenizer.vocab_size
    if vocab > model_vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab} ids, model.vocab_size={model_vocab_size}: the model "
            "cannot score every token it may be given; use the model's own tokenizer"
        )
    return vocab


@dataclass
class PolicyStack:
    """What one rank needs to run the policy: see the module docstring."""

    dp_size: int
    dp_rank: int
    dp_group: Any
    """The data-parallel process group; None when data parallel is 1 (no collective needed)."""
    rank: int
    device: torch.device
    chunks: list
    """This rank's bare model chunks (megatron's GPTModel per virtual pipeline stage)."""
    tokenizer: Any
    vocab_size: int
    """The policy's vocabulary (:func:`policy_vocab_size`)."""
    generator: Any = None
    runner: Any = None
    """The generator and the episode runner, once :meth:`start_episodes` has run."""

    @classmethod
    def build(cls, run: RunConfig, *, seed: int, init_method: Optional[str] = None, for_training: bool) -> PolicyStack:
        """Initialise the process groups (seeding every generator with ``seed``), build the model
        chunks with their ``model.hf_path`` weights and load the tokenizer."""
        dp_size = initialize_parallel(run.parallel, seed=int(seed), init_method=init_method)
        device = compute_device()
        chunks = build_model_chunks(run, for_training=for_training)
        tokenizer = load_tokenizer(run.model.tokenizer, hf_path=run.model.hf_path)
        return cls(
            dp_size=dp_size,
            dp_rank=ps.get_data_parallel_rank(),
            dp_group=ps.get_data_parallel_group() if dp_size > 1 else None,
            rank=dist.get_rank(),
            device=device,
            chunks=chunks,
            tokenizer=tokenizer,
            vocab_size=policy_vocab_size(tokenizer, run.model.vocab_size),
        )

    def start_episodes(self, run: RunConfig, *, validation: bool, env_changes: Optional[dict] = None):
        """The generator over the chunks (at the validation sampling settings when ``validation``)
        and the episode runner over ``run``'s environment (``env_changes`` to its config: an
        evaluation split); returns the runner."""
        rollout = run.rollout
        self.generator = Generator(
            self.chunks, self.tokenizer, rollout.generation_config(validation=validation), model_cfg=run.model
        )
        factory = run.env.factory(**(env_changes or {}))
        self.runner = EpisodeRunner(self.generator, self.tokenizer, factory, rollout, run.env.pool)
        return self.runner
