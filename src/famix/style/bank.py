"""The style bank: mined (mu, sigma) per dominant class, stored as safetensors with its provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open

from famix.io import save_safetensors
from famix.normalization import OPENAI_NORMALIZATION

IGNORE_KEY = "ignore"
RUN = "run"  # the metadata key of the run record (engine.runs.KEY)


class PackedBank(NamedTuple):
    """A bank as four tensors on the training device, rows sorted by class (ignore last), for the mixer.

    mu, sigma: [N, C]; counts, offsets: [K + 1] long (class k's styles are rows offsets[k] ...
    offsets[k] + counts[k] - 1; row K of counts/offsets is the ignore bank).
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor


@dataclass
class StyleBank:
    """Styles grouped by class: ``styles[name] = (mu [N, C], sigma [N, C])`` for each class name in
    ``class_names`` (trainId order) plus ``"ignore"`` for ignore-dominant patches.

    ``metadata`` records how the bank was made; the bank owns its schema (JSON values, each optional, absent
    in banks of earlier famix and converted official ones):

    - ``run``: the run record that made it (``engine.runs``: what decides its styles; :attr:`record`);
    - ``batches_done``, ``images``: how far its pass got (:attr:`batches_done`, :meth:`mark_progress`);
    - ``famix_version``; ``description``: ``famix adapt``'s target words; ``source``: a converted bank's
      origin;
    - ``label_set``: the label set it was mined for (absent: its class names alone);
    - ``normalization``: ``{"mean", "std"}`` of the images it was mined from (absent: OpenAI's;
      :attr:`normalization`).

    :meth:`provenance` writes them, in the order every famix bank has had them (the header's bytes depend
    on it, and a bank's fingerprint on its bytes).
    """

    class_names: list[str]
    channels: int
    styles: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in [*self.class_names, IGNORE_KEY]:
            self.styles.setdefault(name, (torch.zeros(0, self.channels), torch.zeros(0, self.channels)))

    def add(self, mu: torch.Tensor, sigma: torch.Tensor, classes: torch.Tensor, ignore_index: int) -> None:
        """Append styles. mu, sigma: [N, C]; classes: [N] trainIds or ``ignore_index``."""
        mu, sigma, classes = mu.detach().float().cpu(), sigma.detach().float().cpu(), classes.cpu()
        for k, name in [*enumerate(self.class_names), (ignore_index, IGNORE_KEY)]:
            rows = classes == k
            if rows.any():
                old_mu, old_sigma = self.styles[name]
                self.styles[name] = (torch.cat([old_mu, mu[rows]]), torch.cat([old_sigma, sigma[rows]]))

    def counts(self) -> dict[str, int]:
        return {name: int(mu.shape[0]) for name, (mu, _) in self.styles.items()}

    def __len__(self) -> int:
        return sum(self.counts().values())

    def packed(self, device: torch.device | str = "cpu") -> PackedBank:
        """The bank as a :class:`PackedBank` on ``device``."""
        names = [*self.class_names, IGNORE_KEY]
        mu = torch.cat([self.styles[n][0] for n in names]).to(device)
        sigma = torch.cat([self.styles[n][1] for n in names]).to(device)
        counts = torch.tensor([self.styles[n][0].shape[0] for n in names], device=device)
        offsets = torch.cumsum(counts, 0) - counts
        return PackedBank(mu, sigma, counts, offsets)

    def save(self, path: str | Path) -> Path:
        """Write the bank atomically as safetensors (tensors ``mu/<class>``, ``sigma/<class>``)."""
        tensors = {}
        for name, (mu, sigma) in self.styles.items():
            if mu.shape[0]:
                tensors[f"mu/{name}"] = mu.contiguous()
                tensors[f"sigma/{name}"] = sigma.contiguous()
        meta = {
            "famix_style_bank": "1",
            "class_names": json.dumps(self.class_names),
            "channels": str(self.channels),
            "metadata": json.dumps(self.metadata),
        }
        return save_safetensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> StyleBank:
        """Read a bank written by ``save``; errors name the file and what is wrong with it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"style bank {path} not found: make one with `famix mine` or fix the path"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as e:
            raise ValueError(
                f"cannot read style bank {path} ({e}); it must be a famix safetensors bank "
                "(official pickle banks: `famix convert bank --trust-pickle`)"
            ) from e
        if meta.get("famix_style_bank") != "1":
            raise ValueError(f"{path} is a safetensors file but not a famix style bank (no famix metadata)")
        bank = cls(
            json.loads(meta["class_names"]), int(meta["channels"]), metadata=json.loads(meta["metadata"])
        )
        for key, value in tensors.items():
            kind, name = key.split("/", 1)
            mu, sigma = bank.styles[name]
            bank.styles[name] = (value, sigma) if kind == "mu" else (mu, value)
        return bank

    @staticmethod
    def provenance(
        record: dict,
        version: str,
        normalization: tuple | None = None,
        label_set: dict | None = None,
        description: str | None = None,
    ) -> dict:
        """The metadata of a new bank: its run ``record``, no batch done yet, the famix ``version``, the
        ``normalization`` (mean, std) of its images unless OpenAI's, the ``label_set`` (dict) if given, and
        ``famix adapt``'s target ``description``."""
        meta = {RUN: record, **({"description": description} if description is not None else {})}
        meta.update(batches_done=0, famix_version=version)
        if normalization is not None:
            mean, std = (tuple(float(v) for v in part) for part in normalization)
            if (mean, std) != OPENAI_NORMALIZATION:
                meta["normalization"] = {"mean": list(mean), "std": list(std)}
        if label_set is not None:
            meta["label_set"] = label_set
        return meta

    @property
    def record(self) -> dict | None:
        """The run record that made this bank (None: a bank of earlier famix, or a converted one)."""
        return self.metadata.get(RUN)

    @property
    def batches_done(self) -> int:
        """The source batches this bank holds the styles of (a pass resumes after them)."""
        return self.metadata.get("batches_done", 0)

    def mark_progress(self, batches_done: int, images: int) -> None:
        """Record how far the pass that fills this bank got: ``batches_done`` batches, ``images`` crops."""
        self.metadata["batches_done"] = batches_done
        self.metadata["images"] = images

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) its styles were mined under: the metadata's, else OpenAI's (banks mined with it,
        and banks of earlier famix and the official code, which normalised with it)."""
        stored = self.metadata.get("normalization")
        if stored is None:
            return OPENAI_NORMALIZATION
        return tuple(float(v) for v in stored["mean"]), tuple(float(v) for v in stored["std"])

    def _backbone(self) -> str:
        # famix banks keep their settings in a run record; converted official ones at the top level
        model = (self.record or {}).get("settings", {}).get("model") or self.metadata.get("model")
        return model.get("backbone", "?") if isinstance(model, dict) else self.metadata.get("backbone", "?")

    def check_compatible(
        self, channels: int, class_names: list[str] | tuple[str, ...], source: str = ""
    ) -> None:
        """Raise a clear error if this bank cannot restyle a model whose style map (ResNet layer1, ViT patch
        embeddings) has ``channels`` channels."""
        where = f" {source}" if source else ""
        if self.channels != channels:
            raise ValueError(
                f"style bank{where} has {self.channels}-channel styles but the model's style map has "
                f"{channels} channels (bank mined with backbone {self._backbone()}): mine a bank with the "
                "same backbone as the model (`famix mine`)"
            )
        if list(self.class_names) != list(class_names):
            raise ValueError(
                f"style bank{where} was mined for classes {self.class_names}, the model predicts "
                f"{list(class_names)}: mine a bank with the model's class list"
            )
