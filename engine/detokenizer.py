"""Incremental detokenization for streaming.

Decoding token by token breaks multi-byte characters and the spacing rules of sentencepiece and
byte-level BPE. The usual remedy (as in vLLM and ``transformers``' TextStreamer): decode a short
window of recent tokens twice, with and without the newest ones, and emit only the difference,
holding text back while it ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IncrementalDetokenizer:
    tokenizer: object
    prompt_ids: list[int]
    skip_special_tokens: bool = True
    text: str = ""
    _ids: list[int] = field(default_factory=list)
    _prefix_offset: int = 0
    _read_offset: int = 0

    def __post_init__(self):
        # Start the window on the last few prompt tokens so the first output token gets its
        # leading space right.
        self._ids = list(self.prompt_ids[-6:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def add(self, token_id: int) -> str:
        """Append one token and return the newly completed text (may be empty)."""
        self._ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset:self._read_offset],
                        skip_special_tokens=self.skip_special_tokens)
        full = decode(self._ids[self._prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """At the end of generation: release text held back for an incomplete character."""
        decode = self.tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset:self._read_offset],
                        skip_special_tokens=self.skip_special_tokens)
        full = decode(self._ids[self._prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        delta = full[len(prefix):]
        self._prefix_offset = self._read_offset = len(self._ids)
        self.text += delta
        return delta
