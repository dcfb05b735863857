"""Resuming a checkpoint written before the hash tables became row-major ([F, rows] -> [rows, F])."""
import numpy as np
import torch

from core.hashgrid import HashGrid
from core.model import LayeredAtlasModel, ModelConfig
from core.sampling import TrainingData
from core.train import TrainConfig, Trainer


def _trainer() -> Trainer:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    model = LayeredAtlasModel(ModelConfig(n_frames=3, work_size=(16, 12), layers=("bg",)))
    data = TrainingData(frames, None, None, torch.device("cpu"))
    return Trainer(model, data, TrainConfig(iters=10, batch=256), "none")


def _to_old_layout(state: dict) -> dict:
    """The same state as an earlier inve wrote it: every hash table and its Adam moments transposed."""
    old = {**state, "model": {k: (v.T.contiguous() if k.endswith(".table") else v) for k, v in state["model"].items()}}
    opt = {"param_groups": state["optimizer"]["param_groups"],
           "state": {i: {k: (v.T.contiguous() if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == 2 else v)
                         for k, v in s.items()} for i, s in state["optimizer"]["state"].items()}}
    old["optimizer"] = opt
    return old


def test_old_layout_checkpoint_resumes_with_fresh_moments_and_its_tables():
    tr = _trainer()
    for _ in range(3):
        tr.train_step()
    state = tr.state()
    assert any(isinstance(m, HashGrid) for m in tr.model.modules())
    old = _to_old_layout(state)
    assert any(v.shape != state["model"][k].shape for k, v in old["model"].items())
    fresh = _trainer()
    fresh.load_state(old)
    # the tables come back in the new layout, equal to what was trained ...
    for k, v in fresh.model.state_dict().items():
        torch.testing.assert_close(v, state["model"][k])
    # ... and the transposed moments were not applied to the wrong entries: they start again
    assert len(fresh.opt.state) == 0
    fresh.train_step()
    assert fresh.step == 4
    # a checkpoint of the current layout keeps its moments
    same = _trainer()
    same.load_state(state)
    assert len(same.opt.state) == len(tr.opt.state) > 0
