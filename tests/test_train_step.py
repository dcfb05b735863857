"""The training step's settings by budget: a short wall-time budget gets the cheaper step."""
import numpy as np
import torch

from core.model import LayeredAtlasModel, ModelConfig
from core.sampling import TrainingData
from core.schedules import FullDetail, LearningRate
from core.train import TrainConfig, Trainer


def _trainer(cfg: TrainConfig, schedules=None) -> Trainer:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    model = LayeredAtlasModel(ModelConfig(n_frames=3, work_size=(16, 12), layers=("bg",)))
    data = TrainingData(frames, None, None, torch.device("cpu"))
    return Trainer(model, data, cfg, "none", schedules=schedules)


def _table_lr(trainer: Trainer) -> float:
    return next(g["lr"] for g in trainer.opt.param_groups if g["name"] == "tables")


def _rate_at_end(trainer: Trainer) -> float:
    """The table rate the schedules set for the last step, as a fraction of the initial one."""
    start = trainer.base_lrs["tables"]
    for schedule in trainer.schedules:
        schedule(trainer, 1.0)
    return _table_lr(trainer) / start


def test_short_time_budget_takes_smaller_batches_at_a_higher_table_rate():
    cfg = TrainConfig(minutes=1.0, batch=512)
    tr = _trainer(cfg)
    assert (tr.batch, _table_lr(tr)) == (cfg.short_batch, cfg.short_lr_table)
    terms = tr.train_step()  # the step samples the short batch and trains
    assert tr.step == 1 and np.isfinite(terms["rgb"])


def test_short_time_budget_decays_its_rates_less():
    short, long_ = _trainer(TrainConfig(minutes=1.0)), _trainer(TrainConfig(minutes=4.0))
    assert abs(_rate_at_end(short) - short.cfg.short_lr_final) < 1e-9
    assert abs(_rate_at_end(long_) - long_.cfg.lr_final) < 1e-9
    assert short.cfg.short_lr_final > long_.cfg.lr_final
    iters = _trainer(TrainConfig(iters=300))
    assert abs(_rate_at_end(iters) - iters.cfg.lr_final) < 1e-9


def test_longer_budgets_iteration_budgets_and_fine_tuning_keep_the_configured_step():
    for cfg in (TrainConfig(minutes=4.0), TrainConfig(iters=300), TrainConfig()):
        tr = _trainer(cfg)
        assert (tr.batch, _table_lr(tr)) == (cfg.batch, cfg.lr_table)
    # a fine-tuning run (inve correct passes its own schedules) keeps the step it was given
    cfg = TrainConfig(minutes=0.25, batch=1024)
    tr = _trainer(cfg, schedules=[LearningRate({"map_tables": 1e-3, "map_mlps": 1e-3, "tables": 1e-3,
                                                "mlps": 1e-3}), FullDetail()])
    assert tr.batch == 1024


def test_the_cheaper_step_is_for_the_cpu_only():
    """On a GPU a step is launch-bound (4096 pixels cost about what 8192 do): keep the full step."""
    cfg = TrainConfig(minutes=1.0)
    assert cfg.step_settings("cpu") == (cfg.short_batch, cfg.short_lr_table)
    assert cfg.step_settings("cuda") == cfg.step_settings("mps") == (cfg.batch, cfg.lr_table)
    assert cfg.final_rate("cpu") == cfg.short_lr_final
    assert cfg.final_rate("cuda") == cfg.final_rate("mps") == cfg.lr_final


def _chooser_run(step_time, steps=400):
    """A ThreadChooser fed steps whose wall time depends on the thread count in use."""
    from core.train import ThreadChooser

    calls = []
    chooser = ThreadChooser(2, period=1.0, probe=4, set_threads=calls.append)
    for _ in range(steps):
        chooser.after_step(step_time[chooser.current])
    return chooser, calls


def test_training_threads_drop_to_one_where_two_wait_on_a_busy_cpu():
    chooser, calls = _chooser_run({2: 0.12, 1: 0.06})  # two threads stall: one is faster
    assert chooser.current == 1 and calls[0] == 1
    assert 2 in calls  # it keeps checking (the other work may stop)
    assert sum(1 for c in calls if c == 1) >= sum(1 for c in calls if c == 2)


def test_training_threads_stay_at_all_cores_where_they_are_faster():
    chooser, calls = _chooser_run({2: 0.04, 1: 0.06})
    assert chooser.current == 2
    assert calls and calls[0] == 1 and calls[-1] == 2  # tried one thread, went back


def test_error_map_draws_where_the_fit_is_worst_and_learns_from_every_batch():
    from core.sampling import ErrorMap

    frames = np.random.default_rng(1).integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    data = TrainingData(frames, None, None, torch.device("cpu"))
    errors = ErrorMap(3, 20, 30, tile=8, start=1e-4, floor=0.1)
    bad = 1 * errors.cells + 1 * errors.tx + 2  # frame 1, tile row 1, column 2: rows 8..15, columns 16..23
    errors.err[bad] = 1.0
    gen = torch.Generator().manual_seed(0)
    b = data.sample(600, gen, errors, share=0.5)
    assert torch.bincount(b["t"].long(), minlength=3).tolist() == [200, 200, 200]  # still stratified
    hw = 20 * 30
    t, rem = b["pixel"] // hw, b["pixel"] % hw
    y, x = rem // 30, rem % 30
    assert torch.equal((b["rgb"] * 255).round().to(torch.uint8), torch.from_numpy(frames)[t, y, x])
    in_bad = (t == 1) & (y >= 8) & (y < 16) & (x >= 16) & (x < 24)
    drawn = in_bad[300:]
    assert int(drawn.sum()) > 0.8 * int((t[300:] == 1).sum())  # frame 1's drawn pixels go to its bad tile
    assert int(in_bad[:300].sum()) < 30  # the uniform half does not (1 tile of 12: ~8 of 100)
    # a batch that finds the tile fixed lowers its estimate; untouched tiles keep theirs
    errors.update(b["pixel"], torch.zeros(600))
    assert float(errors.err[bad]) == 0.5 and float(errors.err.view(3, -1)[0].max()) <= 1e-4


def test_cpu_fits_sample_by_error_and_fine_tuning_stays_uniform():
    tr = _trainer(TrainConfig(minutes=1.0, batch=512))
    assert tr.errors is not None
    before = tr.errors.err.clone()
    tr.train_step()
    assert not torch.equal(tr.errors.err, before)  # the step's colour errors went into the map
    assert _trainer(TrainConfig(minutes=1.0, error_share=0.0)).errors is None
    tuned = _trainer(TrainConfig(minutes=1.0), schedules=[FullDetail()])
    assert tuned.errors is None
    # a resumed fit goes on from the map it had, not a flat one
    again = _trainer(TrainConfig(minutes=1.0, batch=512))
    again.load_state(tr.state())
    assert torch.allclose(again.errors.err, tr.errors.err, rtol=1e-3, atol=1e-6)
    assert not torch.equal(again.errors.err, before)


def test_inverse_polish_and_the_regularisers_see_only_uniform_samples():
    """The drawn half sits on outlines (where rough masks are least reliable) and is biased:
    the inverse polish (cycle term over the whole batch) draws none, sparsity and bootstrapping
    from automatic masks read only the uniform part, and more than half drawn is refused."""
    import pytest

    from core.errors import InveError

    tr = _trainer(TrainConfig(minutes=1.0, batch=512))
    drawn = []
    real = tr.data.sample
    tr.data.sample = lambda n, gen, errors=None, share=0.0: (drawn.append(share), real(n, gen, errors, share))[1]
    tr.train_step()
    tr.elapsed = 59.5  # the last percent of the minute: the schedules switch to the inverse polish
    tr.train_step()
    assert tr.phase == "polish" and drawn == [0.5, 0.0]
    with pytest.raises(InveError, match="error_share must be between 0 and 0.5"):
        _trainer(TrainConfig(minutes=1.0, error_share=0.75))

    # a two-layer objective: a drawn part whose masks say "foreground" changes nothing
    from core.objectives import Objective
    from core.train import LossWeights

    model = LayeredAtlasModel(ModelConfig(n_frames=3, work_size=(16, 12), layers=("bg", "fg")))
    frames = np.random.default_rng(0).integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    masks = np.zeros((3, 12, 16), np.uint8)
    data = TrainingData(frames, None, masks, torch.device("cpu"))
    b = data.sample(64, torch.Generator().manual_seed(0))
    b["n_uniform"] = torch.tensor(32)
    obj = Objective(model, LossWeights(), data.half, "auto")
    _, before = obj(dict(b), 0.0)
    b["mask"] = b["mask"].clone()
    b["mask"][32:] = 1.0
    _, after = obj(dict(b), 0.0)
    assert after["bootstrap"] == before["bootstrap"] and after["sparsity"] == before["sparsity"]
    b["mask"][:32] = 1.0
    _, uniform_changed = obj(dict(b), 0.0)
    assert uniform_changed["bootstrap"] != before["bootstrap"]  # the test can see a change
