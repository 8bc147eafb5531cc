"""Pipeline helpers that need no training."""
import torch
from hypothesis import given
from hypothesis import strategies as st

from bench.pipeline import sample_indices


@given(st.lists(st.integers(0, 5), min_size=0, max_size=40), st.integers(1, 12))
def test_figure_samples_cover_as_many_identities_as_possible(labels, k):
    idx = sample_indices(torch.tensor(labels, dtype=torch.long), len(labels), k).tolist()
    assert len(idx) == min(k, len(labels)) and len(set(idx)) == len(idx)
    assert all(0 <= i < len(labels) for i in idx)
    shown = {labels[i] for i in idx}
    assert len(shown) == min(k, len(set(labels)))


def test_figure_samples_without_labels_are_the_first_faces():
    assert sample_indices(None, 20, 8).tolist() == list(range(8))
    assert sample_indices(None, 3, 8).tolist() == [0, 1, 2]
