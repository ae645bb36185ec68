"""famix: FAMix (Freeze, Augment, Mix) for domain-generalised semantic segmentation.

The documented Python surface (``__all__``; see :mod:`famix.api`)::

    import famix
    model = famix.load("runs/gta5_rn50/best.pt")   # a checkpoint, a `famix save` folder, or "hf:OWNER/NAME"
    labels = model.predict("street.png")          # [H, W] uint8 class indices

``famix.load_config`` / ``famix.Config`` make configs; ``famix.mine``, ``famix.train``, ``famix.evaluate``
and ``famix.adapt`` run the stages; ``famix.benchmark`` measures a model's deployment variants,
``famix.report`` writes a run's or evaluation's HTML page;
``famix.diagnose`` says what a model makes of target images, ``famix.app`` is the page to try it in;
``famix.save_pretrained`` and ``famix.push`` share a model. Names are imported on first use, so ``import
famix`` stays light.
"""

from famix.version import __version__

_CONFIG = ("Config", "load_config")
_API = (
    *("Segmenter", "load", "save_pretrained", "push", "mine", "train", "evaluate", "adapt", "benchmark"),
    "report",
    "demo_config",
    "app",
    "diagnose",
)
__all__ = ["__version__", *_CONFIG, *_API]


def __getattr__(name: str):
    # loaded on first use, so that `import famix` imports no torch
    import importlib

    if name in _CONFIG:
        return getattr(importlib.import_module("famix.config"), name)
    if name in _API:
        return getattr(importlib.import_module("famix.api"), name)
    raise AttributeError(f"module 'famix' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
