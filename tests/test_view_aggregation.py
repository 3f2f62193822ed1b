"""benchmarks/view_aggregation.py: a merged-label view's probabilities split back to left/right."""

from __future__ import annotations

import pytest
import torch

from benchmarks.view_aggregation import combine
from synthseg_lite.labels.presets import TARGET_PRESETS, hemispheres_merged


def _probs(k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(k, 5, 4, 3, generator=g) * 3, 0)


def test_the_combination_is_a_probability_and_zero_weight_is_the_structure_model():
    full = TARGET_PRESETS["synthseg"]
    merged, index = hemispheres_merged(full)
    idx = torch.as_tensor(index)
    p, q = _probs(full.n_classes, 0), _probs(merged.n_classes, 1)
    torch.testing.assert_close(combine(p.clone(), q, idx, 0.0), p)
    out = combine(p.clone(), q, idx, 0.3, chunk=2)
    torch.testing.assert_close(out.sum(0), torch.ones(5, 4, 3))
    # the merged view decides how much of a pair there is; the structure model, which side
    alone = combine(p.clone(), q, idx, 1.0)
    merged_back = torch.zeros_like(q).index_add_(0, idx, alone)
    torch.testing.assert_close(merged_back, q)
    for left, right in full.lr_pairs[:3]:
        seen = p[left] + p[right] > 1e-6  # elsewhere the pair is shared equally (next test)
        ratio = p[left] / (p[left] + p[right])
        torch.testing.assert_close((alone[left] / (alone[left] + alone[right]))[seen], ratio[seen])


def test_left_stays_left_and_a_pair_the_model_gives_nothing_is_shared_equally():
    full = TARGET_PRESETS["synthseg"]
    merged, index = hemispheres_merged(full)
    idx = torch.as_tensor(index)
    left, right = full.lr_pairs[0]
    p = torch.zeros(full.n_classes, 2, 1, 1)
    p[left, 0], p[0, 1] = 1, 1  # voxel 0: certainly the left structure; voxel 1: background
    q = torch.zeros(merged.n_classes, 2, 1, 1)
    q[index[left]] = 1  # the sagittal view: that structure (either side) in both voxels
    out = combine(p.clone(), q, idx, 0.5)
    assert out[left, 0].item() == pytest.approx(1) and out[right, 0].item() == 0
    assert out[left, 1].item() == pytest.approx(0.25) == out[right, 1].item()
    assert out[0, 1].item() == pytest.approx(0.5)


def test_a_weight_outside_0_1_is_refused():
    full = TARGET_PRESETS["synthseg"]
    merged, index = hemispheres_merged(full)
    with pytest.raises(ValueError, match="weight"):
        combine(_probs(full.n_classes, 0), _probs(merged.n_classes, 1), torch.as_tensor(index), 1.5)


def test_the_aggregate_stands_in_for_a_predictor_in_segment_scans() -> None:
    """Everything the pipeline reads from a Predictor, the stand-in gives as its main model's."""
    from benchmarks.view_aggregation import ViewAggregate
    from synthseg_lite.inference.predictor import Predictor, load_ensemble, resolve_model

    nets, meta = load_ensemble(resolve_model("structures"), torch.device("cpu"))
    main = Predictor(nets, meta)
    _, index = hemispheres_merged(meta.label_table.target)
    agg = ViewAggregate(main, main, torch.as_tensor(index), 0.2)
    for name in ("target", "tissue_group", "meta", "slices", "batch_size"):
        assert getattr(agg, name) == getattr(main, name), name
    assert agg.passes_text.startswith(main.passes_text) and "w=0.2" in agg.passes_text
