"""``famix eval --condition``: evaluation on the images restyled toward words by image-level PIN
(stages/evaluate.py). The restyle against a loop oracle; the identity (0 PIN steps) equal to the plain
evaluation, pixel for pixel (a ResNet, and a ViT on images its patch does not divide); a conditioned result
equal to a per-image loop of its parts; records and caches kept apart from plain ones; the robustness rows;
bad inputs refused before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from famix.config import ModelConfig
from famix.data.datasets import build_dataset
from famix.engine.checkpoint import load_checkpoint, load_segmenter, save_checkpoint
from famix.engine.evaluate import confusion_matrix
from famix.engine.inference import model_input
from famix.engine.results import format_robustness
from famix.models.build import build_segmenter
from famix.models.clip import build_clip, packaged_weights
from famix.models.towers import style_grid
from famix.settings import EvalSettings
from famix.stages import evaluate
from famix.style.image_pin import image_pin, image_restyle, image_stats
from famix.style.prompts import TextEmbedder

SPEC = "synthetic:night:3:7:size=36"  # 36 px: a ViT of patch 8 pads it to 40
QUIET = lambda _: None  # noqa: E731
CPU = {"device": "cpu", "amp": "off"}


def _checkpoint(folder, backbone: str):
    """A segmenter on the shipped tiny CLIP ``backbone`` (its weights, random head) saved as training does."""
    cfg = ModelConfig(
        backbone=backbone, weights=packaged_weights(backbone), output_stride=8 if "vit" in backbone else 16
    )
    path = folder / "best.pt"
    model = build_segmenter(cfg, seed=0)
    config = {"model": vars(cfg), "run": {"amp": "off"}}
    save_checkpoint(path, model_state=model.state_dict(), config=config, cur_itrs=0, best_score=0)
    return path


@pytest.fixture(scope="module")
def rn(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("rn"), "tiny-clip")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("vit"), "tiny-vit-clip")


@pytest.mark.parametrize("shape", [(1, 3, 5, 4), (3, 8, 7, 9), (2, 16, 2, 1)])
@pytest.mark.parametrize("relu", [True, False])
def test_image_restyle_matches_a_loop(shape, relu):
    g = torch.Generator().manual_seed(sum(shape))
    f = torch.randn(shape, generator=g) * 3 + 1  # [B, C, H, W]
    b, c = shape[:2]
    mu, sigma = torch.randn(b, c, generator=g), torch.rand(b, c, generator=g) + 0.1
    out = image_restyle(f, mu, sigma, relu)
    expected = torch.empty_like(f)
    for i in range(b):
        for k in range(c):
            x = f[i, k].double()
            m, s = x.mean(), (x.var(unbiased=True) + 1e-5).sqrt()  # patch_stats's std: unbiased + eps
            y = (x - m) / s * sigma[i, k] + mu[i, k]
            expected[i, k] = y.clamp_min(0) if relu else y
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # an image's own statistics give it back bit for bit (f >= 0 where the restyle takes a ReLU)
    own = f.relu() if relu else f
    assert torch.equal(image_restyle(own, *image_stats(own), relu), own)
    # channels_last stays channels_last
    nhwc = f.contiguous(memory_format=torch.channels_last)
    assert image_restyle(nhwc, mu, sigma, relu).is_contiguous(memory_format=torch.channels_last)


def _run(checkpoint, spec=SPEC, cache=None, **settings):
    results, _ = evaluate.run(
        checkpoint, [spec], EvalSettings(**CPU, **settings), cache=cache, progress=False, say=QUIET
    )
    return results[spec]


@pytest.mark.parametrize("backbone", ["rn", "vit"])
def test_a_condition_with_no_steps_is_the_plain_evaluation(backbone, request):
    checkpoint = request.getfixturevalue(backbone)
    plain = _run(checkpoint, batch_size=2)
    identity = _run(checkpoint, batch_size=2, condition="heavy snow", condition_steps=0)
    assert identity.confusion == plain.confusion
    assert identity.miou == plain.miou
    # with steps the images are restyled: the predictions move
    assert (
        _run(checkpoint, batch_size=2, condition="heavy snow", condition_steps=5).confusion != plain.confusion
    )


def test_a_conditioned_evaluation_equals_a_loop_over_images(rn):
    """Per image: its style map, image-level PIN toward the words' CLIP embedding (famix's recipe, through the
    checkpoint's own CLIP), the model on the image with that map restyled; the confusion matrices summed.
    The stage at batch 1 equals it pixel for pixel. A style does not depend on the batch it is mined in (the
    loss is summed over images): mined three at a time they equal the loop's up to float noise, and so does
    the stage at batch 3 (a random head has near-ties that such noise flips)."""
    steps, lr, text = 4, 0.2, "driving in heavy snow"
    model = load_segmenter(load_checkpoint(rn), device="cpu", channels_last=True)[0].eval()  # as the stage
    clip = build_clip("tiny-clip", packaged_weights("tiny-clip")).requires_grad_(False)
    embedding = TextEmbedder(clip)([text])[0]
    pool = style_grid(clip.visual)
    cm, moved, mined, maps = 0, False, [], []
    for image, label in build_dataset(SPEC):
        x = model_input(model, image[None])  # [1, 3, H, W]
        with torch.no_grad():
            f = model.style_features(x)
        styles = image_pin(clip.visual, f, embedding, pool, steps, lr, recipe="famix")
        with torch.no_grad():
            logits = model(x, lambda m, s=styles: image_restyle(m, s.mu, s.sigma, relu=True))
            moved |= not torch.equal(logits, model(x))
        cm = cm + confusion_matrix(logits.argmax(1), label[None], model.num_classes)
        mined.append(styles)
        maps.append(f)
    assert moved
    settings = {"condition": text, "condition_steps": steps, "condition_lr": lr}
    assert _run(rn, batch_size=1, **settings).confusion == cm.tolist()
    together = image_pin(clip.visual, torch.cat(maps), embedding, pool, steps, lr, recipe="famix")
    own = image_stats(torch.cat(maps))
    for i, styles in enumerate(mined):
        torch.testing.assert_close(together.mu[i], styles.mu[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(together.sigma[i], styles.sigma[0], rtol=0, atol=1e-5)
        assert (styles.mu[0] - own[0][i]).abs().max() > 1e-3  # mined: far from the image's own statistics
    batched = torch.tensor(_run(rn, batch_size=3, **settings).confusion)
    assert (batched - cm).abs().sum() <= 0.01 * cm.sum()


def test_conditioned_results_are_cached_apart_from_plain_ones(rn, tmp_path):
    rn = shutil.copy(rn, tmp_path / "best.pt")  # its cache beside it: best.eval-cache.json
    cache = evaluate.cache_path(rn)
    plain = _run(rn, cache=cache)
    snow = _run(rn, cache=cache, condition="snow", condition_steps=3)
    entries = json.loads(cache.read_text())
    records = sorted((e["run"] for e in entries.values()), key=lambda r: "condition" in r["settings"])
    assert len(records) == 2
    # the plain record is that of earlier famix versions: no condition, the checkpoint as its only input
    assert set(records[0]["settings"]) == {"data", "tta", "amp"}
    assert set(records[0]["inputs"]) == {"checkpoint"}
    assert records[1]["settings"]["condition"] == {
        "text": "snow", "recipe": "famix", "steps": 3, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
    }  # fmt: skip
    assert set(records[1]["inputs"]) == {"checkpoint", "clip weights"}
    plain_settings = EvalSettings(**CPU)
    assert evaluate.is_cached(rn, SPEC, plain_settings)
    for settings, cached in [
        ({"condition": "snow", "condition_steps": 3}, True),
        ({"condition": "snow", "condition_steps": 4}, False),
        ({"condition": "snow", "condition_steps": 3, "condition_lr": 0.2}, False),
        ({"condition": "fog", "condition_steps": 3}, False),
    ]:
        assert evaluate.is_cached(rn, SPEC, EvalSettings(**CPU, **settings)) is cached, settings
    # reused from the cache, each as computed
    assert _run(rn, cache=cache).confusion == plain.confusion
    assert _run(rn, cache=cache, condition="snow", condition_steps=3).confusion == snow.confusion


def test_robustness_rows_and_files(rn, tmp_path):
    report = tmp_path / "results.json"
    rows, names = evaluate.robustness(
        rn, [SPEC], ["snow", "night"], EvalSettings(**CPU, condition_steps=2), cache=None, progress=False,
        say=QUIET, report=report,
    )  # fmt: skip
    assert list(rows) == [None, "snow", "night"] and len(names) == 19
    assert rows[None][SPEC].confusion == _run(rn).confusion
    assert rows["snow"][SPEC].confusion == _run(rn, condition="snow", condition_steps=2).confusion
    plain_file = json.loads(report.read_text())
    assert "condition" not in plain_file
    for words in ("snow", "night"):
        written = json.loads((tmp_path / f"results.condition={words}.json").read_text())
        assert written["condition"]["text"] == words and written["condition"]["steps"] == 2
        assert written["datasets"][SPEC]["miou"] == pytest.approx(rows[words][SPEC].miou)
    table = format_robustness(rows).splitlines()
    assert table[0] == f"| condition | {SPEC} | mean |"
    assert table[2].startswith("| (plain) | ") and table[3].startswith("| snow | ")
    delta = rows["snow"][SPEC].miou - rows[None][SPEC].miou
    assert f"{rows['snow'][SPEC].miou:.2f} ({delta:+.2f})" in table[3]


@pytest.mark.parametrize("text", ["", "   ", "!?"])
def test_a_condition_without_words_is_refused_before_any_work(text, tmp_path):
    with pytest.raises(ValueError, match="names no condition: describe it in words"):
        EvalSettings(condition=text)
    missing = tmp_path / "nowhere.pt"  # never read: the words are refused first
    with pytest.raises(ValueError, match="names no condition"):
        evaluate.robustness(missing, [SPEC], ["snow", text])


def test_other_bad_conditions_are_refused_before_any_work(checkpoint, rn, tmp_path):
    with pytest.raises(ValueError, match="'snow' is given twice"):
        evaluate.robustness(tmp_path / "nowhere.pt", [SPEC], ["snow", "snow"])
    with pytest.raises(ValueError, match="would share a results file"):
        evaluate.robustness(tmp_path / "nowhere.pt", [SPEC], ["heavy snow", "Heavy-snow!"])
    with pytest.raises(ValueError, match="--condition-steps -1"):
        EvalSettings(condition="snow", condition_steps=-1)
    with pytest.raises(ValueError, match="--condition-lr nan"):
        EvalSettings(condition="snow", condition_lr=float("nan"))
    for call in (
        lambda: evaluate.run(tmp_path / "model.onnx", [SPEC], EvalSettings(condition="snow")),
        lambda: evaluate.robustness(tmp_path / "model.onnx", [SPEC], ["snow"]),
    ):
        with pytest.raises(ValueError, match="an ONNX file"):
            call()
    # a condition's results file over a file famix eval did not write: refused before the plain row
    (tmp_path / "r.condition=snow.json").write_text("notes")
    with pytest.raises(FileExistsError, match="not a results file written by `famix eval`"):
        evaluate.robustness(tmp_path / "nowhere.pt", [SPEC], ["snow"], report=tmp_path / "r.json")
    # a tiny-rn checkpoint has no CLIP weights to mine with: said before the plain row is evaluated
    cache = tmp_path / "cache.json"
    with pytest.raises(ValueError, match="--condition-weights FILE"):
        evaluate.robustness(checkpoint, [SPEC], ["snow"], EvalSettings(**CPU), cache=cache)
    assert not cache.exists()
    # given CLIP weights: used and fingerprinted
    other = _run(rn, condition="snow", condition_steps=0, condition_weights=packaged_weights("tiny-clip"))
    assert other.confusion == _run(rn).confusion
