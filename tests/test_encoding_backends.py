"""Backend choice: the PyTorch grid everywhere, tinycudann behind the same interface on CUDA."""
import importlib.util

import pytest
import torch

from core.encoding import backend_name, make_grid, tinycudann_available
from core.hashgrid import HashGrid, HashGridConfig

CFG = HashGridConfig(2, n_levels=8, n_features=2, log2_table=14, base_res=4, max_res=128)


def test_cpu_always_gets_the_pytorch_grid():
    grid = make_grid(CFG, "cpu", "auto")
    assert isinstance(grid, HashGrid) and backend_name(grid) == "torch"
    assert not tinycudann_available("cpu")
    out = grid(torch.rand(10, 2))
    assert out.shape == (10, CFG.output_dim)


def _fit_psnr(grid: torch.nn.Module, device: str, steps: int = 400) -> float:
    torch.manual_seed(0)
    head = torch.nn.Linear(CFG.output_dim, 1).to(device)
    opt = torch.optim.Adam([*grid.parameters(), *head.parameters()], lr=1e-2, eps=1e-15)

    def target(x):
        return 0.5 + 0.5 * torch.sin(30 * x[:, :1]) * torch.cos(23 * x[:, 1:])

    for _ in range(steps):
        x = torch.rand(8192, 2, device=device)
        loss = ((head(grid(x)) - target(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(65536, 2, device=device)
    with torch.no_grad():
        mse = float(((head(grid(x)) - target(x)) ** 2).mean())
    return -10 * torch.log10(torch.tensor(mse)).item()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("tinycudann") is None,
                    reason="needs a CUDA device with tinycudann")
def test_tinycudann_grid_fits_as_well_as_the_pytorch_grid():
    tcnn_grid = make_grid(CFG, "cuda", "tcnn").to("cuda")
    torch_grid = make_grid(CFG, "cuda", "torch").to("cuda")
    assert backend_name(tcnn_grid) == "tcnn" and backend_name(torch_grid) == "torch"
    assert tcnn_grid(torch.rand(5, 2, device="cuda")).shape == (5, CFG.output_dim)
    assert abs(_fit_psnr(tcnn_grid, "cuda") - _fit_psnr(torch_grid, "cuda")) < 2.0
