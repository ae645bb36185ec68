"""What famix needs of a CLIP image tower, as one contract every tower family fulfils.

A *tower family* (``resnet``, ``vit``, ``eva``, ``convnext``) is a stateless object whose methods take the
open_clip image tower module ``visual`` (``clip.visual``). The segmenter holds the module itself (so its
parameter names are the tower's: ``backbone.layer4.2.conv1.weight``, ``backbone.trunk.blocks.3.attn...``)
and asks the family how to use it:

- dense features for the DeepLabv3+ head: the tower as ordered *units* (``units``), the unit whose output is
  the low-level map (``low_site``) and the last unit's output ("out"), turned into maps by ``dense``, with
  ``channels`` (low, out) and, for token towers, a learned ``neck`` bringing the low map to stride ~4;
- the *style site* (``style_site``, a unit name): the map FAMix restyles, its channels, the S x S grid the
  CLIP tail takes, whether restyled maps take a ReLU (``style_relu``), and the tail itself (``tail``:
  style-site maps -> CLIP image embedding, through which PIN optimises styles);
- freezing: ``unit_modules`` / ``unit_parameters`` and ``last_stage`` (the counterpart of ResNet's layer4,
  what the ``layer4`` freeze preset trains; ``last-block`` trains the last unit);
- input rules: ``pad_multiple`` (sides the forward zero-pads to; 1 = any size) and ``input_size`` (the
  square resolution CLIP was trained at);
- names: ``clip_names``, the open_clip model names of the family famix offers (``model.backbone=``), and
  ``clip_config``, the open_clip config each builds (``models.clip.CLIP_CONFIGS`` reads both).

Adding a family is one module with one subclass, listed in ``famix.models.towers.FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Unit = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad images [B, 3, H, W] at the bottom and right to multiples of ``multiple`` (no-op if they
    are). Zero is the mean colour of CLIP-normalised images."""
    ph, pw = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def check_stride(output_stride: int, stride: int, what: str) -> None:
    """Refuse a ``model.output_stride`` other than the only one a tower gives (``what``: e.g. "this ViT: its
    output stride is its patch size"), saying the value to set."""
    if output_stride != stride:
        raise ValueError(
            f"model.output_stride={output_stride} does not fit {what} {stride}; "
            f"set model.output_stride={stride}"
        )


class Tower:
    """A family of CLIP image towers; see the module docstring. Subclasses set the class attributes and
    implement the methods that raise ``NotImplementedError``."""

    name: str = ""  # the family's name, as configs and docs say it
    # The open_clip model names of this family famix offers (``model.backbone=``); ``models.clip`` builds
    # its configs from every family's (``clip_config``).
    clip_names: tuple[str, ...] = ()
    style_site: str = ""  # the unit whose output is the style map
    style_relu: bool = False  # whether restyled style maps take a ReLU (a site that leaves one)
    channels_last: bool = False  # whether CUDA runs it in NHWC (cuDNN's fast convolutions)

    def clip_config(self, name: str) -> str:
        """The open_clip config that ``name`` (one of ``clip_names``) builds: by default its own."""
        return name

    def accepts(self, visual: nn.Module) -> bool:
        """True when ``visual`` is a tower of this family."""
        raise NotImplementedError

    def describe(self) -> str:
        """What an error lists: the family and the open_clip modules it takes."""
        raise NotImplementedError

    def prepare(self, visual: nn.Module, output_stride: int, dilation: str) -> nn.Module:
        """Make ``visual`` a dense backbone at ``output_stride``, in place (parameters keep their names);
        ValueError naming the option for a stride it cannot give. Returns the same module."""
        raise NotImplementedError

    def units(self, visual: nn.Module, size: tuple[int, int] | None = None) -> list[Unit]:
        """The prepared tower as ordered (name, callable) units, for inputs of ``size`` (H, W) (token towers
        need the grid for their positions; None: the native size)."""
        raise NotImplementedError

    def unit_names(self, visual: nn.Module) -> list[str]:
        return [name for name, _ in self.units(visual)]

    def unit_modules(self, visual: nn.Module, name: str) -> list[nn.Module]:
        """The submodules of one unit (put in eval mode when it is frozen)."""
        raise NotImplementedError

    def unit_parameters(self, visual: nn.Module, name: str) -> list[nn.Parameter]:
        """The parameters of one unit (what freeze presets switch): its modules' by default."""
        return [p for m in self.unit_modules(visual, name) for p in m.parameters()]

    def last_stage(self, names: list[str]) -> list[str]:
        """The units the ``layer4`` freeze preset trains (ResNet's layer4 and its counterparts)."""
        raise NotImplementedError

    def low_site(self, visual: nn.Module) -> str:
        """The unit whose output is the head's low-level feature."""
        raise NotImplementedError

    def channels(self, visual: nn.Module) -> tuple[int, int]:
        """(low, out) channels of the dense maps the head takes."""
        raise NotImplementedError

    def neck(self, visual: nn.Module, output_stride: int) -> nn.Module | None:
        """A learned module bringing the low map to stride ~4 (token towers), or None."""
        return None

    def dense(
        self, visual: nn.Module, low: torch.Tensor, out: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The low-site and last units' outputs as maps [B, C, h, w] (``grid``: the style map's h x w)."""
        return low, out

    def pad_multiple(self, visual: nn.Module) -> int:
        """Input sides are zero-padded to multiples of this (1: any size is taken as it is)."""
        return 1

    def style_features(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The style-site map of normalised images x [B, 3, H, W] (no restyle)."""
        raise NotImplementedError

    def style_channels(self, visual: nn.Module) -> int:
        """C of the style map (a style is C means and C standard deviations)."""
        raise NotImplementedError

    def style_grid(self, visual: nn.Module) -> int:
        """S, the side of the S x S style-site maps ``tail`` takes (PIN pools restyled patches to it)."""
        raise NotImplementedError

    def tail(self, visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding of style-site maps z [N, C, S, S] -> [N, D], the tower past the site."""
        raise NotImplementedError

    def input_size(self, visual: nn.Module) -> int:
        """The square input resolution the tower was built for (its ``image_size``)."""
        size = visual.image_size
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"CLIP image size {tuple(size)} is not square: famix needs a square input")
            size = size[0]
        return int(size)
