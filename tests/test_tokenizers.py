"""The two character tokenizers: the default model's (`credit_compile.tokenizer`) and the `tiny`
fallback's (`credit_compile.ascii_tokenizer`): special ids, answers, padding side, edges."""

from __future__ import annotations

import json

import pytest
import torch

from credit_compile.ascii_tokenizer import AsciiTokenizer
from credit_compile.tokenizer import CharTokenizer


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


def test_ascii_tokenizer_covers_printable_ascii_and_pads_left():
    tok = AsciiTokenizer()
    printable = "".join(chr(c) for c in range(32, 127))
    assert tok.encode(" ~") == [0, 94]
    assert tok.decode(tok.encode(printable)) == printable
    batch = tok(["ab", "a"])
    assert batch["input_ids"][1].tolist() == [tok.eos_token_id, tok.encode("a")[0]]
    assert batch["attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert tok.decode([33, tok.eos_token_id, tok.mask_token_id, 110],
                      skip_special_tokens=False) == "A<eos><mask><110>"
    assert tok.decode(torch.tensor([33, tok.eos_token_id])) == "A"


def test_a_character_outside_the_vocabulary_is_refused_listing_those_it_knows():
    # Read as '?', "hello world" made the default model answer another prompt, without a word.
    with pytest.raises(ValueError, match=r"the prompt 'hello world' holds characters this "
                                         r"tokenizer does not know: 'dehlorw'; write it with the "
                                         r"characters it knows, '0123456789\+=RS \?P' \(the "
                                         r"default model's tasks: addition '0012\+0034='"):
        CharTokenizer()(["0012+0034=", "hello world"])
    assert CharTokenizer().encode("R1? 2") == [12, 1, 15, 14, 2]  # '?' and ' ' are characters
    with pytest.raises(ValueError, match=r"does not know: 'ab'; write it with the characters it "
                                         r"knows, '01\+='$"):
        CharTokenizer(chars="01+=", unknown="+", eos_token_id=4, mask_token_id=5,
                      vocab_size=6).encode("0a1b")
    with pytest.raises(ValueError, match=r"does not know: '\\né'; it knows printable ASCII"):
        AsciiTokenizer()(["ok", "é\n"])
