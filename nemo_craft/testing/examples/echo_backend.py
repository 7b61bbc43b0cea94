"""A generation backend that continues every prompt with a copy of the prompt (docs/extending.md).

It runs no model: it shows what a backend implements and how ``Generator`` drives it. After
``register()``, ``rollout.generation.backend=echo`` (or ``GenerationConfig(backend="echo")``) builds it.
"""

from __future__ import annotations

from nemo_craft.rollout.backends import register_backend


class EchoBackend:
    holds_weight_copy = False  # no weights of its own: nothing to refit, nothing for the planner to count
    paged_kv_cache = False  # no kv_cache_gb for the planner to count
    auto_preference = None  # backend=auto never takes it

    def __init__(self, max_sequence_length: int):
        self.max_sequence_length = max_sequence_length
        self._tokens = 0

    @classmethod
    def problem(cls, capability) -> str | None:
        return None  # runs anywhere (capability() would probe CUDA, flash-attn and the model's dtype)

    @classmethod
    def check_run(cls, parallel_cfg, model_cfg) -> None:
        if parallel_cfg.pipeline_model_parallel_size != 1:
            raise ValueError(
                "rollout.generation.backend=echo needs parallel.pipeline_model_parallel_size=1, "
                f"got {parallel_cfg.pipeline_model_parallel_size}"
            )

    @classmethod
    def build(cls, model_chunks, config, *, vocab_size: int, max_sequence_length: int, model_cfg) -> EchoBackend:
        return cls(max_sequence_length)

    def generate(self, prompts, budgets, *, temperature, top_k, top_p, stop, generator):
        results = []
        for prompt, budget in zip(prompts, budgets):
            tokens, reason = [], None
            while reason is None:  # stop decides: a stop id or string, else the budget
                tokens.append(prompt[len(tokens) % len(prompt)])
                reason = stop.check(tokens, budget)
            results.append((tokens, [0.0] * len(tokens), reason))  # log pi = 0: it is certain
            self._tokens += len(tokens)
        return results

    def weights_changed(self) -> None:
        pass  # it holds no weights

    def release_memory(self) -> None:
        pass  # it holds no memory between calls

    def read_stats(self) -> dict[str, float]:
        stats, self._tokens = {"rollout/echo_tokens": float(self._tokens)}, 0
        return stats


def register() -> None:
    register_backend("echo", "nemo_craft.testing.examples.echo_backend:EchoBackend")
