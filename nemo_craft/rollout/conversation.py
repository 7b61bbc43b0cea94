"""A multi-turn chat as one token sequence that grows by appending, never by re-tokenising.

    system / user(task + first observation) / assistant(action 0) / user(observation 1) / ...

The sequence is built from pieces (the prompt, each sampled action as it is, each chat-template
continuation rendered on its own), so that the tokens the policy sampled are the tokens that are
trained and each action's context is exactly the prefix before it; the teacher's sequence differs
only in its prompt. The pieces and why: docs/rollout.md#episodes-and-conversations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Protocol, Union

__all__ = ["ChatTokenizer", "ChatFormat"]

_PLACEHOLDER_USER = "Q"
_PLACEHOLDER_REPLY = "nemo-craft-placeholder-reply"


class ChatTokenizer(Protocol):
    """What the chat format needs of a tokenizer (``nemo_craft.models.tokenizer.Tokenizer``)."""

    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = True, tokenize: bool = False
    ) -> Union[str, list[int]]: ...


class ChatFormat:
    """Renders the pieces of a conversation with the tokenizer's chat template.

    Args:
        tokenizer: encode/decode and the chat template.
        system_prompt: the student's system message (None: none).
        end_of_turn_ids: ids that end an assistant turn when sampled (EOS, ``<|im_end|>``...);
            such a final token is not repeated by the continuation after it.
    """

    def __init__(
        self, tokenizer: ChatTokenizer, *, system_prompt: Optional[str] = None, end_of_turn_ids: Sequence[int] = ()
    ):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.end_of_turn_ids = frozenset(int(i) for i in (*end_of_turn_ids, tokenizer.eos_id))

    def prompt_ids(self, first_user_message: str) -> list[int]:
        """The student prompt: [system], user(task + first observation), generation prompt."""
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return self._render(messages + [{"role": "user", "content": first_user_message}])

    def teacher_prompt_ids(self, first_user_message: str, privileged_message: str) -> list[int]:
        """The teacher prompt: the privileged context as the system message (before the student's
        own system prompt, if any), then the same user message."""
        system = (
            privileged_message
            if self.system_prompt is None
            else (f"{privileged_message.rstrip()}\n\n{self.system_prompt}")
        )
        return self._render([{"role": "system", "content": system}, {"role": "user", "content": first_user_message}])

    def action_text(self, action_ids: Sequence[int]) -> str:
        """The assistant message's content: the action decoded, without a final end-of-turn token."""
        if action_ids and int(action_ids[-1]) in self.end_of_turn_ids:
            action_ids = action_ids[:-1]
        return self.tokenizer.decode(list(action_ids))

    def continuation_ids(self, action_ids: Sequence[int], user_message: str) -> list[int]:
        """Tokens after an action: end of the assistant turn, the next user message and the
        generation prompt. When the action already ended with the template's end-of-turn token
        (the policy sampled it), that token is not repeated."""
        base = [{"role": "user", "content": _PLACEHOLDER_USER}]
        before = self._text(base, add_generation_prompt=True) + _PLACEHOLDER_REPLY
        full = self._text(
            base + [{"role": "assistant", "content": _PLACEHOLDER_REPLY}, {"role": "user", "content": user_message}],
            add_generation_prompt=True,
        )
        if not full.startswith(before):
            raise ValueError(
                "the chat template does not render an assistant reply verbatim after the generation "
                "prompt (it changes the content or the prompt); multi-turn rollouts need a template "
                f"where it does. Rendered: {full!r}"
            )
        ids = self.tokenizer.encode(full[len(before) :])
        if action_ids and int(action_ids[-1]) in self.end_of_turn_ids and ids and ids[0] == int(action_ids[-1]):
            ids = ids[1:]
        return ids

    def _render(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self._text(messages, add_generation_prompt=True))

    def _text(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
