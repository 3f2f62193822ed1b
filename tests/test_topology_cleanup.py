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


def _hemisphere() -> torch.Tensor:
    """(4, 24, 24, 24) probabilities: 0 background, 1 white matter (a ball), 2 cortex (its
    shell, open to the background), 3 a deep structure inside the white matter; inside the
    white matter a "lesion" the refinement called cortex (27 voxels) and a hole called
    background (8 voxels)."""
    x, y, z = torch.meshgrid(*[torch.arange(24.0)] * 3, indexing="ij")
    r = ((x - 11.5) ** 2 + (y - 11.5) ** 2 + (z - 11.5) ** 2).sqrt()
    probs = torch.zeros(4, 24, 24, 24)
    probs[0] = 1
    def put(mask: torch.Tensor, p: list[float]) -> None:
        probs[:, mask] = torch.tensor(p).view(4, 1)
    put(r < 11, [0.1, 0.1, 0.7, 0.1])  # cortex
    put(r < 8, [0.0, 0.8, 0.15, 0.05])  # white matter
    put((x - 11.5).abs().le(2) & (y - 11.5).abs().le(2) & (z - 11.5).abs().le(2),
        [0.0, 0.1, 0.1, 0.8])  # deep structure
    lesion = torch.zeros(24, 24, 24, dtype=torch.bool)
    lesion[6:9, 10:13, 10:13] = True
    put(lesion, [0.0, 0.3, 0.6, 0.1])
    hole = torch.zeros(24, 24, 24, dtype=torch.bool)
    hole[16:18, 10:12, 10:12] = True
    put(hole, [0.6, 0.3, 0.1, 0.0])
    return probs, lesion, hole


def test_white_matter_takes_what_it_encloses_of_cortex_and_background():
    probs, lesion, hole = _hemisphere()
    before = probs.argmax(0)
    assert (before[lesion] == 2).all() and (before[hole] == 0).all()
    cleaned, labels = keep_largest_component(probs, "topology", return_labels=True,
                                             groups=[[1, 2], [3]], enclosures=[(1, [0, 2])])
    assert (labels[lesion] == 1).all() and (labels[hole] == 1).all()
    # the cortex at the surface and the enclosed deep structure (not cortex) keep their labels
    rest = ~lesion & ~hole
    assert torch.equal(labels[rest], before[rest])
    torch.testing.assert_close(cleaned.sum(0), torch.ones(24, 24, 24))
    # without the rule (or with a leak to the outside) the lesion stays cortex
    plain = keep_largest_component(probs, "topology", return_labels=True, groups=[[1, 2], [3]])[1]
    assert (plain[lesion] == 2).all()
    leaky = probs.clone()
    leaky[:, 0:9, 10:13, 10:13] = torch.tensor([0.0, 0.3, 0.6, 0.1]).view(4, 1, 1, 1)  # to the cortex
    leak_labels = keep_largest_component(leaky, "topology", return_labels=True, groups=[[1, 2], [3]],
                                         enclosures=[(1, [0, 2])])[1]
    assert (leak_labels[6:9, 10:13, 10:13] == 2).all()


def test_white_matter_enclosures_of_the_targets():
    from synthseg_lite.inference.segment import white_matter_enclosures

    synthseg = target_preset("synthseg")
    rules = white_matter_enclosures(synthseg)
    wm = [synthseg.values.index(2), synthseg.values.index(41)]
    cortex = [synthseg.values.index(3), synthseg.values.index(42)]
    assert [host for host, _ in rules] == wm
    assert all(sorted(classes) == sorted([0, *cortex]) for _, classes in rules)
    for tissue in ("tissue", "tissue_ventricular"):  # WM (2) takes GM (1) and background
        assert white_matter_enclosures(target_preset(tissue)) == [(2, [0, 1])]
    assert white_matter_enclosures(target_preset({2: 1, 41: 1})) == []  # no cortex, no rule
