"""SynthSeg's topological clean-up (``keep_largest=topology``): each group of structures that is
one piece of tissue keeps the largest component of its voxels above probability 0.25."""

from __future__ import annotations

import torch

from synthseg_lite.inference import InferenceOptions
from synthseg_lite.inference.postprocess import keep_largest_component
from synthseg_lite.inference.segment import topology_groups
from synthseg_lite.labels import TOPOLOGY_GROUPS, target_preset


def _scene() -> torch.Tensor:
    """(4, 16, 16, 16) probabilities: background 0 outside a brain cube filled with class 3;
    class 1 (a "ventricle", 27 voxels) with a small class-2 piece (an "inferior horn", 9 voxels)
    touching it, and a larger class-2 island (27 voxels) away from both."""
    probs = torch.zeros(4, 16, 16, 16)
    probs[0] = 1
    probs[:, 1:15, 1:15, 1:15] = torch.tensor([0.05, 0.05, 0.1, 0.8]).view(4, 1, 1, 1)
    probs[:, 2:5, 2:5, 2:5] = torch.tensor([0.0, 0.7, 0.1, 0.2]).view(4, 1, 1, 1)
    probs[:, 5:6, 2:5, 2:5] = torch.tensor([0.0, 0.1, 0.6, 0.3]).view(4, 1, 1, 1)
    probs[:, 10:13, 10:13, 10:13] = torch.tensor([0.0, 0.05, 0.6, 0.35]).view(4, 1, 1, 1)
    return probs


def test_a_topological_class_keeps_its_largest_component():
    probs = _scene()
    cleaned, labels = keep_largest_component(
        probs, "topology", return_labels=True, groups=[[1, 2], [3]]
    )
    # the inferior horn stays: joined to its ventricle, the pair outgrows the island
    assert (labels[5:6, 2:5, 2:5] == 2).all() and (labels[2:5, 2:5, 2:5] == 1).all()
    # the island's class-2 probability is gone and goes to the next class
    assert (cleaned[2, 10:13, 10:13, 10:13] == 0).all()
    assert (labels[10:13, 10:13, 10:13] == 3).all()
    torch.testing.assert_close(cleaned.sum(0), torch.ones(16, 16, 16))
    assert torch.equal(labels, cleaned.argmax(0))
    # per label instead, class 2 keeps the island and loses the piece by its ventricle
    by_label = keep_largest_component(probs, "labels").argmax(0)
    assert (by_label[10:13, 10:13, 10:13] == 2).all() and (by_label[5, 2:5, 2:5] != 2).all()


def test_the_mask_is_the_probability_above_a_quarter_not_the_argmax():
    probs = _scene()
    # a class-2 bridge at probability 0.3 (never the argmax) joins the island to the ventricle
    probs[:, 6:10, 3, 3] = torch.tensor([0.0, 0.05, 0.3, 0.65]).view(4, 1)
    probs[:, 10, 4:10, 3] = torch.tensor([0.0, 0.05, 0.3, 0.65]).view(4, 1)
    probs[:, 10, 10, 4:10] = torch.tensor([0.0, 0.05, 0.3, 0.65]).view(4, 1)
    labels = keep_largest_component(probs, "topology", return_labels=True, groups=[[1, 2]])[1]
    assert (labels[10:13, 10:13, 10:13] == 2).all()
    # at 0.2 the bridge is not part of the mask, and the island goes
    for index in ((slice(6, 10), 3, 3), (10, slice(4, 10), 3), (10, 10, slice(4, 10))):
        probs[(2, *index)] = 0.2
        probs[(3, *index)] = 0.75
    labels = keep_largest_component(probs, "topology", return_labels=True, groups=[[1, 2]])[1]
    assert (labels[10:13, 10:13, 10:13] == 3).all()


def test_topology_without_groups_is_the_brain_clean_up():
    probs = _scene()
    probs[:, 0, 0, 0] = torch.tensor([0.1, 0.0, 0.0, 0.9])  # a stray voxel outside the brain
    probs[:, 1, 1, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # (its only neighbour in the cube)
    brain_probs, brain_labels = keep_largest_component(probs, "brain", return_labels=True)
    topo_probs, topo_labels = keep_largest_component(probs, "topology", return_labels=True)
    assert torch.equal(brain_labels, topo_labels) and torch.equal(brain_probs, topo_probs)
    assert topo_labels[0, 0, 0] == 0


def test_topology_groups_of_the_structure_and_tissue_targets():
    target = target_preset("synthseg")
    groups = topology_groups(target)
    classes = [k for group in groups for k in group]
    assert sorted(classes) == list(range(1, target.n_classes))  # every structure once
    as_values = {tuple(sorted(target.values[k] for k in group)) for group in groups}
    assert {g for g in as_values if len(g) > 1} == {tuple(sorted(g)) for g in TOPOLOGY_GROUPS}
    # left and right groups mirror each other
    assert (4, 5, 17) in as_values and (43, 44, 53) in as_values
    # GM / WM / CSF: CSF is many pieces, so no group (the clean-up is the brain's)
    assert topology_groups(target_preset("tissue")) == []
    assert InferenceOptions().keep_largest == "topology"
