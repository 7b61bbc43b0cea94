"""When a generated action ends: an end-of-sequence token, a stop string, or the token budget.

Checked on the host after every sampled token, per row, from the row's own tokens only, so the
decision is the same on every rank that holds the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

__all__ = ["FINISH_REASONS", "StopCriteria"]

FINISH_REASONS = ("eos", "stop", "length")
"""``eos``: an end-of-sequence token was drawn (it is the last token of the result);
``stop``: the decoded text gained a stop string (the token that completed it is the last);
``length``: the row's token budget ran out."""


class StopCriteria:
    """The end conditions of one ``generate`` call.

    Args:
        eos_ids: token ids that end a row when drawn.
        stop_strings: strings that end a row as soon as its decoded text contains one.
        decode: token ids -> text (the tokenizer's decode); needed when there are stop strings.
    """

    def __init__(
        self,
        eos_ids: Iterable[int],
        stop_strings: Sequence[str] = (),
        decode: Callable[[Sequence[int]], str] | None = None,
    ):
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.stop_strings = tuple(s for s in stop_strings if s)
        if self.stop_strings and decode is None:
            raise ValueError("stop strings need a decode function (the tokenizer's decode)")
        self._decode = decode
        # A stop string of c characters lies within the last c tokens that completed it (every
        # token of it contributes at least one of its characters); +1 for merged whitespace.
        self._window = max((len(s) for s in self.stop_strings), default=0) + 1

    def check(self, tokens: Sequence[int], budget: int) -> str | None:
        """The finish reason of a row whose generated tokens so far are ``tokens`` (the newest
        last), or None while it goes on. Called once per new token, so only the newest token
        can have completed a stop string."""
        if tokens and tokens[-1] in self.eos_ids:
            return "eos"
        if self.stop_strings and tokens:
            tail = self._decode(list(tokens[-self._window :]))
            if any(s in tail for s in self.stop_strings):
                return "stop"
        if len(tokens) >= budget:
            return "length"
        return None

    def first_stop(self, tokens: Sequence[int], budget: int) -> tuple[int, str]:
        """``(n, reason)`` for tokens generated without these rules (an engine that only knows the
        stop ids): the row ends after its first ``n`` tokens, for ``reason``; ``(len(tokens),
        "length")`` when no rule ends it (the engine ran out of room first)."""
        for n in range(1, len(tokens) + 1):
            reason = self.check(tokens[:n], budget)
            if reason is not None:
                return n, reason
        return len(tokens), "length"
