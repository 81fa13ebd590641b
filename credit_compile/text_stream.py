"""Streamed blocks as text: what each finished block adds to each prompt's answer."""

from __future__ import annotations

from .decoding.loop import FinishedBlock

_INCOMPLETE = "\ufffd"  # what a byte-level tokenizer decodes a cut multi-byte character to


class TextStream:
    """Turns the `FinishedBlock`s of `generate(..., on_block=...)` into text, per prompt.

        stream = credit_compile.TextStream(tokenizer)
        out = model.generate(ids, mask, on_block=lambda block: send(stream.add(block)))

    `add(block)` returns, for each row, the text the block adds. Each row's tokens so far are
    decoded whole and the part not yet returned is returned: a token's text can depend on its
    neighbours (a byte-level tokenizer splits a character's bytes across tokens, and so across
    blocks), so decoding blocks one by one would garble it. A cut character decodes to U+FFFD;
    a trailing one is held back until the next block completes it; the generation's last block
    (`FinishedBlock.last`) returns it as it is. Blocks made by hand without `last` flush at
    `num_blocks`, or at `finish()`.

    Decoding the whole row per block costs O(tokens) per block, as transformers' TextStreamer.
    If the tokenizer's text for the tokens so far no longer starts with the text already
    returned (a clean-up rule that looks ahead), only what extends past the returned length is
    returned: returned text is never taken back.

    Args:
        tokenizer: anything with `decode(list[int], **decode_kwargs) -> str`.
        num_blocks: for blocks that do not say which is last: how many there are, to flush at
            the last (`generate()`'s blocks say it themselves).
        decode_kwargs: passed to `decode`; default `skip_special_tokens=True`, which drops the
            end-of-text tokens `early_stop` fills a row with.
    """

    def __init__(self, tokenizer, num_blocks: int | None = None, **decode_kwargs):
        if not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"TextStream needs a tokenizer with a decode() method, got "
                            f"{type(tokenizer).__name__}")
        if num_blocks is not None and not (isinstance(num_blocks, int) and num_blocks > 0):
            raise ValueError(f"num_blocks={num_blocks!r}: use a positive integer "
                             f"(DecodeConfig.num_blocks), or None and call finish()")
        self.tokenizer = tokenizer
        self.num_blocks = num_blocks
        self.decode_kwargs = decode_kwargs or {"skip_special_tokens": True}
        self._tokens: list[list[int]] = []
        self._returned: list[int] = []  # characters of each row's text returned so far
        self._next_index = 0

    def add(self, block: FinishedBlock) -> list[str]:
        """The text `block` adds to each row (held-back partial characters excepted)."""
        if block.index != self._next_index:
            raise ValueError(f"block {block.index} given where block {self._next_index} was "
                             f"expected: give add() every block of one generate() call, in "
                             f"order (a new call needs a new TextStream)")
        if self.num_blocks is not None and block.index >= self.num_blocks:
            raise ValueError(f"block {block.index} of a generation of {self.num_blocks} blocks "
                             f"(num_blocks): give the num_blocks of the call's own config "
                             f"(model.resolved_config(**overrides).num_blocks)")
        rows = block.tokens.tolist()
        if not self._tokens:
            self._tokens = [[] for _ in rows]
            self._returned = [0] * len(rows)
        elif len(rows) != len(self._tokens):
            raise ValueError(f"block {block.index} has {len(rows)} rows, earlier blocks "
                             f"{len(self._tokens)}: one TextStream per generate() call")
        self._next_index += 1
        last = block.last or (self.num_blocks is not None and self._next_index >= self.num_blocks)
        for tokens, new in zip(self._tokens, rows, strict=True):
            tokens.extend(new)
        return [self._new_text(row, hold_back=not last) for row in range(len(rows))]

    def finish(self) -> list[str]:
        """What each row's text still holds back (a trailing partial character), as it is."""
        return [self._new_text(row, hold_back=False) for row in range(len(self._tokens))]

    @property
    def text(self) -> list[str]:
        """Each row's text decoded from every token added so far."""
        return [self.tokenizer.decode(tokens, **self.decode_kwargs) for tokens in self._tokens]

    def _new_text(self, row: int, hold_back: bool) -> str:
        text = self.tokenizer.decode(self._tokens[row], **self.decode_kwargs)
        if hold_back:
            text = text.rstrip(_INCOMPLETE)
        new = text[self._returned[row]:]
        self._returned[row] = max(self._returned[row], len(text))
        return new
