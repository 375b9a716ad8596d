"""modeling.set_threads: a stage's thread count, and torch's own default back on None."""

from __future__ import annotations


def test_set_threads_none_restores_torchs_default_after_a_lower_count():
    import torch

    from mortgagellm.modeling import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(None)
        default = torch.get_num_threads()
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)  # evaluate's scoring after its one-thread generation
        assert torch.get_num_threads() == default
    finally:
        torch.set_num_threads(before)
