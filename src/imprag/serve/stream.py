"""Text deltas for streaming whose concatenation is exactly the finished `Generation.text`.

`Generation.text` is the decoded tokens with leading whitespace dropped, cut before the first stop string
and stripped. While a row is still generating, the end of its decoded text may yet turn out to be the start
of a stop string, trailing whitespace that the final strip removes, or the first bytes of a UTF-8 character
(decoded as U+FFFD until its last byte arrives); so a delta only ever extends what was sent up to the last
character that none of those can touch, and the rest goes out when the row ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


class IncrementalText:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.sent = ""

    def update(self, token_ids: Sequence[int]) -> str:
        """The new safe text after this many generated tokens ("" when there is none yet)."""
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=True).lstrip()
        if self.hold:
            text = text[: -self.hold]
        text = text.rstrip().rstrip("\ufffd").rstrip()  # a trailing U+FFFD may be a character's first bytes
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def finish(self, final: str) -> str:
        """What is left to send of the row's final text. Raises ValueError if what was sent is not a prefix
        of it (the tokenizer decoded a prefix of the tokens to other text than the whole)."""
        if not final.startswith(self.sent):
            raise ValueError(f"streamed {self.sent!r} is not a prefix of the final text {final!r}")
        delta, self.sent = final[len(self.sent) :], final
        return delta
