"""The miniature world: procedural street scenes in named styles, captions, the tiny CLIP pretrained on
them, and its zero-shot check. It sits above the library (it uses ``data``, ``models`` and ``style``;
nothing there imports it). Its ``synthetic:DOMAIN[:N[:SEED]][:size=S]`` dataset specs reach
``famix.data.datasets`` through the ``famix.datasets`` entry point ``synthetic`` (``synthetic.ENTRY``), not
through an import.

Modules, from the pixels up:

- ``canvas``: class ids, palettes, the canvas and the noise fields;
- ``street``: camera, ground plane, facades, skyline, shading; ``scene``: the objects and whole scenes;
- ``styles``: one function per domain that restyles a scene's plain day colours;
- ``synthetic``: the public face: ``DOMAINS``, ``render``, ``SyntheticDataset``, the ``synthetic:`` spec;
- ``captions``: captioned crops in every style; ``pretrain``: ``famix pretrain-tiny-clip``;
  ``zero_shot``: the tiny CLIP's zero-shot recognition of styles and classes.

The demo that runs FAMix on this world is :mod:`famix.demo`.
"""

from famix.world.synthetic import (
    DOMAINS,
    MINING_DOMAINS,
    SECOND_SOURCE_DOMAIN,
    SHIFTED_DOMAINS,
    SOURCE_DOMAIN,
    SyntheticDataset,
    render,
)

__all__ = [
    "DOMAINS",
    "MINING_DOMAINS",
    "SECOND_SOURCE_DOMAIN",
    "SHIFTED_DOMAINS",
    "SOURCE_DOMAIN",
    "SyntheticDataset",
    "render",
]
