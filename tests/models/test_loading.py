"""models/loading.py: a checkpoint directory or the embedded default model, and its refusals."""

from __future__ import annotations

import pytest
import torch

from credit_compile.models.loading import RANDOM_MODEL_NOTE, load_model_and_tokenizer, resolve_device


def test_without_a_directory_the_embedded_model_loads():
    notes = []
    model, tokenizer, device = load_model_and_tokenizer(device="cpu", on_note=notes.append)
    assert device == "cpu" and notes == []  # the shipped model, not a random stand-in
    assert tokenizer.decode(tokenizer("0012+0034=")["input_ids"][0]) == "0012+0034="
    assert next(model.parameters()).dtype == torch.float32


def test_a_missing_default_model_is_a_random_one_with_a_note(monkeypatch):
    import credit_compile.assets as assets

    monkeypatch.setattr(assets, "has_default_model", lambda: False)
    notes = []
    model, tokenizer, _ = load_model_and_tokenizer(device="cpu", on_note=notes.append)
    assert notes == [RANDOM_MODEL_NOTE]
    assert model.config.n_layers >= 1 and tokenizer.decode(tokenizer("R12=")["input_ids"][0]) == "R12="


def test_dtype_casts_the_model():
    model, _, _ = load_model_and_tokenizer(device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["float8", "Tensor"])
def test_a_dtype_that_is_none_is_refused(dtype):
    with pytest.raises(ValueError, match=f"dtype {dtype!r} is not a torch dtype"):
        load_model_and_tokenizer(device="cpu", dtype=dtype)


def test_refusals_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint at .*config.json"):
        load_model_and_tokenizer(str(tmp_path / "nope"), "cpu")
    from credit_compile.models import build_model

    build_model("tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="(?s)no tokenizer in .*tokenizer.save_pretrained"):
        load_model_and_tokenizer(str(tmp_path), "cpu")


def test_devices():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'meta': credit_compile runs on cpu or cuda"):
        resolve_device("meta")


@pytest.mark.parametrize("model_type", ["lladamoe", "llada"])  # the release's config says "llada"
def test_a_lladamoe_checkpoint_loads_as_lladamoe(tmp_path, model_type):
    import json

    from credit_compile.models import LLaDAMoEModelLM, build_model

    build_model("tiny-lladamoe").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    load_model_and_tokenizer(device="cpu")[1].save_pretrained(tmp_path)  # the shipped tokenizer
    model, _, _ = load_model_and_tokenizer(str(tmp_path), "cpu")
    assert type(model) is LLaDAMoEModelLM


def test_a_dream_checkpoint_loads_into_dream(tmp_path):
    from credit_compile.models import DreamModel, build_model
    from credit_compile.tokenizer import CharTokenizer

    build_model("tiny-dream").save_pretrained(tmp_path)
    CharTokenizer(eos_token_id=125, mask_token_id=126, vocab_size=128).save_pretrained(tmp_path)
    model, tokenizer, _ = load_model_and_tokenizer(str(tmp_path), "cpu")
    assert type(model) is DreamModel and not model.training
    assert tokenizer.decode(tokenizer("R12=")["input_ids"][0]) == "R12="


def test_a_llada2_checkpoint_loads_into_llada2(tmp_path):
    from credit_compile.models import LLaDA2ModelLM, build_model

    build_model("tiny-llada2").save_pretrained(tmp_path)
    load_model_and_tokenizer(device="cpu")[1].save_pretrained(tmp_path)  # the shipped tokenizer
    model, _, _ = load_model_and_tokenizer(str(tmp_path), "cpu")
    assert type(model) is LLaDA2ModelLM and not model.training
