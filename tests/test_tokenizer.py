"""tokenizer.py: the default model's character tokenizer: special and spare ids, answers, files,
round trips."""

from __future__ import annotations

import json

import pytest
import torch

from credit_compile.assets import has_default_model
from credit_compile.tokenizer import CharTokenizer


@pytest.mark.skipif(not has_default_model(), reason="default model files missing")
def test_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer()
    for text in ["0123+0989=", "R4021=", "S9981=", "P4021=", "0"]:
        assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="'ehlo'"):  # refused, not read as '?'
        tok.encode("hello")
    batch = tok(["12+3=", "R1="])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 5)
    assert batch["input_ids"][1, :2].tolist() == [tok.eos_token_id] * 2  # left padded with EOS
    assert batch["attention_mask"][1].tolist() == [0, 0, 1, 1, 1]
    tok.save_pretrained(tmp_path)
    again = CharTokenizer.from_pretrained(tmp_path)
    assert again.to_dict() == tok.to_dict()
    ids = torch.tensor([1, 1, 1, 2, tok.eos_token_id, tok.eos_token_id])
    assert tok.answer(ids) == "1112" and tok.decode(ids) == "1112"
    assert tok.decode(1) == tok.decode(torch.tensor(1)) == tok.decode([1]) == "1"  # a lone id


@pytest.mark.parametrize("kwargs", [
    dict(eos_token_id=5),                      # an EOS that is also a character
    dict(mask_token_id=16),                    # 'P' is id 16
    dict(eos_token_id=31, mask_token_id=31),   # not distinct
    dict(mask_token_id=32),                    # outside the vocabulary
    dict(unknown="!"),                         # unknown character outside the vocabulary
    dict(chars="0123456789+=RS ??"),           # duplicate characters
])
def test_char_tokenizer_refuses_inconsistent_vocabularies(kwargs):
    with pytest.raises(ValueError):
        CharTokenizer(**kwargs)


def test_answer_stops_at_the_first_eos_or_mask():
    tok = CharTokenizer()
    eos, mask = tok.eos_token_id, tok.mask_token_id
    assert tok.answer([1, 2, eos, 3, 4]) == "12"
    assert tok.answer([1, mask, 3]) == "1"
    assert tok.answer([eos, 1, 2]) == ""
    assert tok.answer([1, 20, 2]) == "1?2"  # a spare id reads as '?'


def test_decode_names_special_and_spare_ids_when_asked():
    tok = CharTokenizer()
    ids = [1, tok.eos_token_id, tok.mask_token_id, 20]
    assert tok.decode(ids, skip_special_tokens=False) == "1<eos><mask><20>"
    assert tok.decode(ids) == "1"
    assert tok.batch_decode([[1, 2], [3]]) == ["12", "3"]


def test_from_pretrained_refuses_another_file(tmp_path):
    (tmp_path / "char_tokenizer.json").write_text(json.dumps({"type": "Other", "chars": "01",
                                                              "eos_token_id": 2,
                                                              "mask_token_id": 3,
                                                              "vocab_size": 4}))
    with pytest.raises(ValueError, match="not a CharTokenizer"):
        CharTokenizer.from_pretrained(tmp_path)


def test_char_tokenizer_lists_and_return_tensors():
    tok = CharTokenizer()
    batch = tok(["1", "12"], return_tensors=None)
    assert batch == {"input_ids": [[tok.eos_token_id, 1], [1, 2]], "attention_mask": [[0, 1], [1, 1]]}
    with pytest.raises(ValueError, match="return_tensors"):
        tok(["1"], return_tensors="np")
