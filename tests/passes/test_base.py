"""passes/base.py: each pass's uuid (its Inductor cache key) covers the code it matches with."""

from __future__ import annotations

import pytest

from credit_compile.passes import (
    BlockSlicedLMHead,
    GraphPass,
)


@pytest.mark.parametrize("module_name, old, new", [
    # The patterns live in module-level helpers of the pass's own module...
    ("block_sliced_lm_head", "_CASTS = (", '_CASTS = ("half",'),
    # ...and the guards every pass matches with (touched_between, storage_of) in base.py.
    ("base", 'or name == "setitem"', ""),
])
def test_a_pass_uuid_covers_the_code_it_matches_with(monkeypatch, module_name, old, new):
    # An edit there must change the pass's Inductor cache key too.
    import importlib
    import inspect

    module = importlib.import_module(f"credit_compile.passes.{module_name}")
    before = BlockSlicedLMHead().uuid()
    real = inspect.getsource

    def edited(obj):
        source = real(obj)
        if obj is module:
            assert old in source  # the edit must happen for the test to mean anything
            return source.replace(old, new)
        return source

    monkeypatch.setattr(inspect, "getsource", edited)
    assert BlockSlicedLMHead().uuid() != before


class FirstPassHere(GraphPass):
    name = "first_pass_here"

    def rewrite(self, graph_module):
        return 0


class SecondPassHere(FirstPassHere):
    name = "second_pass_here"


def test_two_passes_in_one_module_have_their_own_uuids():
    # Same module source, other class: the class name tells them apart in Inductor's cache.
    assert FirstPassHere().uuid() != SecondPassHere().uuid()
    assert FirstPassHere().uuid() == FirstPassHere().uuid()
