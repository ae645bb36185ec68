"""``famix app``: the page in a real headless Chromium (the system's browser and driver), and the model behind
it (``famix.stages.app.Session``) against slow, obvious loops and against ``famix adapt`` itself."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.demo.adaptation import adapt_settings
from famix.demo.run import demo_model
from famix.settings import AppSettings
from famix.stages import app
from famix.style.conditions import CONDITIONS, candidates, image_embeddings, rate, square_crops
from famix.world import render
from tests.test_report import _browser

pytest.importorskip("gradio")

QUICK_ADAPT = adapt_settings(quick=True, seed=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The quick demo's FAMix model (what `famix app --demo --quick` serves), trained once."""
    return demo_model(tmp_path_factory.mktemp("demo"), quick=True)


@pytest.fixture(scope="module")
def session(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted")
    return app.Session(demo, AppSettings(out=str(out), device="cpu", adapt=QUICK_ADAPT), say=lambda _: None)


def _street(domain: str = "night", seed: int = 12345) -> np.ndarray:
    image, _ = render(seed, domain, (96, 192))
    return np.asarray(image)  # [H, W, 3] uint8


def test_shares_equal_a_count_per_class(session):
    ids = np.random.default_rng(0).integers(0, 5, size=(37, 53)).astype(np.uint8)
    ids[:3] = 255  # ignore pixels count in the total, never as a class
    rows = session.shares(ids)
    expected = {
        session.labels.names[k]: 100.0 * sum(int(v == k) for v in ids.ravel()) / ids.size for k in range(5)
    }
    assert {name: share for name, _, share in rows} == pytest.approx(expected, abs=0)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    colours = session.labels.colors()
    assert all(
        colour == tuple(int(v) for v in colours[session.labels.names.index(n)]) for n, colour, _ in rows
    )


def test_square_crops_cover_the_image_as_a_loop_cuts_them():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 30, 75), generator=g, dtype=torch.uint8)
    crops = square_crops(images, 16)  # short side 16 -> 16 x 40: 3 squares at 0, 12, 24
    resized = torch.nn.functional.interpolate(
        images.float() / 255, size=(16, 40), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    assert crops.shape == (2, 3, 3, 16, 16)
    for i, start in enumerate((0, 12, 24)):
        assert torch.equal(crops[:, i], resized[..., start : start + 16])
    tall = square_crops(images.transpose(2, 3), 16)
    assert torch.allclose(tall, crops.transpose(3, 4), atol=1e-6)  # the same squares, read column-wise


def test_rate_is_clips_softmax_over_cosines():
    g = torch.Generator().manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    got = rate(image, texts, 100.0)
    for b in range(3):
        logits = [100.0 * sum(float(image[b, d] * texts[k, d]) for d in range(8)) for k in range(5)]
        top = max(logits)
        exp = [np.exp(v - top) for v in logits]
        assert got[b].tolist() == pytest.approx([e / sum(exp) for e in exp], rel=1e-5)


def test_candidates_put_the_users_words_first_once():
    assert candidates([" heavy snow ", "", "night"]) == ["heavy snow", "night"] + [
        c for c in CONDITIONS if c != "night"
    ]


def test_conditions_equal_clip_on_the_image_by_hand(session):
    image = _street("night")
    got = session.conditions(image, "heavy snow at night")
    clip = session.clip()
    texts = ["heavy snow at night", *CONDITIONS]
    assert list(got) == texts and sum(got.values()) == pytest.approx(1.0, abs=1e-5)
    size = clip.visual.image_size if isinstance(clip.visual.image_size, int) else clip.visual.image_size[0]
    norm = torch.tensor(session.cfg.mean).view(3, 1, 1), torch.tensor(session.cfg.std).view(3, 1, 1)
    crops = square_crops(torch.from_numpy(image).permute(2, 0, 1)[None], size)[0]
    with torch.no_grad():
        one = [torch.nn.functional.normalize(clip.encode_image(((c - norm[0]) / norm[1])[None]), dim=-1)[0]
               for c in crops]  # fmt: skip
    mean = torch.nn.functional.normalize(torch.stack(one).mean(0), dim=-1)
    assert torch.allclose(
        image_embeddings(clip, torch.from_numpy(image).permute(2, 0, 1)[None], session.clip_norm, size)[0],
        mean,
        atol=1e-6,
    )
    scale = float(clip.logit_scale.exp())
    by_hand = torch.softmax(scale * mean @ session._embed(texts).T, dim=-1)
    assert list(got.values()) == pytest.approx(by_hand.tolist(), abs=1e-6)


def test_the_page_adapts_as_famix_adapt_does(demo, session, tmp_path):
    """The adapt button's model is `famix adapt`'s, weight for weight; "after" segments with it."""
    path = session.adapt("snow")
    assert path == Path(session.settings.out) / "snow" / "latest.pt"
    s = QUICK_ADAPT
    argv = ["adapt", str(demo), "--target", "snow", "--out", str(tmp_path), "--data", session.data]
    argv += ["--weights", session.weights]  # the CLIP the page found: the package's tiny CLIP
    for f in dataclasses.fields(s):
        if getattr(s, f.name) is not None and f.name != "recipe":
            argv += [f"--{f.name.replace('_', '-')}", str(getattr(s, f.name))]
    main(argv)
    ours = torch.load(path, weights_only=True)["model_state"]
    theirs = torch.load(tmp_path / "snow" / "latest.pt", weights_only=True)["model_state"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    image = _street("snow")
    assert session.adapted[0] == "snow"
    assert np.array_equal(session.segment(image, network=session.adapted[1]), _ids_of(path, image))


def _ids_of(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    import famix

    return famix.load(checkpoint, device="cpu").predict(image)


def test_segment_equals_the_python_api(demo, session):
    image = _street("fog")
    assert np.array_equal(session.segment(image), _ids_of(demo, image))
    import famix

    flipped = famix.load(demo, device="cpu").predict(image, flip=True, scales=app.SCALES)
    assert np.array_equal(session.segment(image, flip=True, multiscale=True), flipped)


def test_a_model_without_source_data_says_what_to_pass(checkpoint, tmp_path):
    s = app.Session(checkpoint, AppSettings(out=str(tmp_path), device="cpu"), say=lambda _: None)
    assert s.data is None and "--data SPEC" in s.why_no_adapt
    with pytest.raises(ValueError, match="--data SPEC"):
        s.adapt("night")
    assert s.weights is None
    with pytest.raises(ValueError, match="--weights"):
        s.conditions(_street(), "night")
    assert not list(tmp_path.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_famix_app_demo_in_headless_chromium(demo, session, tmp_path):
    """`famix app --demo` on a free local port, driven by a real headless Chromium: the page loads, an image
    is uploaded, the overlay and a legend naming the classes appear, a description returns CLIP's scores."""
    found, why = _browser()
    if found is None:
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_report import open_headless

    port = _free_port()
    demo_out = demo.parents[2]  # <out>/seed0/<run>/latest.pt: the demo's folder, reused (no training)
    argv = ["app", "--demo", "--quick", "--demo-out", str(demo_out), "--out", str(tmp_path / "app")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "famix", *argv, "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        said = []
        for line in server.stdout:  # until it says its address (or exits: the loop ends)
            said.append(line)
            if "famix app: serving" in line:
                break
        url = f"http://127.0.0.1:{port}/"
        assert any(url in line for line in said), "".join(said)
        street = tmp_path / "street.png"
        Image.fromarray(_street("night")).save(street)
        browser = open_headless(street)  # any page first; then the app
        wait = WebDriverWait(browser, 600)  # a bound for a stuck page, not a speed check
        try:
            browser.get(url)
            upload = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#famix-image input[type=file]"))
            upload[0].send_keys(str(street))
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#famix-shares td.famix-class"))
            shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#famix-shares td.famix-class")]
            overlay = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#famix-overlay img"))
            width = wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", overlay[0]))
            browser.find_element(By.CSS_SELECTOR, "#famix-words textarea, #famix-words input").send_keys(
                "heavy snow at night"
            )
            browser.find_element(By.ID, "famix-rate").click()
            top = wait.until(
                lambda b: b.find_elements(By.CSS_SELECTOR, '#famix-scores [data-testid="label-output-value"]')
            )[0].text
            rows = [
                (
                    e.find_element(By.TAG_NAME, "dt").text,
                    float(e.find_element(By.TAG_NAME, "meter").get_attribute("value")),
                )
                for e in browser.find_elements(By.CSS_SELECTOR, "#famix-scores .confidence-set")
            ]
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait()
    ids = session.segment(np.asarray(Image.open(street).convert("RGB")))
    assert shown == [name for name, _, _ in session.shares(ids)]  # the page's legend names these classes
    assert width == 192  # the overlay at the image's width (the legend adds rows below it)
    rated = session.conditions(np.asarray(Image.open(street).convert("RGB")), "heavy snow at night")
    assert top == max(rated, key=rated.get)
    best = sorted(rated.items(), key=lambda kv: -kv[1])[: app.TOP]
    assert [name for name, _ in rows] == [name for name, _ in best]
    assert [p for _, p in rows] == pytest.approx([p for _, p in best], abs=1e-6)


def test_the_page_s_video_is_famix_predict_s(demo, session, tmp_path):
    """The video box gives the overlay video `famix predict` writes for the same file, frame for frame."""
    av = pytest.importorskip("av")
    from tests.test_video import _read_video, _write_video

    frames = [_street(d, seed=7) for d in ("day", "night", "fog")]
    src = tmp_path / "drive.mp4"
    _write_video(av, src, frames, fps=5)
    ours = session.video(str(src))
    main(["predict", str(demo), str(src), "--out", str(tmp_path / "predicted"), "--device", "cpu"])
    theirs = tmp_path / "predicted" / "drive_overlay.mp4"
    a, b = _read_video(av, ours)[0], _read_video(av, theirs)[0]
    assert len(a) == len(frames) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_famix_save_space_serves_the_app(demo, tmp_path):
    """`famix save RUN DIR --space`: the card still validates and carries the Space's fields; DIR's app.py,
    run as a Space runs it (`python app.py`, the address in GRADIO_SERVER_NAME / _PORT), serves the page."""
    import json
    import urllib.request

    from huggingface_hub import ModelCard

    folder = tmp_path / "space"
    main(["save", str(demo), str(folder), "--space"])
    card = ModelCard.load(folder / "README.md").data.to_dict()
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and card["library_name"] == "famix"
    assert (folder / "requirements.txt").read_text().startswith("famix[app]==")
    (folder / "app.py").write_text((folder / "app.py").read_text() + "# my change\n")
    with pytest.raises(SystemExit):  # an edited app.py is never replaced
        main(["save", str(demo), str(folder), "--space"])
    assert (folder / "app.py").read_text().endswith("# my change\n")
    main(["save", str(demo), str(folder), "--space", "--force"])
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    server = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        said = []
        for line in server.stdout:  # until Gradio says where it serves (or the process ends)
            said.append(line)
            if f"127.0.0.1:{port}" in line:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config") as response:
            config = json.loads(response.read())
    finally:
        server.terminate()
        server.wait()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"famix-image", "famix-overlay", "famix-shares", "famix-scores"} <= ids, "".join(said)
    assert config["title"] == "famix: space"
