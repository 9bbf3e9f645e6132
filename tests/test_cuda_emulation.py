"""The CUDA emulation (tests/cuda_emulation.py) itself: it refuses what CUDA refuses, counts what makes
the host wait, and catches the GPU defects found in main 7bd303c when they are planted back, where the
same code on a plain CPU passes."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.model_components.ray_generators import RayGenerator

from async_nerf_ns.data.ray_generator import PinholeRayGenerator
from async_nerf_ns.model import merged
from async_nerf_ns.partition.routing import route_to_cells
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig
from cuda_emulation import DEVICE, DeviceTensor, EmulatedCudaError, emulated_cuda, host_value


def _owners(waits):
    return sorted({(w.owner, w.kind) for w in waits})


def test_device_tensors_report_cuda_and_keep_their_values():
    with emulated_cuda():
        x = torch.arange(6, device="cuda").reshape(2, 3).float()
        y = (x * 2 + 1).sum(dim=0)
        assert isinstance(y, DeviceTensor) and y.device == DEVICE and y.is_cuda
        assert host_value(y).tolist() == [8.0, 12.0, 16.0]
        linear = torch.nn.Linear(3, 2).to("cuda")
        assert all(isinstance(p, DeviceTensor) and isinstance(p, torch.nn.Parameter) for p in linear.parameters())


def test_mixing_host_and_device_tensors_raises_as_cuda_does_and_scalars_are_allowed():
    with emulated_cuda():
        x = torch.ones(3, device="cuda")
        with pytest.raises(EmulatedCudaError, match="same device"):
            x + torch.ones(3)
        with pytest.raises(EmulatedCudaError, match="same device"):
            torch.where(x > 0, x, torch.zeros(3))
        assert host_value(x + torch.tensor(2.0)).tolist() == [3.0, 3.0, 3.0]  # a host 0-dim tensor is a scalar
        with pytest.raises(EmulatedCudaError, match="indices should be either on cpu"):
            torch.arange(5)[torch.tensor([1, 2], device="cuda")]
        with pytest.raises(TypeError, match="cuda:0 device type tensor to numpy"):
            x.numpy()
    torch.ones(3) + torch.ones(3)  # outside, nothing is changed


def test_dtype_rules_of_cuda_and_fp16_autocast():
    with emulated_cuda():
        rows = torch.tensor([0, 2], device="cuda")
        half = torch.ones(2, 3, device="cuda", dtype=torch.float16)
        with pytest.raises(EmulatedCudaError, match="same dtype"):
            torch.zeros(4, 3, device="cuda").index_copy(0, rows, half)
        with pytest.raises(EmulatedCudaError, match="same dtype"):
            torch.zeros(4, 3, device="cuda").index_put_((rows,), half)
        with torch.autocast("cuda"):
            product = torch.ones(4, 8, device="cuda") @ torch.ones(8, 2, device="cuda")
            kept = torch.ones(4, device="cuda").exp()
            with pytest.raises(EmulatedCudaError, match="same dtype"):  # CUDA autocast does not promote it
                torch.zeros(4, 3, device="cuda").index_copy(0, rows, product.reshape(2, 4)[:, :3])
        assert product.dtype == torch.float16 and kept.dtype == torch.float32  # CUDA's default policy
    # CPU autocast (bfloat16, what a plain CPU test can turn on) promotes the same index_copy instead.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        source = torch.ones(2, 3, dtype=torch.bfloat16)
        assert torch.zeros(4, 3).index_copy(0, torch.tensor([0, 2]), source).dtype == torch.float32


def test_every_kind_of_wait_is_counted_with_its_owner():
    with emulated_cuda() as ledger:
        x = torch.arange(8, device="cuda")
        mark = ledger.mark()
        float(x.sum())
        torch.nonzero(x > 3)
        torch.unique(x)
        x[x > 3]
        x[x > 5] = 0
        x.tolist()
        x.cpu()
        torch.equal(x, x)
        torch.ones(3).to("cuda")  # pageable host memory
        pinned = torch.empty(3, pin_memory=True)
        pinned.to("cuda", non_blocking=True)  # pinned: no wait
        kinds = [w.kind for w in ledger.since(mark)]
    assert kinds == [
        "item", "nonzero", "unique", "boolean-mask indexing", "boolean-mask assignment", "device -> host copy",
        "device -> host copy", "equal", "host -> device copy (not pinned)",
    ]
    assert {w.owner for w in ledger.since(mark)} == {"other"}  # this test file is nobody's package


def test_planted_tpf_new_tensor_is_a_wait_of_ours_and_the_fix_is_none():
    times = torch.linspace(0.0, 4.0, 9).double().numpy()
    poses = torch.eye(4)[None, :3].repeat(9, 1, 1)
    poses[:, 0, 3] = torch.linspace(0.0, 1.0, 9)
    tpf = fit_tpf(times, poses, TimePoseFunctionConfig(iterations=0), progress=False)
    with emulated_cuda() as ledger:
        tpf.to("cuda")
        normalised = torch.linspace(-0.2, 1.2, 16, device="cuda")
        mark = ledger.mark()
        tpf.poses_at(normalised)
        assert [w for w in ledger.since(mark) if w.owner == "ours"] == []
        steps = tpf.end_steps.to(torch.float32)
        mark = ledger.mark()
        torch.stack([steps.new_tensor(0.0), steps.new_tensor(1.0)])  # what _extrapolate did (main 7bd303c)
        assert [w.kind for w in ledger.since(mark)] == ["host -> device copy (not pinned)"] * 2


def _cameras(n: int = 3) -> Cameras:
    c2w = torch.eye(4)[None, :3].repeat(n, 1, 1)
    c2w[:, :, 3] = torch.randn(n, 3)
    return Cameras(camera_to_worlds=c2w, fx=40.0, fy=42.0, cx=16.0, cy=12.0, width=32, height=24,
                   camera_type=CameraType.PERSPECTIVE)


def test_planted_generator_made_after_to_device_is_refused_and_passes_on_a_plain_cpu():
    """The resume crash of main 7bd303c: a nerfstudio RayGenerator built after the pipeline moved to the
    device keeps image_coords in host memory; the first batch indexes it with device indices."""
    indices = torch.tensor([[0, 3, 4], [2, 10, 20]])
    RayGenerator(_cameras().to("cpu"))(indices)  # a plain CPU run passes
    with emulated_cuda():
        generator = RayGenerator(_cameras().to("cuda"))
        with pytest.raises(EmulatedCudaError, match="indices should be either on cpu"):
            generator(indices.to("cuda"))
        ours = PinholeRayGenerator(_cameras()).to("cuda")
        ours.set_poses(_cameras().camera_to_worlds.to("cuda"))  # new poses: copied into the device buffer
        bundle = ours(indices.to("cuda"))
        assert isinstance(bundle.origins, DeviceTensor) and isinstance(ours.c2w, DeviceTensor)


def test_nerfstudios_generate_rays_waits_and_ours_does_not():
    indices = torch.randint(0, 20, (64, 3))
    indices[:, 0] %= 3
    with emulated_cuda() as ledger:
        cameras = _cameras().to("cuda")
        device_indices = indices.to("cuda")
        nerfstudio_generator = RayGenerator(cameras).to("cuda")
        ours = PinholeRayGenerator(cameras).to("cuda")
        mark = ledger.mark()
        nerfstudio_generator(device_indices)
        theirs = ledger.since(mark)
        mark = ledger.mark()
        ours(device_indices)
        assert ledger.since(mark) == []
    assert ("nerfstudio", "masked_select") in _owners(theirs) and len(theirs) >= 10, _owners(theirs)


def _old_scatter_by_cell(cell_ids, num_cells, evaluate):
    """_scatter_by_cell as main 7bd303c had it: unique().tolist() and one nonzero per cell."""
    out = {}
    for cell in torch.unique(cell_ids).tolist():
        index = torch.nonzero(cell_ids == cell, as_tuple=True)[0]
        for name, value in evaluate(cell, index).items():
            if name not in out:
                out[name] = value.new_zeros((len(cell_ids), *value.shape[1:]))
            out[name] = out[name].index_copy(0, index, value)
    return out


@pytest.mark.parametrize("num_cells", [1, 4, 16])
def test_a_merged_call_waits_once_whatever_the_number_of_cells(num_cells, monkeypatch):
    values = torch.randn(1000, 2)
    with emulated_cuda() as ledger:
        points = torch.rand(1000, 3, device="cuda") * 4
        centroids = torch.rand(num_cells, 3, device="cuda") * 4
        ids = route_to_cells(points, centroids)
        features = values.to("cuda")

        def evaluate(cell, index):
            return {"f": features[index] * (cell + 1)}

        mark = ledger.mark()
        result = merged._scatter_by_cell(ids, num_cells, evaluate)
        ours = len(ledger.since(mark))
        mark = ledger.mark()
        reference = _old_scatter_by_cell(ids, num_cells, evaluate)
        old = len(ledger.since(mark))
        assert torch.equal(host_value(result["f"]), host_value(reference["f"]))
    assert ours == 1
    used = len(set(host_value(ids).tolist()))
    assert old == 2 + used  # unique, its tolist, then one nonzero per cell: grows with the cells
