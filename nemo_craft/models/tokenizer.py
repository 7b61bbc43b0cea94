"""Tokenizers behind one small interface: a Hugging Face tokenizer (real models, local path) or a
built-in character tokenizer (the CPU default model).

    tok = load_tokenizer("char")                  # or a local Hugging Face tokenizer directory
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}]))
    text = tok.decode(ids)

Interface (:class:`Tokenizer`): ``encode``, ``decode``, ``apply_chat_template``, ``vocab_size``,
``eos_id``, ``pad_id``, ``bos_id``, ``stop_ids``.

The character tokenizer's vocabulary is fixed and ordered (so ids never change between runs):
``<pad> <bos> <eos> <unk> <|system|> <|user|> <|assistant|>``, then tab, newline and printable
ASCII (space .. ``~``): 104 ids. Its chat template is
``<|system|>...<eos><|user|>...<eos><|assistant|>``: a turn ends with ``<eos>``, so generation
stops at the end of the assistant's turn, like ``<|im_end|>`` in Qwen's template.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Optional, Protocol, Union

__all__ = ["Tokenizer", "CharTokenizer", "HFTokenizer", "load_tokenizer", "simple_chat_template"]

Messages = Sequence[dict]
_ROLES = ("system", "user", "assistant")


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: Optional[int]

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...

    def apply_chat_template(
        self, messages: Messages, *, add_generation_prompt: bool = True, tokenize: bool = False
    ) -> Union[str, list[int]]: ...

    @property
    def stop_ids(self) -> list[int]: ...


def simple_chat_template(
    messages: Messages, *, role_tokens: dict[str, str], end_token: str, add_generation_prompt: bool = True
) -> str:
    """``<role>content<end>`` per message, then ``<assistant role>`` when a reply is wanted."""
    parts = []
    for m in messages:
        role = m["role"]
        if role not in role_tokens:
            raise ValueError(f"message role {role!r}: allowed roles are {tuple(role_tokens)}")
        parts.append(f"{role_tokens[role]}{m['content']}{end_token}")
    if add_generation_prompt:
        parts.append(role_tokens["assistant"])
    return "".join(parts)


class CharTokenizer:
    """Deterministic character-level tokenizer: one id per printable ASCII character, plus
    special tokens. Characters outside its alphabet encode to ``<unk>``."""

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
    CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))

    def __init__(self) -> None:
        self.tokens: list[str] = list(self.SPECIALS) + list(self.CHARS)
        self._ids = {tok: i for i, tok in enumerate(self.tokens)}
        self.vocab_size = len(self.tokens)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            self._ids[t] for t in ("<pad>", "<bos>", "<eos>", "<unk>")
        )
        # Longest first, so "<|user|>" is never read as "<" "|" ...
        self._special_re = re.compile("|".join(re.escape(s) for s in sorted(self.SPECIALS, key=len, reverse=True)))
        self._role_tokens = {r: f"<|{r}|>" for r in _ROLES}

    @property
    def stop_ids(self) -> list[int]:
        return [self.eos_id]

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Ids of ``text``; special-token strings in it (``<eos>``, ``<|user|>``...) become their ids."""
        ids = [self.bos_id] if add_bos else []
        pos = 0
        for m in self._special_re.finditer(text):
            ids.extend(self._ids.get(c, self.unk_id) for c in text[pos : m.start()])
            ids.append(self._ids[m.group(0)])
            pos = m.end()
        ids.extend(self._ids.get(c, self.unk_id) for c in text[pos:])
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; ids beyond the vocabulary (a model's padded vocabulary) decode to ""."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                continue
            if skip_special_tokens and i < len(self.SPECIALS):
                continue
            out.append(self.tokens[i])
        return "".join(out)

    def apply_chat_template(
        self, messages: Messages, *, add_generation_prompt: bool = True, tokenize: bool = False
    ) -> Union[str, list[int]]:
        text = simple_chat_template(
            messages, role_tokens=self._role_tokens, end_token="<eos>", add_generation_prompt=add_generation_prompt
        )
        return self.encode(text) if tokenize else text


class HFTokenizer:
    """A Hugging Face tokenizer from a local directory (``AutoTokenizer``; nothing downloaded)."""

    # End-of-turn tokens of the supported chat models; generation stops at whichever exist.
    _END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>")

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer path {path!r} is not a local directory (nothing is downloaded)")
        self.hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.vocab_size = len(self.hf)
        if self.hf.eos_token_id is None:
            raise ValueError(f"tokenizer {path!r} defines no eos token")
        self.eos_id = int(self.hf.eos_token_id)
        self.pad_id = int(self.hf.pad_token_id) if self.hf.pad_token_id is not None else self.eos_id
        self.bos_id = int(self.hf.bos_token_id) if self.hf.bos_token_id is not None else None

    @property
    def stop_ids(self) -> list[int]:
        ids = [self.eos_id]
        vocab = self.hf.get_vocab()
        ids += [vocab[t] for t in self._END_OF_TURN if t in vocab and vocab[t] not in ids]
        return ids

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False)
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + list(ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Messages, *, add_generation_prompt: bool = True, tokenize: bool = False
    ) -> Union[str, list[int]]:
        """The tokenizer's own chat template when it has one, else the simple template with
        ``<|role|>`` markers and the eos token as end of turn."""
        if getattr(self.hf, "chat_template", None):
            text = self.hf.apply_chat_template(
                list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
            )
        else:
            text = simple_chat_template(
                messages,
                role_tokens={r: f"<|{r}|>" for r in _ROLES},
                end_token=self.hf.eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        return self.encode(text) if tokenize else text


def load_tokenizer(spec: Optional[str], *, hf_path: Optional[str] = None) -> Union[CharTokenizer, HFTokenizer]:
    """``"char"`` -> :class:`CharTokenizer`; a directory -> :class:`HFTokenizer`; None -> the
    tokenizer of ``hf_path`` when given, else ``"char"`` (the ``ModelConfig.tokenizer`` rule)."""
    if spec is None:
        spec = hf_path if hf_path is not None else "char"
    if spec == "char":
        return CharTokenizer()
    return HFTokenizer(spec)
