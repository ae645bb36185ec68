"""Target texts for style mining: "<style word> <class name>" prompts, embedded by CLIP's text tower."""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch


def prompt(style: str, class_name: str | None) -> str:
    """The mining text of a patch: "<style> <class>", or "photo" for an ignore-dominant patch."""
    return "photo" if class_name is None else f"{style} {class_name}"


def draw_prompts(
    classes: torch.Tensor, class_names: Sequence[str], vocabulary: Sequence[str], generator: torch.Generator
) -> list[str]:
    """The mining texts of N patches: a style word drawn uniformly from ``vocabulary`` (with ``generator``)
    for each patch, with its class's words. classes: [N] class indices; any other value (the ignore index)
    -> "photo". ``class_names``: each class's words in prompts (a label set's ``prompts``: its names unless
    given)."""
    words = torch.randint(len(vocabulary), (classes.numel(),), generator=generator).tolist()
    return [
        prompt(vocabulary[w], class_names[k] if 0 <= k < len(class_names) else None)
        for w, k in zip(words, classes.tolist(), strict=True)
    ]


class TextEmbedder:
    """CLIP text embeddings of prompts averaged over the 80 OpenAI ImageNet templates, cached by prompt."""

    def __init__(
        self, clip_model: torch.nn.Module, templates=open_clip.OPENAI_IMAGENET_TEMPLATES, chunk: int = 256
    ):
        self.model, self.templates, self.chunk = clip_model, tuple(templates), chunk
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """prompts: N strings -> [N, D] unit-norm embeddings (templates averaged, then L2-normalised)."""
        missing = sorted(set(prompts) - self.cache.keys())
        if missing:
            texts = [t(p) for p in missing for t in self.templates]
            device = next(self.model.parameters()).device
            context = getattr(self.model, "context_length", 77)
            parts = [
                self.model.encode_text(open_clip.tokenize(texts[i : i + self.chunk], context).to(device))
                for i in range(0, len(texts), self.chunk)
            ]
            mean = torch.cat(parts).float().view(len(missing), len(self.templates), -1).mean(1)
            for p, e in zip(missing, torch.nn.functional.normalize(mean, dim=-1), strict=True):
                self.cache[p] = e
        return torch.stack([self.cache[p] for p in prompts])
