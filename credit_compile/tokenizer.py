"""A character tokenizer for the shipped default model (synthetic arithmetic/string tasks).

Vocabulary (32 ids, the model's ``embedding_size``): ``0``..``9`` are the digits, then the task
symbols ``+``, ``=``, ``R`` (reverse), ``S`` (sort), space, ``?`` and, appended later so the
first ids kept their meaning, ``P`` (permute) at 16; ids 17..29 are unused spare rows, 30 is EOS
(also padding, as LLaDA pads with EOS) and 31 is ``[MASK]`` (the model config's
``mask_token_id``). A prompt holding any other character is refused.

    tok = CharTokenizer()
    batch = tok(["123+989=", "R4321="], return_tensors="pt")   # left padded
    tok.decode([1, 1, 1, 2, 30, 30], skip_special_tokens=True)  # '1112'
    tok(["hello"])  # ValueError: characters outside the vocabulary, listing the ones it knows

`save_pretrained(dir)` / `from_pretrained(dir)` write and read one small JSON file
(``char_tokenizer.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOKENIZER_FILE = "char_tokenizer.json"
DEFAULT_CHARS = "0123456789+=RS ?P"
DEFAULT_VOCAB_SIZE = 32
DEFAULT_EOS_ID = 30
DEFAULT_MASK_ID = 31


class CharTokenizer:
    """Character-level tokenizer with left padding (pad = EOS)."""

    padding_side = "left"

    def __init__(self, chars: str = DEFAULT_CHARS, eos_token_id: int = DEFAULT_EOS_ID,
                 mask_token_id: int = DEFAULT_MASK_ID, vocab_size: int = DEFAULT_VOCAB_SIZE,
                 unknown: str = "?"):
        if len(set(chars)) != len(chars):
            raise ValueError("duplicate characters in the vocabulary")
        if unknown not in chars:
            raise ValueError(f"the unknown character {unknown!r} must be in the vocabulary")
        special = {eos_token_id, mask_token_id}
        if len(special) != 2 or any(i < len(chars) or i >= vocab_size for i in special):
            raise ValueError("eos/mask ids must be distinct, after the characters and < vocab_size")
        self.chars = chars
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(eos_token_id)
        self.mask_token_id = int(mask_token_id)
        self.vocab_size = int(vocab_size)
        self.unknown = unknown
        self._ids = {c: i for i, c in enumerate(chars)}

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """The ids of `text`'s characters; a character outside the vocabulary is refused (read as
        the unknown character, it would make the model answer another prompt)."""
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            tasks = (" (the default model's tasks: addition '0012+0034=', reversal 'R1234=', "
                     "sorting 'S4213=', permutation 'P4213=')" if self.chars == DEFAULT_CHARS
                     else "")
            raise ValueError(
                f"the prompt {text!r} holds characters this tokenizer does not know: "
                f"{''.join(unknown)!r}; write it with the characters it knows, "
                f"{self.chars!r}{tasks}")
        return [self._ids[c] for c in text]

    def __call__(self, texts, return_tensors: str | None = "pt", padding: bool = True) -> dict:
        """Left-padded batch: ``input_ids`` (pad = EOS) and ``attention_mask`` (1 on real tokens).
        `padding` is accepted as Hugging Face tokenizers take it; batches are always padded."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode(t) for t in texts]
        width = max([len(r) for r in rows] + [1])
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row):] = 1
        if return_tensors is None:
            return {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
        if return_tensors != "pt":
            raise ValueError("return_tensors must be 'pt' or None")
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = []
        for i in token_id_list(ids):
            i = int(i)
            if 0 <= i < len(self.chars):
                out.append(self.chars[i])
            elif not skip_special_tokens:
                out.append("<eos>" if i == self.eos_token_id
                           else "<mask>" if i == self.mask_token_id else f"<{i}>")
        return "".join(out)

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    def answer(self, ids) -> str:
        """The text before the first EOS (or MASK): how the tasks' answers are read."""
        out = []
        for i in token_id_list(ids):
            i = int(i)
            if i in (self.eos_token_id, self.mask_token_id):
                break
            out.append(self.chars[i] if 0 <= i < len(self.chars) else "?")
        return "".join(out)

    def to_dict(self) -> dict:
        return {"type": "CharTokenizer", "chars": self.chars, "eos_token_id": self.eos_token_id,
                "mask_token_id": self.mask_token_id, "vocab_size": self.vocab_size,
                "unknown": self.unknown, "padding_side": "left"}

    def save_pretrained(self, directory) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        file = path / TOKENIZER_FILE
        file.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return file

    @classmethod
    def from_pretrained(cls, directory) -> CharTokenizer:
        data = json.loads((Path(directory) / TOKENIZER_FILE).read_text())
        if data.get("type") != "CharTokenizer":
            raise ValueError(f"not a CharTokenizer file: {directory}")
        return cls(chars=data["chars"], eos_token_id=data["eos_token_id"],
                   mask_token_id=data["mask_token_id"], vocab_size=data["vocab_size"],
                   unknown=data.get("unknown", "?"))


def token_id_list(ids) -> list[int]:
    """Token ids as a list of ints: a tensor (0-dim included), a single int or a sequence."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return [ids] if isinstance(ids, int) else [int(i) for i in ids]
