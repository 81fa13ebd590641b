"""TextStream: the text each streamed block adds, per prompt, equal in sum to the whole answer."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from toy_models import layered_model, token_prompts

import credit_compile as cc


class ByteTokenizer:
    """Byte-level, as GPT-2-style tokenizers are at heart: a cut character decodes to U+FFFD."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


class DigitTokenizer:
    """Ids as digits, 9 as an end-of-text token that skip_special_tokens drops."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(str(i % 10) for i in ids if not (skip_special_tokens and i % 10 == 9))


def blocks_of(rows: list[list[int]], block_length: int):
    data = torch.tensor(rows)
    return [cc.FinishedBlock(index, index * block_length,
                             data[:, index * block_length:(index + 1) * block_length])
            for index in range(data.shape[1] // block_length)]


def test_a_character_cut_across_blocks_is_returned_whole():
    # "café ok" is 8 bytes: blocks of 4 cut the two bytes of "é".
    stream = cc.TextStream(ByteTokenizer(), num_blocks=2)
    blocks = blocks_of([list("café ok".encode())], 4)
    assert stream.add(blocks[0]) == ["caf"]
    assert stream.add(blocks[1]) == ["é ok"]
    assert stream.finish() == [""] and stream.text == ["café ok"]


def test_without_num_blocks_finish_returns_what_was_held_back():
    stream = cc.TextStream(ByteTokenizer())
    data = list("ok é".encode())  # 5 bytes: the last block ends inside "é"
    assert [stream.add(b) for b in blocks_of([data[:4]], 2)] == [["ok"], [" "]]
    assert stream.finish() == ["\ufffd"]  # what the tokenizer makes of it, as it is
    known = cc.TextStream(ByteTokenizer(), num_blocks=2)
    assert [known.add(b) for b in blocks_of([data[:4]], 2)] == [["ok"], [" \ufffd"]]


def test_the_block_that_says_it_is_the_last_returns_what_was_held_back():
    stream = cc.TextStream(ByteTokenizer())
    first, last = blocks_of([list("ok é".encode())[:4]], 2)
    last.last = True
    assert [stream.add(first), stream.add(last)] == [["ok"], [" \ufffd"]]


@given(rows=st.lists(st.binary(min_size=12, max_size=12), min_size=1, max_size=3),
       block_length=st.sampled_from([1, 2, 3, 4, 6, 12]), known_blocks=st.booleans())
def test_the_pieces_add_up_to_the_whole_text(rows, block_length, known_blocks):
    # Any bytes, invalid UTF-8 included: what is returned is never taken back, and the pieces
    # of a row join to its whole decoded text.
    num_blocks = 12 // block_length
    stream = cc.TextStream(ByteTokenizer(), num_blocks=num_blocks if known_blocks else None)
    pieces = [stream.add(block) for block in blocks_of([list(r) for r in rows], block_length)]
    pieces.append(stream.finish())
    if known_blocks:  # the last block returned all there was
        assert pieces[-1] == [""] * len(rows)
    for row, data in enumerate(rows):
        assert "".join(p[row] for p in pieces) == data.decode("utf-8", errors="replace")


class CleanUpTokenizer:
    """a, space, comma, b by id (0 decodes to nothing), with a clean-up rule that looks back
    ("a ," decodes as ","), as transformers' clean-up rules can: the text of more tokens can be
    shorter than the text already returned."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join({0: "", 1: "a", 2: " ", 3: ",", 4: "b"}[i] for i in ids).replace(
            "a ,", ",")


def test_text_already_returned_is_never_returned_again():
    # "a " is returned; "a ," decodes as ",", shorter than that; "a ,bb" as ",bb": only the
    # part beyond the length returned comes out, never "a " again, never "bb" for one "b".
    stream = cc.TextStream(CleanUpTokenizer(), num_blocks=3)
    pieces = [stream.add(block)[0] for block in blocks_of([[1, 2, 3, 0, 4, 4]], 2)]
    assert pieces == ["a ", "", "b"]


class HubStyleDigitTokenizer(DigitTokenizer):
    """DigitTokenizer with transformers' default: special tokens kept unless asked."""

    def decode(self, ids, skip_special_tokens=False):
        return super().decode(ids, skip_special_tokens)


def test_special_tokens_are_skipped_by_default_even_where_the_tokenizer_keeps_them():
    # transformers' decode keeps special tokens by default; TextStream's own default drops the
    # end-of-text tokens early_stop fills a row with, in add() and in `text` alike.
    block = blocks_of([[1, 9, 2]], 3)[0]
    stream = cc.TextStream(HubStyleDigitTokenizer())
    assert stream.add(block) == ["12"] and stream.text == ["12"]
    kept = cc.TextStream(DigitTokenizer(), skip_special_tokens=False)
    assert kept.add(block) == ["192"] and kept.text == ["192"]


class ByteFallbackTokenizer:
    """Byte tokens decoded as a byte-fallback decoder does (sentencepiece-style vocabularies in
    transformers): each byte of an incomplete character becomes its own U+FFFD."""

    def decode(self, ids, skip_special_tokens=True):
        text = bytes(ids).decode("utf-8", errors="surrogateescape")
        return re.sub("[\udc80-\udcff]", "\ufffd", text)


def test_a_character_cut_into_several_replacement_characters_is_held_back_whole():
    # "€" is 3 bytes: after the first block of 2, its cut bytes decode to two U+FFFD, all held
    # back (returning one would leave a stray U+FFFD in the streamed text).
    stream = cc.TextStream(ByteFallbackTokenizer(), num_blocks=3)
    pieces = [stream.add(block)[0] for block in blocks_of([list("€ ok".encode())], 2)]
    assert pieces == ["", "€ ", "ok"]


def test_decode_kwargs_reach_the_tokenizer():
    block = blocks_of([[1, 9, 2]], 3)[0]
    assert cc.TextStream(DigitTokenizer()).add(block) == ["12"]
    assert cc.TextStream(DigitTokenizer(), skip_special_tokens=False).add(block) == ["192"]


def test_the_streamed_text_of_an_early_stopped_generation_is_its_answer():
    # The model's blocks through TextStream, rows of different prompt lengths, the rows filled
    # with the end-of-text token once settled: the pieces join to each row's decoded answer.
    model = layered_model(1, seed=2)
    ids, mask = token_prompts(3, 6, seed=1)
    mask[1, :2] = 0  # left padding
    plain = cc.generate_reference(model, ids, mask, gen_length=16, block_length=4)
    eos = int(plain.generated[0, 1])
    stream, pieces = cc.TextStream(DigitTokenizer(), num_blocks=4), []
    out = cc.generate_reference(model, ids, mask, gen_length=16, block_length=4,
                                early_stop=True, eos_token_id=eos,
                                on_block=lambda block: pieces.append(stream.add(block)))
    assert len(pieces) == 4
    for row in range(3):
        answer = DigitTokenizer().decode(out.generated[row].tolist())
        assert "".join(p[row] for p in pieces) == answer == stream.text[row]


def test_a_block_beyond_num_blocks_is_refused():
    # A num_blocks too small would have flushed a cut character mid-answer, for good.
    stream = cc.TextStream(ByteTokenizer(), num_blocks=2)
    blocks = blocks_of([list("café ok".encode())], 2)
    stream.add(blocks[0]), stream.add(blocks[1])
    with pytest.raises(ValueError, match=r"block 2 of a generation of 2 blocks \(num_blocks\): "
                                         r"give the num_blocks of the call's own config"):
        stream.add(blocks[2])


@pytest.mark.parametrize("misuse, says", [
    (lambda s, b: (s.add(b[1]),), "block 1 given where block 0 was expected"),
    (lambda s, b: (s.add(b[0]), s.add(b[0])), "block 0 given where block 1"),
    (lambda s, b: (s.add(b[0]), s.add(cc.FinishedBlock(1, 2, torch.zeros(2, 2, dtype=torch.long)))),
     "has 2 rows, earlier blocks 1"),
])
def test_misuse_is_a_clear_error(misuse, says):
    blocks = blocks_of([[1, 2, 3, 4]], 2)
    with pytest.raises(ValueError, match=says):
        misuse(cc.TextStream(DigitTokenizer()), blocks)


@pytest.mark.parametrize("args, error, says", [
    ((object(),), TypeError, "needs a tokenizer with a decode"),
    ((DigitTokenizer(), 0), ValueError, "num_blocks=0: use a positive integer"),
])
def test_bad_arguments_are_refused(args, error, says):
    with pytest.raises(error, match=says):
        cc.TextStream(*args)


def test_the_optimized_model_streams_the_same_text():
    model = layered_model(1, seed=4)
    ids, mask = token_prompts(2, 5, seed=3)
    decode = dict(gen_length=8, block_length=4)
    fast = cc.optimize(model, compile=False, **decode)
    streams = [cc.TextStream(DigitTokenizer(), num_blocks=2) for _ in range(2)]
    pieces: list[list[list[str]]] = [[], []]
    fast.generate(ids, mask, on_block=lambda b: pieces[0].append(streams[0].add(b)))
    cc.generate_reference(model, ids, mask, on_block=lambda b: pieces[1].append(streams[1].add(b)),
                          **decode)
    assert pieces[0] == pieces[1] and len(pieces[0]) == 2
