"""CLIP backbones (ResNet, ViT, EVA02 and ConvNeXt image towers, ``models.towers``): model configs,
construction, weight loading from local files or open_clip tags, and each weight's input normalisation."""

from __future__ import annotations

import copy
import json
import os
import zipfile
from importlib import resources
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP

from famix.io import file_fingerprint
from famix.models.towers import FAMILIES, TINY_TRUNK_PREFIX, input_size
from famix.normalization import OPENAI_NORMALIZATION, Normalization

# The open_clip names each tower family offers (``Tower.clip_names``), with the config each builds
# (``Tower.clip_config``: a ResNet name means its QuickGELU config, OpenAI's).
CLIP_CONFIGS: dict[str, dict] = {
    name: open_clip.get_model_config(family.clip_config(name))
    for family in FAMILIES
    for name in family.clip_names
}
_REAL = tuple(CLIP_CONFIGS)  # what errors suggest
# small configs for tests and smoke runs (tiny-eva and tiny-convnext: timm trunks of models.towers.tiny)
for _name in ("tiny-rn", "tiny-clip", "tiny-vit", "tiny-vit-clip", "tiny-eva", "tiny-convnext"):
    CLIP_CONFIGS[_name] = json.loads(resources.files("famix").joinpath(f"assets/{_name}.json").read_text())

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
# Non-parameter entries that TorchScript archives carry next to the weights: OpenAI's scalars, and open_clip's
# causal text mask, which TorchScript saves although open_clip registers it as a non-persistent buffer.
_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def get_clip_config(name: str) -> dict:
    """Return a copy of the open_clip config for a known backbone name or a user ``.json`` config path."""
    if name in CLIP_CONFIGS:
        return copy.deepcopy(CLIP_CONFIGS[name])
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP config file {name} does not exist")
        return json.loads(path.read_text())
    raise ValueError(
        f"unknown CLIP backbone {name!r}; valid names: {', '.join(CLIP_CONFIGS)} or a path to a .json config"
    )


def packaged_weights(name: str) -> str | None:
    """Path of the weights shipped inside famix for backbone ``name`` (``assets/<name>.safetensors``, e.g.
    the pretrained "tiny-clip"), or None when the package has none."""
    path = resources.files("famix").joinpath(f"assets/{name}.safetensors")
    return str(path) if path.is_file() else None


def _is_tag(weights: str) -> bool:
    # Anything that looks like a path (separator or weight-file suffix) is treated as a file, never a tag.
    return not (
        os.path.exists(weights) or "/" in weights or os.sep in weights or weights.endswith(_WEIGHT_SUFFIXES)
    )


def _pretrained_cfg(name: str, tag: str) -> dict:
    for arch in (f"{name}-quickgelu", name):
        cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag)
        if cfg:
            return cfg
    return {}


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CLIP weights file {path} does not exist; pass a local OpenAI .pt archive, a .pt/.pth/.bin state "
        "dict or a .safetensors file (or an open_clip pretrained tag such as 'openai' when online)"
    )


def load_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read CLIP weights from a TorchScript archive, a torch state dict or a safetensors file.

    Returns open_clip-style keys with floating tensors in fp32. OpenAI archive extras are dropped, a
    ``state_dict``/``model`` nesting and ``module.`` prefixes (DataParallel/DDP) are removed.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise _missing(path)
    if path.endswith(".safetensors"):
        import safetensors.torch

        sd = safetensors.torch.load_file(path, device="cpu")
    elif _is_torchscript(path):
        # OpenAI ships fp16 TorchScript archives; their state_dict keys already match open_clip's CLIP.
        sd = dict(torch.jit.load(path, map_location="cpu").state_dict())
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file at all (torch raises KeyError, UnpicklingError, ...)
            raise ValueError(
                f"{path} is not CLIP weights famix can read ({type(e).__name__}): pass an OpenAI .pt, a "
                "state dict .pt/.bin, a .safetensors file, or an open_clip pretrained tag"
            ) from e
        if isinstance(sd, dict) and "model_state" in sd:
            raise ValueError(
                f"{path} is a famix or FAMix segmenter checkpoint, not CLIP weights: pass the CLIP weights "
                "it was trained from"
            )
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in sd.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if not isinstance(v, torch.Tensor) or k in _ARCHIVE_EXTRAS:
            continue
        out[k] = v.float() if v.is_floating_point() else v
    return out


def _is_torchscript(path: str) -> bool:
    # Same test torch uses internally: TorchScript zips carry a constants.pkl record, torch.save zips don't.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in zf.namelist())


def _resolve_weights(name: str, weights: str) -> str:
    """Map ``weights`` to a local file, downloading an open_clip pretrained tag when needed."""
    if not _is_tag(weights):
        if not os.path.isfile(weights):
            raise _missing(weights)
        return weights
    cfg = _pretrained_cfg(name, weights)
    if not cfg:
        arches = (f"{name}-quickgelu", name) if name in CLIP_CONFIGS else ()
        tags = list(dict.fromkeys(t for a in arches for t in open_clip.list_pretrained_tags_by_model(a)))
        raise FileNotFoundError(
            f"CLIP weights {weights!r} are neither an existing file nor an open_clip pretrained tag for "
            f"backbone {name!r} (tags: {', '.join(tags) or 'none'}); pass a local OpenAI .pt archive "
            "or a .safetensors file"
        )
    try:
        return open_clip.pretrained.download_pretrained(cfg)
    except Exception as e:  # network and hub errors come in many types
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise OSError(
            f"could not fetch open_clip weights {name}/{weights} ({type(e).__name__}: {first}); check the "
            f"network, or download the file elsewhere (e.g. {cfg.get('url') or cfg.get('hf_hub')}) and pass "
            "that path"
        ) from e


def check_weights_reachable(name: str, weights: str | None) -> None:
    """Before any work: an open_clip tag whose file is not in the local cache cannot load while
    ``HF_HUB_OFFLINE`` is set (one line saying so, rather than a failed download after the data checks).
    Offline, open_clip's own download step answers at once from the cache, so it is asked here."""
    if weights is None or not _is_tag(weights):
        return
    from huggingface_hub import constants

    cfg = _pretrained_cfg(name, weights)
    if not cfg or not constants.HF_HUB_OFFLINE:
        return
    try:
        open_clip.pretrained.download_pretrained(cfg)
    except Exception as e:  # not in the cache (the hub's and open_clip's errors come in many types)
        where = cfg.get("hf_hub") or cfg.get("url")
        raise FileNotFoundError(
            f"model.weights {weights!r} ({where}) is not in the local cache, and HF_HUB_OFFLINE is set: "
            "download it once with the network on (unset HF_HUB_OFFLINE), or pass a local weights file"
        ) from e


def _check_keys(model: CLIP, sd: dict[str, torch.Tensor], source: str, name: str) -> None:
    expected = model.state_dict()
    # BatchNorm counters are unused in eval and absent from some exports, so they may be missing.
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return

    def few(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")

    found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
    parts = [f"{len(v)} {what}: {few(v)}" for what, v in found if v]
    raise ValueError(
        f"CLIP weights {source} do not fit backbone config {name!r}: {'; '.join(parts)}. These weights "
        f"probably belong to another architecture; set the matching model.backbone ({', '.join(_REAL)}, ...)."
    )


def build_clip(
    name: str, weights: str | None = None, device="cpu", seed: int | None = None
) -> CLIP | CustomTextCLIP:
    """Build an open_clip ``CLIP`` (``CustomTextCLIP`` for configs with ``custom_text``: EVA02-CLIP) for
    backbone ``name`` (fp32, eval mode) and optionally load ``weights``.

    ``weights`` is a local file (OpenAI TorchScript ``.pt``, state dict ``.pt/.pth/.bin``, ``.safetensors``)
    or an open_clip pretrained tag such as ``"openai"`` (needs network or a warm cache). Without weights the
    model is randomly initialised, reproducibly when ``seed`` is given (the global RNG is left untouched).
    Stochastic depth of timm trunks (``timm_drop_path``, 0.1 in open_clip's ConvNeXt configs) is turned off:
    famix fine-tunes the last block as the paper does a ResNet's, without it.
    """
    cfg = get_clip_config(name)
    # Call the constructor directly (not open_clip.create_model) so user JSON configs need no registration.
    kwargs = {k: cfg[k] for k in ("embed_dim", "vision_cfg", "text_cfg")}
    kwargs["quick_gelu"] = cfg.get("quick_gelu", False)
    if "timm_model_name" in kwargs["vision_cfg"]:
        if kwargs["vision_cfg"]["timm_model_name"].startswith(TINY_TRUNK_PREFIX):
            from famix.models.towers import tiny  # noqa: F401  (registers famix's tiny trunks with timm)
        kwargs["vision_cfg"] = {**kwargs["vision_cfg"], "timm_drop_path": 0.0}
    cls = CustomTextCLIP if cfg.get("custom_text") else CLIP
    if seed is None:
        model = cls(**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(**kwargs)
    if weights is not None:
        path = _resolve_weights(name, weights)
        sd = load_clip_state_dict(path)
        _check_keys(model, sd, path, name)
        model.load_state_dict(sd, strict=False)
    return model.float().to(device).eval()


def weights_fingerprint(path: str | None) -> str:
    """Identify a weight source: ``"sha256:<16 hex>"`` of a file, ``"random"`` for None, else the tag."""
    if path is None:
        return "random"
    if _is_tag(path):
        return path
    if not os.path.isfile(path):
        raise _missing(path)
    return file_fingerprint(path)


def clip_preprocess_size(model: CLIP) -> int:
    """Input resolution the CLIP image tower was built for."""
    return input_size(model.visual)


def clip_normalization(
    name: str, weights: str | None, mean: list[float] | None = None, std: list[float] | None = None
) -> Normalization:
    """The input normalisation of backbone ``name`` with ``weights``, by what famix can know (a given mean /
    std is checked by ``config.check_values``):

    1. ``mean`` / ``std`` given (``model.mean`` / ``model.std``): those;
    2. an open_clip pretrained tag: its pretrained config's (e.g. Inception's 0.5 / 0.5 for ViT-L-14
       ``laion2b_s32b_b82k``; OpenAI's where the entry names none), read from open_clip's table offline;
    3. otherwise (a bare weights file, random weights): OpenAI's mean / std, the documented default.

    A tag's entry also names CLIP's resize (interpolation, resize mode); famix never resizes its inputs to
    CLIP's resolution, so it has no use for them.
    """
    if mean is not None:
        return Normalization(_floats(mean), _floats(std))
    cfg = _pretrained_cfg(name, weights) if weights is not None and _is_tag(weights) else {}
    if cfg:
        return Normalization(
            _floats(cfg.get("mean", OPENAI_NORMALIZATION.mean)),
            _floats(cfg.get("std", OPENAI_NORMALIZATION.std)),
        )
    return OPENAI_NORMALIZATION


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
