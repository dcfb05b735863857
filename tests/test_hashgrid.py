"""The fast hash grid must compute exactly what the direct definition computes."""
import pytest
import torch

from core.hashgrid import HashGrid, HashGridConfig, reference_encode


@pytest.mark.parametrize("dims,max_res,log2_table", [
    (2, [40, 40], 8),        # fine levels hashed
    (2, [6, 6], 12),          # all levels dense
    (3, [9, 9, 5], 6),        # 3-D, mostly hashed
    (3, [12, 9, 4], 12),      # 3-D, per-axis resolutions, dense
])
def test_matches_reference_values_and_table_gradient(dims, max_res, log2_table):
    torch.manual_seed(0)
    grid = HashGrid(HashGridConfig(dims, n_levels=4, n_features=2, log2_table=log2_table, base_res=2, max_res=max_res))
    with torch.no_grad():
        grid.table.normal_()
    x = torch.rand(25, dims)
    x[0] = 0.0  # the corners of the domain are valid inputs
    x[1] = 1.0
    weights = torch.randn(25, grid.output_dim)
    fast = grid(x)
    (fast * weights).sum().backward()
    fast_grad = grid.table.grad.clone()
    grid.table.grad = None
    ref = reference_encode(grid, x)
    (ref * weights).sum().backward()
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.allclose(fast_grad, grid.table.grad, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_input_gradient_matches_finite_differences(dims):
    torch.manual_seed(1)
    grid = HashGrid(HashGridConfig(dims, n_levels=3, log2_table=7, base_res=2,
                                   max_res=[17] * dims)).double()
    with torch.no_grad():
        grid.table.normal_()
    x = (torch.rand(6, dims, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(grid, (x,), eps=1e-6, atol=1e-5)


def test_dense_levels_have_no_collisions_and_hashed_levels_share_the_table_cap():
    grid = HashGrid(HashGridConfig(2, n_levels=6, log2_table=10, base_res=4, max_res=128))
    res = grid.cfg.resolutions()
    for level, r in enumerate(res):
        vertices = (r[0] + 1) * (r[1] + 1)
        assert (level < grid.n_dense) == (vertices <= 2 ** 10)
    expected_rows = sum(min((r[0] + 1) * (r[1] + 1), 2 ** 10) for r in res)
    assert grid.table.shape == (expected_rows, 2)


def test_fits_an_image_detail_that_a_coarse_grid_cannot():
    """A trained grid + linear head reproduces a high-frequency pattern (what the atlas relies on)."""
    torch.manual_seed(0)
    grid = HashGrid(HashGridConfig(2, n_levels=8, log2_table=14, base_res=4, max_res=128))
    head = torch.nn.Linear(grid.output_dim, 1)
    opt = torch.optim.Adam([*grid.parameters(), *head.parameters()], lr=1e-2, eps=1e-15)

    def target(x):
        return torch.sin(40 * x[:, :1]) * torch.cos(33 * x[:, 1:])

    for _ in range(300):
        x = torch.rand(4096, 2)
        loss = ((head(grid(x)) - target(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(4096, 2)
    with torch.no_grad():
        err = ((head(grid(x)) - target(x)) ** 2).mean()
    assert err < 0.01 * target(x).var()


def test_loads_a_checkpoint_with_the_earlier_feature_major_table():
    """Projects trained before the table became row-major ([rows, F]) stored it as [F, rows]."""
    torch.manual_seed(3)
    cfg = HashGridConfig(3, n_levels=4, log2_table=8, base_res=2, max_res=[20, 15, 6])
    trained = HashGrid(cfg)
    with torch.no_grad():
        trained.table.normal_()
    old_state = {"table": trained.table.detach().T.contiguous()}  # the earlier layout
    reopened = HashGrid(cfg)
    reopened.load_state_dict(old_state)
    x = torch.rand(50, 3)
    assert torch.equal(reopened(x), trained(x))


def test_row_gather_and_scatter_agree_with_the_plain_row_path():
    """The complex-number path (CPU, two features) and the plain row path (other devices,
    other feature counts) compute the same gather and the same accumulated gradient."""
    from core import hashgrid

    torch.manual_seed(4)
    table = torch.randn(50, 2)
    idx = torch.randint(0, 50, (400,))  # many repeats: accumulation must add them all
    values = torch.randn(400, 2)
    assert hashgrid._as_complex_rows(table)
    assert torch.equal(hashgrid._gather_rows(table, idx), table.index_select(0, idx))
    fast = torch.zeros_like(table)
    hashgrid._scatter_rows(fast, idx, values)
    plain = torch.zeros_like(table).index_add_(0, idx, values)
    assert torch.allclose(fast, plain, atol=1e-5)
    three = torch.randn(50, 3)
    assert not hashgrid._as_complex_rows(three)
    assert torch.equal(hashgrid._gather_rows(three, idx), three.index_select(0, idx))


@pytest.mark.parametrize("dims,max_res,log2_table", [(2, [40, 40], 8), (3, [12, 9, 4], 12)])
def test_evaluating_only_the_first_levels_gives_their_features_and_gradients(dims, max_res, log2_table):
    """Coarse-to-fine evaluates only the levels in use: the same features, table gradient
    and input gradient as the full evaluation restricted to those levels."""
    torch.manual_seed(5)
    grid = HashGrid(HashGridConfig(dims, n_levels=5, n_features=2, log2_table=log2_table, base_res=2,
                                   max_res=max_res))
    with torch.no_grad():
        grid.table.normal_()
    x = torch.rand(30, dims, requires_grad=True)
    k = 3
    weights = torch.randn(30, 2 * k)
    part = grid(x, levels=k)
    assert part.shape == (30, 2 * k)
    (part * weights).sum().backward()
    part_grads = grid.table.grad.clone(), x.grad.clone()
    grid.table.grad, x.grad = None, None
    full = grid(x)
    assert torch.allclose(part, full[:, :2 * k], atol=1e-6)
    (full[:, :2 * k] * weights).sum().backward()
    assert torch.allclose(part_grads[0], grid.table.grad, atol=1e-5)
    assert torch.allclose(part_grads[1], x.grad, atol=1e-4)


def test_a_field_in_coarse_to_fine_skips_off_levels_without_changing_anything():
    """Field.forward with levels switched off (weight 0) equals the full evaluation weighed
    level by level: outputs and every parameter's gradient."""
    from core.model import Field

    torch.manual_seed(6)
    field = Field(HashGridConfig(2, n_levels=6, log2_table=10, base_res=4, max_res=64), 3, hidden=16)
    with torch.no_grad():
        field.grid.table.normal_(0.0, 0.1)
    x = torch.rand(64, 2)
    field.set_active_levels(2.4)  # levels 0, 1 in full, level 2 fading in, 3-5 off
    assert field.active_levels == 3 and not field.full_detail
    out = field(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in field.parameters()]
    field.zero_grad(set_to_none=True)
    reference = field.mlp(field.grid(x) * field.level_weights)
    reference.square().sum().backward()
    assert torch.allclose(out, reference, atol=1e-6)
    for got, want in zip(grads, (p.grad for p in field.parameters())):
        assert torch.allclose(got, want, atol=1e-5)
    field.set_active_levels(10.0)
    assert field.full_detail and field.active_levels == 6
