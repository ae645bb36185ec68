"""``famix diagnose``: its statistics against per-pixel and per-image loops, its mIoU against famix eval's,
and CLIP's ranking of conditions on scenes of the miniature world rendered in a known style."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.demo.run import demo_model
from famix.engine import ood
from famix.engine.checkpoint import load_checkpoint, load_segmenter, save_checkpoint
from famix.engine.conditions import load_clip, rank
from famix.engine.evaluate import evaluate_specs
from famix.engine.inference import model_input, predict_logits
from famix.models.clip import clip_normalization, packaged_weights, weights_fingerprint
from famix.stages import diagnose as dg
from famix.world import MINING_DOMAINS, render


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_model(tmp_path_factory.mktemp("demo"), quick=True)


def test_pixel_confidence_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g) * 3
    confidence, entropy, ids = dg.pixel_confidence(logits)
    for b in range(2):
        for y in range(3):
            for x in range(5):
                z = [float(logits[b, k, y, x]) for k in range(4)]
                e = [math.exp(v - max(z)) for v in z]
                p = [v / sum(e) for v in e]
                assert float(confidence[b, y, x]) == pytest.approx(max(p), rel=1e-6)
                assert int(ids[b, y, x]) == p.index(max(p))
                assert float(entropy[b, y, x]) == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)


def test_style_statistics_and_out_of_domain_score_equal_loops():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 4, 5, 6, generator=g)
    v = ood.style_vector(f)
    for b in range(3):
        for c in range(4):
            values = [float(f[b, c, y, x]) for y in range(5) for x in range(6)]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((u - mean) ** 2 for u in values) / len(values))
            assert float(v[b, c]) == pytest.approx(mean, abs=1e-6)
            assert float(v[b, 4 + c]) == pytest.approx(std, rel=1e-5)
    m, s = torch.randn(8, generator=g), torch.rand(8, generator=g)
    score = ood.ood_score(v, m, s)
    for b in range(3):
        z = [(float(v[b, d]) - float(m[d])) / (float(s[d]) + ood.EPS) for d in range(8)]
        assert float(score[b]) == pytest.approx(math.sqrt(sum(q * q for q in z) / 8), rel=1e-5)


def test_auroc_equals_the_pairwise_count():
    g = torch.Generator().manual_seed(2)
    confidence = torch.rand(40, generator=g).round(decimals=1).clamp(max=0.99)  # many ties
    correct = torch.rand(40, generator=g) < 0.6
    valid = torch.rand(40, generator=g) < 0.9
    right, wrong = dg.confidence_histograms(confidence, correct, valid)
    bins = [int(c * dg.BINS) for c in confidence.tolist()]
    r = [bins[i] for i in range(40) if valid[i] and correct[i]]
    w = [bins[i] for i in range(40) if valid[i] and not correct[i]]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in r for b in w)
    assert dg.auroc(right, wrong) == pytest.approx(wins / (len(r) * len(w)), abs=1e-12)
    assert dg.auroc(right, torch.zeros_like(wrong)) is None


def test_ranks_and_correlations():
    assert dg.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    d2 = sum((a - b) ** 2 for a, b in zip(dg.ranks(x), dg.ranks(y), strict=True))
    c = dg.correlations(x, y)
    assert c["spearman"] == pytest.approx(1 - 6 * d2 / (5 * 24), abs=1e-12) and c["n"] == 5
    assert c["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-12)
    assert dg.correlations([1.0, 2.0], [2.0, 1.0]) is None


def test_diagnose_equals_a_per_image_loop(demo, tmp_path):
    """Every per-image and per-set number of `famix diagnose` recomputed image by image; the mIoU is famix
    eval's on the same spec; the out-of-domain score is against the source images' statistics."""
    spec, source = "synthetic:night:3:10000:size=48", "synthetic:day:4:0:size=48"
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.asarray(render(900 + i, "fog", (40, 64))[0])).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    argv = ["diagnose", str(demo), "--data", spec, str(folder), "--source", source, "--source-images", "4"]
    main([*argv, "--out", str(out), "--words", "heavy fog", "--maps", "1", "--device", "cpu"])
    report = json.loads((out / "diagnose.json").read_text())
    model, cfg = load_segmenter(load_checkpoint(demo))
    from famix.data.datasets import build_dataset

    src = build_dataset(source, cfg.labels)
    with torch.no_grad():
        vectors = torch.stack([ood.style_vector(model.style_features(model_input(model, src[i][0][None])))[0]
                               for i in range(4)])  # fmt: skip
        mean, std = vectors.mean(0), vectors.std(0, correction=0)
        target = build_dataset(spec, cfg.labels)
        images = [target[i][0] for i in range(3)] + [
            torch.from_numpy(np.asarray(Image.open(folder / f"p{i}.png"))).permute(2, 0, 1) for i in range(2)
        ]
        rows = [*report["sets"][spec]["per_image"], *report["sets"]["photos"]["per_image"]]
        assert [r["name"] for r in rows] == ["00000", "00001", "00002", "p0", "p1"]
        for image, row in zip(images, rows, strict=True):
            x = model_input(model, image[None])
            p = torch.softmax(predict_logits(model, x), 1)[0]  # [K, H, W]
            assert row["confidence"] == pytest.approx(float(p.max(0).values.mean()), rel=1e-5)
            ent = -(p * p.clamp_min(1e-30).log()).sum(0)
            assert row["entropy"] == pytest.approx(float(ent.mean()), rel=1e-4)
            ids = p.argmax(0)
            shares = {cfg.labels.names[k]: round(100 * int((ids == k).sum()) / ids.numel(), 3)
                      for k in range(len(cfg.labels)) if (ids == k).any()}  # fmt: skip
            assert row["shares"] == shares
            v = ood.style_vector(model.style_features(x))[0]
            z = (v - mean) / (std + ood.EPS)
            assert row["ood"] == pytest.approx(float(z.pow(2).mean().sqrt()), rel=1e-4)
    evaluated = evaluate_specs(model, [spec], len(cfg.labels), labels=cfg.labels, progress=False)[spec]
    assert report["sets"][spec]["miou"] == pytest.approx(evaluated.miou, abs=1e-9)
    assert report["sets"][spec]["ood"] == pytest.approx(np.mean([r["ood"] for r in rows[:3]]), rel=1e-9)
    assert "miou" not in report["sets"]["photos"]  # no labels: no mIoU, no AUROC
    scores = report["sets"]["photos"]["conditions"]["scores"]
    assert (
        list(scores)[0] in scores and "heavy fog" in scores and sum(scores.values()) == pytest.approx(1, 1e-5)
    )
    assert (out / "maps" / "photos" / "p0_confidence.png").is_file()
    assert not (out / "maps" / "photos" / "p1_confidence.png").exists()  # --maps 1
    assert "famix adapt" in (out / "diagnose.md").read_text()


def test_source_reference_over_several_sources_equals_a_loop():
    """The reference spreads its picks over the sources' concatenation: the mean and spread of the picked
    images' statistics, against a loop over every index."""
    from famix.config import ModelConfig
    from famix.data.datasets import build_dataset
    from famix.models.build import build_segmenter

    model = build_segmenter(ModelConfig(backbone="tiny-clip", weights=packaged_weights("tiny-clip")), seed=0)
    a, b = build_dataset("synthetic:day:5:0:size=40"), build_dataset("synthetic:desert:4:1:size=40")
    assert ood.spread_picks(9, 4) == [0, 3, 5, 8] and ood.spread_picks(3, 8) == [0, 1, 2]
    mean, std = ood.source_reference(model.eval(), [a, b], count=4)
    items = [a[i][0] for i in range(5)] + [b[i][0] for i in range(4)]
    with torch.no_grad():
        rows = [ood.style_vector(model.style_features(model_input(model, items[i][None])))[0].tolist()
                for i in (0, 3, 5, 8)]  # fmt: skip
    for d in range(len(rows[0])):
        column = [r[d] for r in rows]
        m = sum(column) / 4
        assert float(mean[d]) == pytest.approx(m, rel=1e-5, abs=1e-7)
        spread = math.sqrt(sum((c - m) ** 2 for c in column) / 4)
        assert float(std[d]) == pytest.approx(spread, rel=1e-4, abs=1e-6)


def test_training_stores_the_reference_and_diagnose_reads_it(demo, tmp_path):
    """`famix train` stores the source's style reference in the checkpoint (equal to computing it after
    training from the source data); diagnose without --source uses it and scores as a loop against it; a
    checkpoint without it falls back to the source data (the same numbers); a saved folder keeps it exactly;
    with the source data unreadable, the stored reference still gives the score."""
    from famix.data.datasets import build_dataset
    from famix.engine import pretrained

    ckpt = load_checkpoint(demo)
    entry = ckpt[ood.KEY]
    model, cfg = load_segmenter(ckpt, channels_last=True)  # as trained (train.channels_last) and diagnosed
    spec = ckpt["config"]["data"]["train"]
    source = build_dataset(spec, cfg.labels)
    n, k = len(source), ood.REFERENCE_IMAGES
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})  # k images spread over the source
    with torch.no_grad():  # a loop over the picked images, not the code under test
        rows = [
            ood.style_vector(model.style_features(model_input(model, source[i][0][None])))[0] for i in picks
        ]
    v = torch.stack(rows)
    mean, std = v.mean(0), v.std(0, correction=0)
    assert len(picks) == entry["images"] == k < n
    assert torch.allclose(entry["mean"], mean, rtol=1e-6, atol=1e-7)
    assert torch.allclose(entry["std"], std, rtol=1e-6, atol=1e-7)

    def diagnose(path, out):
        return dg.run(path, [target], dg.DiagnoseSettings(maps=0, device="cpu"), out, False, say=str)

    target = "synthetic:fog:2:10000:size=48"
    stored = diagnose(demo, tmp_path / "a")
    assert stored["reference"] == "checkpoint" and stored["source"] == spec
    image = build_dataset(target, cfg.labels)[0][0]
    with torch.no_grad():
        v = ood.style_vector(model.style_features(model_input(model, image[None])))
    expected = float(ood.ood_score(v, mean, std)[0])
    assert stored["sets"][target]["per_image"][0]["ood"] == pytest.approx(expected, rel=1e-6)
    save_checkpoint(tmp_path / "old.pt", **{k: v for k, v in ckpt.items() if k != ood.KEY})  # older famix
    computed = diagnose(tmp_path / "old.pt", tmp_path / "b")
    assert computed["reference"] == "source data"
    assert computed["sets"][target]["ood"] == pytest.approx(stored["sets"][target]["ood"], rel=1e-6)
    folder = pretrained.write_folder(ckpt, tmp_path / "saved", "demo", [], None, False)
    back = pretrained.read_folder(folder)[ood.KEY]
    assert torch.equal(back["mean"], entry["mean"]) and torch.equal(back["std"], entry["std"])
    moved = {**ckpt["config"], "data": {**ckpt["config"]["data"], "train": "gta5:/nowhere/gta5:train"}}
    save_checkpoint(tmp_path / "moved.pt", **{**ckpt, "config": moved})  # its source not on this machine
    gone = diagnose(tmp_path / "moved.pt", tmp_path / "c")
    assert gone["reference"] == "checkpoint" and gone["sets"][target]["ood"] == stored["sets"][target]["ood"]


@pytest.mark.parametrize("style", ["sepia", "neon", "desert"])
def test_the_ranking_names_a_mining_word_style(style):
    """Scenes of the miniature world rendered in a mining-word style, ranked by the shipped tiny CLIP among
    every mining word and the standard conditions: the style ranks first."""
    weights = packaged_weights("tiny-clip")
    clip = load_clip("tiny-clip", weights, "cpu")
    images = [
        torch.from_numpy(np.asarray(render(700 + i, style, (96, 96))[0])).permute(2, 0, 1) for i in range(6)
    ]
    ranking = rank(clip, images, clip_normalization("tiny-clip", weights), MINING_DOMAINS)
    assert ranking.top == style, ranking.scores


def test_adapt_target_auto_adapts_to_what_clip_ranks_first_and_records_it(demo, tmp_path):
    """`famix adapt --target auto --target-data FOLDER`: the target is the condition the ranking of those
    images puts first; its words and scores are in the run record of the adapted checkpoint."""
    from famix.stages.adapt import slug

    folder = tmp_path / "target"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.asarray(render(800 + i, "night", (64, 96))[0])).save(folder / f"n{i}.png")
    weights = packaged_weights("tiny-clip")
    clip = load_clip("tiny-clip", weights, "cpu")
    images = [torch.from_numpy(np.asarray(Image.open(p))).permute(2, 0, 1) for p in sorted(folder.iterdir())]
    ranking = rank(clip, images, clip_normalization("tiny-clip", weights))
    assert ranking.top == "night"
    out = tmp_path / "adapted"
    quick = ["--iterations", "2", "--steps", "2", "--images", "4", "--crop", "32", "--batch-size", "2"]
    argv = ["adapt", str(demo), "--target", "auto", "--target-data", str(folder)]  # the model's CLIP weights
    main([*argv, "--data", "synthetic:day:4:0:size=48", "--out", str(out), "--device", "cpu", *quick])
    ckpt = torch.load(out / slug("night") / "latest.pt", weights_only=True)
    assert ckpt["run"]["inputs"]["clip weights"] == weights_fingerprint(weights)  # named by its checkpoint
    auto = ckpt["run"]["inputs"]["auto target"]
    assert auto["data"] == "target" and auto["images"] == 4  # the folder by its name only
    expected = {w: round(p, 4) for w, p in list(ranking.scores.items())[:5]}
    assert auto["scores"] == pytest.approx(expected, abs=2e-4) and list(auto["scores"])[0] == "night"
    with pytest.raises(SystemExit):  # --target-data without --target auto: refused before any work
        main([*argv[:2], "--target", "night", "--target-data", str(folder),
              "--data", "synthetic:day:4:0:size=48", "--out", str(tmp_path / "other")])  # fmt: skip
    assert not (tmp_path / "other").exists()


def test_the_suggestion_is_a_word_some_target_set_ranks_first():
    """Each set votes (by its images) for its first word; sets that look like the source do not vote."""

    def ranked(*words):
        return {"scores": {w: 1.0 / (k + 2) for k, w in enumerate(words)}}

    report = {
        "source_conditions": ranked("day", "sunny"),
        "sets": {
            "day": {"images": 300, "conditions": ranked("day", "sunny")},
            "night": {"images": 10, "conditions": ranked("night", "sunny")},
            "fog": {"images": 20, "conditions": ranked("fog", "sunny")},
        },
    }
    got = dg.suggestion("m.pt", report, "synthetic:day")
    assert got["target"] == "fog" and got["votes"] == {"night": 10, "fog": 20}
    assert '--target "fog" --data synthetic:day' in got["command"]
    report["sets"] = {"day": report["sets"]["day"]}
    assert dg.suggestion("m.pt", report, None)["target"] is None
