"""A character tokenizer for the random `tiny` model: the CLI's fallback when the embedded default
model's files are missing from an installation.

Printable ASCII (32..126) maps to ids 0..94; `eos_token_id` 125 and `mask_token_id` 126 match the
`tiny` preset. A prompt holding any other character is refused.
"""

from __future__ import annotations

import torch

from .tokenizer import token_id_list

FIRST, LAST = 32, 126


class AsciiTokenizer:
    eos_token_id = 125
    mask_token_id = 126

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if not FIRST <= ord(c) <= LAST})
        if unknown:
            raise ValueError(
                f"the prompt {text!r} holds characters this tokenizer does not know: "
                f"{''.join(unknown)!r}; it knows printable ASCII, ' ' to '~'")
        return [ord(c) - FIRST for c in text]

    def __call__(self, texts: list[str], return_tensors: str = "pt", padding: bool = True) -> dict:
        """Left-padded batch (pad = eos), as LLaDA pads; one string is a batch of one. `padding`
        is accepted as Hugging Face tokenizers take it; batches are always padded."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("no prompts: give at least one string")
        rows = [self.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.eos_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = []
        for i in token_id_list(ids):
            if 0 <= i <= LAST - FIRST:
                out.append(chr(i + FIRST))
            elif not skip_special_tokens:
                special = {self.mask_token_id: "<mask>", self.eos_token_id: "<eos>"}  # eos wins a tie
                out.append(special.get(i, f"<{i}>"))
        return "".join(out)
