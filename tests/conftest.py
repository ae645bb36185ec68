"""Shared test set-up: offline hub, a tiny checkpoint."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from famix.config import ModelConfig  # noqa: E402
from famix.engine.checkpoint import save_checkpoint  # noqa: E402
from famix.models.build import build_segmenter  # noqa: E402

from .pins import PIN_THREADS  # noqa: E402


@pytest.fixture
def pin_threads():
    """torch's intra-op threads set to the pins' (tests/pins.py) for one test, then put back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(PIN_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny-rn segmenter's checkpoint (random weights, seed 0), as `famix train` writes it (fp32, as the
    tiny presets train): best.pt."""
    cfg = ModelConfig(backbone="tiny-rn")
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model = build_segmenter(cfg, seed=0)
    save_checkpoint(
        path,
        model_state=model.state_dict(),
        config={"model": vars(cfg), "run": {"amp": "off"}},
        cur_itrs=0,
        best_score=0,
    )
    return path
