"""`famix adapt` on the tiny preset, pinned bit for bit: the target's bank (tensors and metadata) and the
fine-tuned weights and run record. Recorded before adapt's mining became the shared mining pass and its
fine-tuning `famix train`'s stage (issue 28), so that the move is seen to compute nothing new."""

import hashlib
import json

from famix.engine.checkpoint import load_checkpoint
from famix.stages import adapt
from famix.style.bank import StyleBank

from .pins import pins_for

SOURCE = "synthetic:day:6:0:size=48"
SETTINGS = adapt.AdaptSettings(
    iterations=3, steps=2, crop=32, batch_size=2, pin_batch=4, device="cpu", workers=0, ckpt_interval=2,
    save_every=1,
)  # fmt: skip


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _tensors(d: dict) -> bytes:
    return b"".join(k.encode() + v.contiguous().numpy().tobytes() for k, v in sorted(d.items()))


# Computed at commit 03883ff (before the move) on each machine (tests/pins.py); both recipes.
PINNED = {
    ("AVX512", "AuthenticAMD"): {  # the 2-core AMD EPYC container with avx512_bf16 of 2026-12-05
        "poda bank": "513d8713994cbb1f", "poda state": "ab6788b9c7676d37",
        "poda record": "a534aa4bb78f0915", "famix bank": "7846dbd5b67df44c",
        "famix state": "52a1ef4010f25ed3", "famix record": "062321df404586d9",
    },
}  # fmt: skip


def _stable(record: dict) -> dict:
    # the checkpoint's and bank's fingerprints hash files whose zip entries name the test's temporary folder
    return {
        **record,
        "inputs": {k: v for k, v in record["inputs"].items() if k not in ("checkpoint", "bank")},
    }


def _adapt_hashes(checkpoint, out, recipe: str) -> dict:
    settings = adapt.AdaptSettings(**{**vars(SETTINGS), "recipe": recipe})
    written = adapt.run(checkpoint, ["driving at night"], SOURCE, out, settings=settings, progress=False)
    run = written["driving at night"].parent
    b = StyleBank.load(run / "styles.safetensors")
    meta = {k: v for k, v in b.metadata.items() if k != "famix_version"}
    meta["run"] = _stable(meta["run"])
    styles = {f"{kind}/{n}": t for n, (mu, sg) in b.styles.items() for kind, t in (("mu", mu), ("sigma", sg))}
    ckpt = load_checkpoint(run / "latest.pt")
    record = _stable(ckpt["run"])
    return {
        f"{recipe} bank": _h(_tensors(styles) + json.dumps(meta, sort_keys=True).encode()),
        f"{recipe} state": _h(_tensors(ckpt["model_state"])),
        f"{recipe} record": _h(json.dumps(record, sort_keys=True).encode()),
    }


def test_adapt_is_unchanged_bit_for_bit(checkpoint, tmp_path, pin_threads):
    pinned = pins_for(PINNED)
    got = {}
    for recipe in ("poda", "famix"):
        got.update(_adapt_hashes(checkpoint, tmp_path / recipe, recipe))
    assert got == pinned
