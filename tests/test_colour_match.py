"""Appearance matching's colour transforms (model/colour_match.py) on colours with a known tint per cell."""

from __future__ import annotations

import torch

from async_nerf_ns.model.colour_match import IDENTITY, apply_transform, fit_affine, match_cells


def _colours(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.15


def test_a_chain_of_tinted_cells_is_matched_to_the_root():
    """Cells 0 - 1 - 2 - 3 in a row (3 sees nothing shared), cell 1 renders the truth with gains (1.2, 0.9,
    1.0), cell 2 with gains (0.8, 1.1, 1.05) plus 0.03: matched to cell 0 the transforms undo both, each
    residual drops from the tint's (0.06) to under 2.5e-3 (measured 6e-4 and 1.1e-3: the ridge's pull to the
    identity; the probe colours are off by 1.3e-3 and 1.9e-3 at most)."""
    g1, g2, bias2 = torch.tensor([1.2, 0.9, 1.0]), torch.tensor([0.8, 1.1, 1.05]), 0.03
    shared_01, shared_12 = _colours(500, 0), _colours(300, 1)
    renders = {
        (0, 1): (shared_01, shared_01 * g1),
        (2, 1): (shared_12 * g2 + bias2, shared_12 * g1),  # either order of a pair
    }
    report = match_cells(renders, root=0, num_cells=4)
    assert report.matched_to == {1: 0, 2: 1} and report.shared_rays == {1: 500, 2: 300}
    probe = _colours(100, 2)
    assert (apply_transform(report.transforms[1], probe * g1) - probe).abs().max() < 3e-3
    assert (apply_transform(report.transforms[2], probe * g2 + bias2) - probe).abs().max() < 4e-3
    assert torch.equal(report.transforms[0], IDENTITY) and torch.equal(report.transforms[3], IDENTITY)
    assert report.residual_before[1] > 0.04 and report.residual_after[1] < 2.5e-3
    assert report.residual_before[2] > 0.04 and report.residual_after[2] < 2.5e-3
    assert "cell 2 -> cell 1: 300 shared rays" in "\n".join(report.lines())


def test_agreeing_cells_keep_the_identity_and_few_flat_colours_stay_near_it():
    same = _colours(400, 3)
    report = match_cells({(0, 1): (same, same)}, root=0, num_cells=2)
    assert (report.transforms[1] - IDENTITY).abs().max() < 1e-4
    grey = torch.full((5, 3), 0.5)  # five grey rays say nothing about a colour matrix: measured 0.014 off
    assert (fit_affine(grey, grey * 1.1) - IDENTITY).abs()[:, :3].max() < 0.05


def test_a_disagreement_no_colour_transform_explains_is_left_alone():
    """Two cells whose renders differ by noise only (0.03 RMS, independent per ray): the fit takes under 5 %
    of the residual away, below min_reduction 0.15, so the cell keeps the identity; a tint is still matched."""
    truth = _colours(800, 4)
    noisy = (truth + 0.03 * torch.randn(800, 3, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    report = match_cells({(0, 1): (truth, noisy), (0, 2): (truth, truth * 0.8)}, root=0, num_cells=3, min_reduction=0.15)
    assert report.kept == {1: False, 2: True}
    assert torch.equal(report.transforms[1], IDENTITY) and report.residual_after[1] > 0.95 * report.residual_before[1]
    assert "cell 1 -> cell 0: 800 shared rays, kept as it is" in "\n".join(report.lines())
