"""ascii_tokenizer.py: the `tiny` fallback's tokenizer: printable ASCII, left padding, edges."""

from __future__ import annotations

import pytest
import torch

from credit_compile.ascii_tokenizer import AsciiTokenizer
from credit_compile.assets import has_default_model
from credit_compile.tokenizer import CharTokenizer


@pytest.mark.skipif(not has_default_model(), reason="default model files missing")
def test_ascii_tokenizer_edges():
    from credit_compile.ascii_tokenizer import AsciiTokenizer

    tok = AsciiTokenizer()
    assert tok("hello")["input_ids"].shape == (1, 5)  # one string is one prompt, not five
    with pytest.raises(ValueError, match="no prompts"):
        tok([])
    assert tok.decode([-1, 33]) == "A" and tok.decode(33) == "A"


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
