"""Test helpers: a scripted stand-in for the Generator, a ChatML Hugging Face tokenizer built
locally (no download), and a checker of a trajectory's token layout."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nemo_craft.rollout import GenerationConfig, GenerationResult, StopCriteria, Trajectory


class ScriptedPolicy:
    """Answers each prompt with ``answer(prompt_text, row) -> token ids``, cut like the real
    generator would (stop ids / stop strings / budget); records every call."""

    def __init__(self, tokenizer, answer: Callable[[str, int], list[int]], max_sequence_length: int = 4096):
        self.tokenizer = tokenizer
        self.answer = answer
        self.max_sequence_length = max_sequence_length
        self.calls: list[dict] = []

    def generate(self, prompts_token_ids, *, max_new_tokens, seed, config: GenerationConfig):
        stop = StopCriteria(self.tokenizer.stop_ids, config.stop_strings, self.tokenizer.decode)
        results = []
        for row, (prompt, budget) in enumerate(zip(prompts_token_ids, max_new_tokens)):
            script = self.answer(self.tokenizer.decode(prompt), row)
            out, reason = [], "length"
            for tok in script:
                if len(out) >= budget:
                    break
                out.append(tok)
                reason = stop.check(out, budget)
                if reason is not None:
                    break
            reason = reason or "length"
            results.append(GenerationResult(out, [-0.25] * len(out), reason, self.tokenizer.decode(out)))
        self.calls.append(
            dict(prompts=[list(p) for p in prompts_token_ids], budgets=list(max_new_tokens), seed=seed, results=results)
        )
        return results


def action_spans(tr: Trajectory) -> list[tuple[int, int]]:
    """(start, end) of each turn's action tokens, checking they are contiguous and numbered."""
    spans = []
    k = 0
    i = 0
    n = len(tr.token_ids)
    while i < n:
        if tr.loss_mask[i]:
            j = i
            while j < n and tr.loss_mask[j] and tr.turn_ids[j] == tr.turn_ids[i]:
                j += 1
            assert tr.turn_ids[i] == k, f"turn ids not consecutive: {tr.turn_ids[i]} after {k - 1}"
            assert tr.pos_in_turn[i:j] == list(range(j - i)), "positions inside a turn must be 0..n-1"
            spans.append((i, j))
            k += 1
            i = j
        else:
            assert tr.turn_ids[i] == 0 and tr.pos_in_turn[i] == 0 and tr.logprobs[i] == 0.0
            i += 1
    return spans


def check_layout(tr: Trajectory, calls: Sequence[dict]) -> None:
    """Every per-token list has the sequence's length; action k is exactly what the policy
    returned at turn k, for exactly the prefix before it as the prompt."""
    n = len(tr.token_ids)
    assert len(tr.loss_mask) == len(tr.turn_ids) == len(tr.pos_in_turn) == len(tr.logprobs) == n
    spans = action_spans(tr)
    assert len(spans) == tr.num_turns
    assert spans[0][0] == tr.prompt_length if spans else True
    for k, (start, end) in enumerate(spans):
        prompt = tr.token_ids[:start]
        answers = [(r.token_ids, r.logprobs) for p, r in zip(calls[k]["prompts"], calls[k]["results"]) if p == prompt]
        assert answers, f"turn {k}: the sequence before the action was never a prompt"
        assert (tr.token_ids[start:end], tr.logprobs[start:end]) in answers


_CHATML = (
    "{%- set last = namespace(i=-1) -%}"
    "{%- for m in messages %}{% if m.role == 'user' %}{% set last.i = loop.index0 %}{% endif %}{% endfor -%}"
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m.role + '\\n' }}"
    # like Qwen3: assistant turns before the last user message lose their reasoning
    "{%- if m.role == 'assistant' and loop.index0 < last.i and '</think>' in m.content -%}"
    "{{ m.content.split('</think>')[-1].lstrip() }}"
    "{%- else -%}{{ m.content }}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def chatml_tokenizer(directory: str):
    """A character-level Hugging Face tokenizer with a ChatML template (Qwen-like: <|im_end|>
    ends a turn, <|endoftext|> is EOS), saved to ``directory`` and loaded with HFTokenizer."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    from nemo_craft.models.tokenizer import HFTokenizer

    chars = "\t\n" + "".join(chr(c) for c in range(32, 127))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(chars))}
    core = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None))
    core.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    hf.chat_template = _CHATML
    hf.save_pretrained(directory)
    return HFTokenizer(directory)
