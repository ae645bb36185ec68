"""The ResNet and ViT towers pinned before issue 20's tower refactor: a tiny mine + train run per family,
its bank's tensors, the trained weights, the logits of one fixed input and the style site's features of the
same input, hashed as computed at commit 871d05b (2026-12-04, the 2-core x86_64 CPU machine). A refactor
that changes what either family computes, by one bit, fails here."""

from __future__ import annotations

import hashlib

import pytest
import torch

from famix.config import load_config
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.models.clip import build_clip
from famix.models.towers import style_features
from famix.stages import mine, train
from famix.style.bank import StyleBank
from tests.pins import pins_for

# Bit-exact results depend on the CPU kernels torch picks (tests/pins.py): one table per machine seen, each
# computed before the refactor on that machine (871d05b; the AVX2 one at b61993e); others skip.
PINNED = {
    ("AVX512", "AuthenticAMD"): {  # the 2-core AMD EPYC container with avx512_bf16 of 2026-12-05, at 03883ff
        "tiny": {"bank": "c8757a7a6ecba8ec", "state": "28fa87bbc3bf8afc", "logits": "16be4a4c7231e3d9",
                 "style_site": "c034eb9a0c05d578"},
        "tiny_vit": {"bank": "63473c7b9703a9be", "state": "1784d17b0fbbe1cd", "logits": "2ed17194c622bd47",
                     "style_site": "27c93313b3cd7605"},
    },
    ("AVX512", None): {  # the 2-core x86_64 container of 2026-12-04 (an Intel one: the AMD one differs)
        "tiny": {"bank": "57e65dc8cdea4906", "state": "bdb1b1580bb261b0", "logits": "5511c9ca7593c08d",
                 "style_site": "c034eb9a0c05d578"},
        "tiny_vit": {"bank": "1817dc63190888ff", "state": "fa6e7337339ac9d3", "logits": "81cf2872eb266d5d",
                     "style_site": "27c93313b3cd7605"},
    },
    ("AVX2", "AuthenticAMD"): {  # the 2-core AMD EPYC container of 2026-12-05
        "tiny": {"bank": "436d521c0511480b", "state": "4a967d0e830d2220", "logits": "2f685d43a18b6c52",
                 "style_site": "c034eb9a0c05d578"},
        "tiny_vit": {"bank": "63473c7b9703a9be", "state": "f120ad6c592e83e0", "logits": "98c1207160e10f7f",
                     "style_site": "27c93313b3cd7605"},
    },
}  # fmt: skip


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _tensors(d: dict) -> bytes:
    return b"".join(k.encode() + v.contiguous().numpy().tobytes() for k, v in sorted(d.items()))


@pytest.mark.parametrize("preset", ["tiny", "tiny_vit"])
def test_tower_computes_what_it_computed(preset, tmp_path, pin_threads):
    pinned = pins_for(PINNED)[preset]
    fast = ["data.val=[]", "data.train=synthetic:day:8:size=64", "data.crop=48", "mine.crop=48"]
    bank = tmp_path / "bank.safetensors"
    run = [f"style.bank={bank}", "mine.steps=2", "mine.max_images=8", f"train.out={tmp_path / 'run'}"]
    cfg = load_config(preset, [*fast, *run, "train.iterations=3"])
    mine.run(cfg, progress=False)
    train.run(cfg)
    b = StyleBank.load(bank)
    styles = {f"{k}/{n}": t for n, (mu, sg) in b.styles.items() for k, t in (("mu", mu), ("sigma", sg))}
    state = load_checkpoint(tmp_path / "run" / "latest.pt")["model_state"]
    model, _ = load_segmenter(tmp_path / "run" / "latest.pt")
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    visual = build_clip(cfg.model.backbone, seed=0).visual.eval()
    with torch.no_grad():
        logits, features = model(x), style_features(visual, x)
    got = {
        "bank": _h(_tensors(styles)),
        "state": _h(_tensors(state)),
        "logits": _h(logits.numpy().tobytes()),
        "style_site": _h(features.numpy().tobytes()),
    }
    assert got == pinned
