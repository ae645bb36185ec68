"""The miniature world: procedural street scenes in named styles, captions, the tiny CLIP pretrained on
them, and its zero-shot check. It sits above the library (it uses ``data``, ``models`` and ``style``;
nothing there imports it). Importing it registers the ``synthetic:DOMAIN[:N[:SEED]][:size=S]``
dataset specs (the ``famix`` command and the tests do).

Modules, from the pixels up:

- ``canvas``: class ids, palettes, the canvas and the noise fields;
- ``street``: camera, ground plane, facades, skyline, shading; ``scene``: the objects and whole scenes;
- ``styles``: one function per domain that restyles a scene's plain day colours;
- ``synthetic``: the public face: ``DOMAINS``, ``render``, ``SyntheticDataset``, the ``synthetic:`` spec;
- ``captions``: captioned crops in every style; ``pretrain``: ``famix pretrain-tiny-clip``;
  ``zero_shot``: the tiny CLIP's zero-shot recognition of styles and classes.

The demo that runs FAMix on this world is :mod:`famix.demo`.
"""

from famix.data.datasets import DatasetEntry, register_dataset
from famix.world.synthetic import (
    DOMAINS,
    MINING_DOMAINS,
    SHIFTED_DOMAINS,
    SOURCE_DOMAIN,
    SyntheticDataset,
    build_synthetic,
    render,
)

USAGE = "synthetic:DOMAIN[:N[:SEED]][:size=S]  (N scenes, default 100; SEED 0; S x S pixels, default 256)"
LAYOUT = (
    "  the embedded procedural street world, rendered on the fly (nothing on disk)\n"
    f"  source domain: {SOURCE_DOMAIN}; held-out shifts: {', '.join(SHIFTED_DOMAINS)};\n"
    f"  mining-word styles: {', '.join(MINING_DOMAINS)}; all domains: {', '.join(DOMAINS)}"
)
register_dataset("synthetic", DatasetEntry(build_synthetic, USAGE, LAYOUT))

__all__ = ["DOMAINS", "MINING_DOMAINS", "SHIFTED_DOMAINS", "SOURCE_DOMAIN", "SyntheticDataset", "render"]
