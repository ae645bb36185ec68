"""Sharing a model: saved folders whose model card huggingface_hub validates (license, base model, datasets,
the papers, one model-index result per dataset, protocol and test-time setting, evaluations run from
Python included), with no path of this machine in any file of them; Hub ids in every spelling; Hub loads
fetching only famix's files (a stub Hub on 127.0.0.1); pushes reaching huggingface_hub's upload with a card
written for the repository."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import famix
from famix.cli import main
from famix.engine import hub, pretrained
from famix.style.bank import StyleBank
from famix.world.synthetic import render
from tests.cli_errors import one_line
from tests.test_api import hub_cache

huggingface_hub = pytest.importorskip("huggingface_hub")
SIZE = 48


def write_scenes(root: Path) -> None:
    """A ``folder:`` dataset of the miniature world: ROOT/images|labels/{train,val}/sN.png (trainIds)."""
    for split, n, offset in (("train", 6, 0), ("val", 2, 500)):
        for i in range(n):
            image, label = render(offset + i, "day", (SIZE, SIZE))
            for kind, array in (("images", image), ("labels", label)):
                path = root / kind / split / f"s{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run made with absolute paths everywhere (CLIP weights file, folder data, bank, run folder),
    evaluated four ways on one dataset: three by `famix eval` (plain, flip, the mmseg protocol), one from
    Python (scale 0.5), and adapted by `famix adapt`."""
    root = tmp_path_factory.mktemp("share").resolve()
    data, out = root / "mine_idx", root / "runs" / "mine"
    write_scenes(data)
    weights = root / "weights" / "tiny-clip.safetensors"
    weights.parent.mkdir()
    shutil.copyfile(str(resources.files("famix").joinpath("assets/tiny-clip.safetensors")), weights)
    spec = f"folder:{data}:val"
    overrides = ["model.backbone=tiny-clip", f"model.weights={weights}", f"data.train=folder:{data}:train"]
    overrides += [f"data.val=[{spec}]", "data.crop=32", "mine.crop=32", "mine.steps=1", "mine.max_images=4"]
    overrides += [f"style.bank={out / 'bank.safetensors'}", f"train.out={out}", "train.iterations=2"]
    main(["mine", "-c", "tiny", *overrides])
    main(["train", "-c", "tiny", *overrides])
    ckpt = out / "latest.pt"
    for extra in ([], ["--flip"], ["--protocol", "mmseg"]):
        main(["eval", str(ckpt), "--data", spec, "--workers", "0", *extra])
    by_python = famix.evaluate(famix.load(ckpt, device="cpu"), [spec], scale=0.5, progress=False)[spec]
    adapt = ["--iterations", "2", "--steps", "2", "--crop", "32", "--batch-size", "2", "--device", "cpu"]
    main(["adapt", str(ckpt), "--target", "at night", "--data", f"folder:{data}:train", "--out",
          str(root / "adapted"), "--weights", str(weights), *adapt])  # fmt: skip
    (adapted,) = (root / "adapted").glob("*/latest.pt")
    return {"root": root, "ckpt": ckpt, "spec": spec, "by_python": by_python, "adapted": adapted}


def machine_paths(folder: Path) -> list[str]:
    """Every string in the files of ``folder`` that is an existing path of this machine ("/..." with more than
    the root), each safetensors file's header read as text (its tensors are not text)."""
    found = []
    for path in sorted(folder.iterdir()):
        raw = path.read_bytes()
        if path.suffix == ".safetensors":
            (n,) = struct.unpack("<Q", raw[:8])
            raw = raw[8 : 8 + n]
        text = raw.decode("utf-8", "replace")
        for m in re.findall(r"(?<![\w:/.\\-])/[^\s\"'`|()\[\]<>,;]+", text):
            if m.rstrip("/.") and os.path.exists(m.rstrip(".")) and m.rstrip("/") != "":
                found.append(f"{path.name}: {m}")
    return found


def test_a_saved_folder_holds_no_path_of_this_machine(run, tmp_path, monkeypatch):
    root, spec = run["root"], run["spec"]
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "shared"
    main(["save", str(run["ckpt"]), str(folder), "--bank"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "bank.safetensors", "config.json", "model.safetensors"
    ]  # fmt: skip
    for path in folder.iterdir():  # bytes of every file: not the run's folders, not this machine's home
        for where in {str(root), os.path.realpath(root), str(Path.home()), str(tmp_path)}:
            assert where.encode() not in path.read_bytes(), (path.name, where)
    assert machine_paths(folder) == []
    # the rule: inside the run folder, relative to it (the run folder by its name); else the last part
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["data"]["train"] == "folder:mine_idx:train"
    assert config["config"]["data"]["val"] == ["folder:mine_idx:val"]
    assert config["config"]["model"]["weights"] == "tiny-clip.safetensors"
    assert (
        config["config"]["style"]["bank"] == "bank.safetensors" and config["config"]["train"]["out"] == "mine"
    )
    assert config["run"]["settings"]["data"]["train"] == "folder:mine_idx:train"
    assert {r["data"] for r in config["evaluations"]} == {"folder:mine_idx:val"}
    assert len(config["evaluations"]) == 4  # famix eval's three and famix.evaluate's one
    # the bank is a copy with its record's paths reduced alike, its styles as they were
    original, copy = (
        StyleBank.load(root / "runs" / "mine" / "bank.safetensors"),
        StyleBank.load(folder / "bank.safetensors"),
    )
    assert copy.record["settings"]["data"]["train"] == "folder:mine_idx:train"
    assert original.record["settings"]["data"]["train"] == f"folder:{root / 'mine_idx'}:train"
    assert all(torch.equal(copy.styles[k][0], v[0]) for k, v in original.styles.items())
    # the folder still loads, evaluates and re-saves (with its bank, the copy of the one it was trained with)
    a, b = famix.load(run["ckpt"], device="cpu"), famix.load(folder, device="cpu")
    image = render(7, "fog", (SIZE, SIZE))[0]
    assert np.array_equal(a.predict(image), b.predict(image))
    main(["eval", str(folder), "--data", spec, "--workers", "0"])
    main(["save", str(folder), str(tmp_path / "again"), "--bank"])
    assert (tmp_path / "again" / "bank.safetensors").read_bytes() == (
        folder / "bank.safetensors"
    ).read_bytes()
    assert machine_paths(tmp_path / "again") == []


def test_the_model_card_validates_with_one_row_per_protocol_and_setting(run, tmp_path):
    from huggingface_hub import ModelCard

    folder = famix.save_pretrained(run["ckpt"], tmp_path / "shared")
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["library_name"] == "famix"
    assert data["pipeline_tag"] == "image-segmentation" and "arxiv:2311.17922" in data["tags"]
    assert "arxiv:2212.03241" not in data["tags"]  # not adapted
    assert data["datasets"] == ["mine_idx"]  # the training source and the evaluation set, by name
    assert "base_model" not in data  # tiny-clip: famix's own weights, on no Hub
    results = card.data.eval_results
    assert len(results) == 4 and len({r.unique_identifier for r in results}) == 4
    assert {r.dataset_type for r in results} == {"mine_idx"} and len({r.metric_config for r in results}) == 4
    configs = {r.metric_config: r.metric_value for r in results}
    files = sorted(run["ckpt"].parent.glob("latest.eval.*.json"))
    for path in files:  # each `famix eval` result, under its protocol and setting
        result = json.loads(path.read_text())
        (miou,) = [r["miou"] for r in result["datasets"].values()]
        flip, protocol = result["test_time"]["flip"], result["protocol"]
        assert configs[f"protocol {protocol}, {'flip' if flip else 'plain'}, fp32"] == round(miou, 2)
    assert configs["protocol paper, scale 0.5, fp32"] == round(run["by_python"].miou, 2)  # from Python
    mmseg = [r for r in results if "mmseg" in r.metric_config]
    assert len(mmseg) == 1 and "window" not in mmseg[0].metric_config and "flip" not in mmseg[0].metric_config
    index = card.data.to_dict()["model-index"]  # written back by huggingface_hub: still four results
    assert len(index[0]["results"]) == 4
    text = card.text
    assert "github.com/famix" not in card.content and "pip install famix" in text
    assert 'famix.load("shared")' in text and "famix push shared OWNER/NAME" in text
    assert "| data | protocol | test-time setting | mIoU (%) |" in text
    assert "| `folder:mine_idx:val` | mmseg | plain, fp32 |" in text


def test_evaluations_of_a_changed_model_are_its_own(run, tmp_path):
    """save_pretrained of a loaded model lists the file's evaluations while its weights are the file's, and
    only its own (from Python) once they are changed."""
    model, spec = famix.load(run["ckpt"], device="cpu"), run["spec"]
    same = famix.save_pretrained(model, tmp_path / "same")
    assert len(json.loads((same / "config.json").read_text())["evaluations"]) == 4
    with torch.no_grad():
        model.network.classifier.classifier[-1].bias.add_(torch.arange(19.0))
    changed = famix.save_pretrained(model, tmp_path / "changed")
    assert json.loads((changed / "config.json").read_text())["evaluations"] == []
    miou = model.evaluate(spec, progress=False, flip=True)[spec].miou
    (row,) = json.loads((famix.save_pretrained(model, tmp_path / "changed2") / "config.json").read_text())[
        "evaluations"
    ]
    assert row["test_time"] == {"flip": True} and row["miou"] == miou and row["data"] == "folder:mine_idx:val"


def test_an_adapted_model_cites_poda(run, tmp_path):
    from huggingface_hub import ModelCard

    folder = famix.save_pretrained(run["adapted"], tmp_path / "night")
    card = ModelCard.load(folder / "README.md")
    assert {"arxiv:2311.17922", "arxiv:2212.03241", "poda"} <= set(card.data.tags)
    assert "Adapted by [PODA](https://arxiv.org/abs/2212.03241)" in card.text
    assert machine_paths(folder) == []


def test_the_base_model_is_the_clip_weights_hub_id_where_known():
    assert pretrained.clip_hub_id("RN50", "openai") == "timm/resnet50_clip.openai"  # an open_clip tag
    # a file: OpenAI's RN50.pt, whose SHA-256 its download URL names (afeb0e10...), by its fingerprint
    assert pretrained.clip_hub_id("RN50", "sha256:afeb0e10f9e5a86d") == "timm/resnet50_clip.openai"
    assert pretrained.clip_hub_id("RN101", "sha256:afeb0e10f9e5a86d") is None  # RN50's file, not RN101's
    assert pretrained.clip_hub_id("ViT-L-14", "laion2b_s32b_b82k") == "laion/CLIP-ViT-L-14-laion2B-s32B-b82K"
    for weights in ("random", None, "sha256:0123456789abcdef"):
        assert pretrained.clip_hub_id("RN50", weights) is None
    assert pretrained.clip_hub_id("tiny-clip", "sha256:0123456789abcdef") is None
    ckpt = {"config": {"model": {"backbone": "RN50", "weights": "RN50.pt"}}, "run": {"inputs": {}}}
    ckpt["run"]["inputs"]["clip weights"] = "sha256:afeb0e10f9e5a86d"
    assert pretrained.card_metadata("m", ckpt, [])["base_model"] == "timm/resnet50_clip.openai"


def test_shareable_paths_follow_one_rule():
    run = "/home/u/runs/a"
    assert pretrained.shareable_path("/home/u/runs/a/bank.safetensors", run) == "bank.safetensors"
    assert pretrained.shareable_path("/home/u/runs/a/sub/b.safetensors", run) == "sub/b.safetensors"
    assert pretrained.shareable_path("/home/u/runs/a", run) == "a"
    assert pretrained.shareable_path("/home/u/weights/RN50.pt", run) == "RN50.pt"
    assert pretrained.shareable_path("C:\\Users\\u\\RN50.pt") == "RN50.pt"
    spec = "acdc:night:/data/acdc:/home/u/lists/val.txt:mismatch=skip"
    assert pretrained.shareable_spec(spec, run) == "acdc:night:acdc:val.txt:mismatch=skip"
    assert (
        pretrained.shareable_spec("folder:/d/mine_idx:train:labels=/d/gt", run)
        == "folder:mine_idx:train:labels=gt"
    )
    assert pretrained.shareable_spec("synthetic:day:8:size=48", run) == "synthetic:day:8:size=48"
    given = {
        "a": ["cityscapes:/d/cs:val", "hf:owner/name", "https://x.org/a/b", "/etc/x.yaml", "road/sidewalk"]
    }
    assert pretrained.shareable(given) == {
        "a": ["cityscapes:cs:val", "hf:owner/name", "https://x.org/a/b", "x.yaml", "road/sidewalk"]
    }


def test_hub_ids_in_every_spelling(run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    folder = famix.save_pretrained(run["ckpt"], tmp_path / "shared")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path, folder, "owner/name")))
    monkeypatch.chdir(tmp_path)
    image = render(9, "fog", (SIZE, SIZE))[0]
    want = famix.load(run["ckpt"], device="cpu").predict(image)
    for source in ("hf:owner/name", "hf-hub:owner/name", "owner/name", "hf-hub:owner/name@main"):
        assert hub.is_hub_id(source) and hub.parse_id(source)[0] == "owner/name"
        assert np.array_equal(famix.load(source, device="cpu").predict(image), want), source
    main(["eval", "owner/name", "--data", run["spec"], "--workers", "0"])  # bare, through the CLI
    assert (tmp_path / "owner--name.eval-cache.json").is_file()
    Image.fromarray(image).save(tmp_path / "fog.png")
    main(["predict", "hf-hub:owner/name", "fog.png", "--out", "p", "--outputs", "trainid"])
    assert np.array_equal(np.array(Image.open("p/fog_trainid.png")), want)
    # a bare id that is also a local folder is the folder: local wins
    model = famix.load(run["ckpt"], device="cpu")
    with torch.no_grad():
        model.network.classifier.classifier[-1].bias.add_(torch.arange(19.0))
    model.save_pretrained(tmp_path / "owner" / "name")
    assert not hub.is_hub_id("owner/name") and not hub.is_hub_id(Path("hf-owner/name"))
    assert np.array_equal(famix.load("owner/name", device="cpu").predict(image), model.predict(image))
    assert np.array_equal(famix.load("hf:owner/name", device="cpu").predict(image), want)
    # a missing bare id says it was read as a Hub id; a missing checkpoint file stays a missing file
    capsys.readouterr()
    err = one_line(capsys, "eval", "owner/missing", "--data", run["spec"])
    assert (
        "owner/missing (no such local path; read as a Hub model id) is not in the Hugging Face cache" in err
    )
    err = one_line(capsys, "eval", "runs/best.pt", "--data", run["spec"])
    assert "checkpoint runs/best.pt not found" in err


def stub_hub(repo: str, files: dict[str, bytes]) -> tuple[ThreadingHTTPServer, list[str]]:
    """A Hugging Face Hub on 127.0.0.1 serving model ``repo`` (its info, file list and files, as the Hub's
    API does for huggingface_hub's snapshot_download); returns the server and the paths requested."""
    commit, requested = "0" * 39 + "1", []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def reply(self, body: bytes, headers: dict, code: int = 200) -> None:
            self.send_response(code)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            requested.append(path)
            as_json = {"Content-Type": "application/json"}
            if path.startswith(f"/api/models/{repo}/revision/"):
                info = {"id": repo, "sha": commit, "siblings": [{"rfilename": n} for n in files]}
                return self.reply(json.dumps(info).encode(), as_json)
            if path.startswith(f"/api/models/{repo}/tree/"):
                tree = [
                    {"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for n, b in files.items()
                ]
                return self.reply(json.dumps(tree).encode(), as_json)
            name = path.partition(f"/{repo}/resolve/")[2].partition("/")[2]
            if name in files:
                etag = f'"{hashlib.sha1(files[name]).hexdigest()}"'
                return self.reply(files[name], {"X-Repo-Commit": commit, "ETag": etag})
            return self.reply(b"{}", as_json, 404)

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requested


def test_a_hub_load_fetches_only_the_files_famix_reads(run, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder = famix.save_pretrained(run["ckpt"], tmp_path / "shared")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files |= {"big.bin": bytes(2 << 20), "extras/notes.txt": b"not famix's"}  # a big file famix never reads
    server, requested = stub_hub("owner/big", files)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    try:
        model = famix.load("hf:owner/big", device="cpu")
    finally:
        server.shutdown()
    fetched = {p.rpartition("/resolve/")[2].partition("/")[2] for p in requested if "/resolve/" in p}
    assert fetched == {"model.safetensors", "config.json", "README.md"}  # and a bank, were there one
    (snapshot,) = (tmp_path / "cache" / "models--owner--big" / "snapshots").iterdir()
    assert sorted(p.name for p in snapshot.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    image = render(3, "fog", (SIZE, SIZE))[0]
    assert np.array_equal(model.predict(image), famix.load(run["ckpt"], device="cpu").predict(image))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # and offline, from the cache it left
    assert np.array_equal(famix.load("hf:owner/big", device="cpu").predict(image), model.predict(image))


@pytest.fixture
def uploads(monkeypatch):
    """huggingface_hub's upload calls, recorded (each folder's files read at the call, as they went up)."""
    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kw):
        calls.append({"create": repo_id, "private": private})

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, **kw):
        files = {p.relative_to(folder_path).as_posix(): p.read_bytes() for p in Path(folder_path).rglob("*")}
        calls.append({"repo": repo_id, "revision": revision, "files": {k: v for k, v in files.items() if v}})

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", lambda self, *a, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_every_push_uploads_a_card_written_for_its_repo(run, tmp_path, uploads, capsys):
    from huggingface_hub import ModelCard

    ckpt = run["ckpt"]
    main(["push", str(ckpt), "owner/tiny", "--private"])
    assert "https://huggingface.co/owner/tiny" in capsys.readouterr().out
    model = famix.load(ckpt, device="cpu")
    assert model.push_to_hub("hf:owner/loaded") == "https://huggingface.co/owner/loaded"
    assert (
        famix.push(model, "hf-hub:owner/again", revision="v1") == "https://huggingface.co/owner/again/tree/v1"
    )
    folder = famix.save_pretrained(ckpt, tmp_path / "shared")
    (folder / "app.py").write_text("print('a Space')\n")  # a file of the user's: pushed with the folder
    main(["push", str(folder), "owner/folder"])
    pushes = [c for c in uploads if "repo" in c]
    assert uploads[0] == {"create": "owner/tiny", "private": True}
    assert [c["create"] for c in uploads if "create" in c] == [
        "owner/tiny",
        "owner/loaded",
        "owner/again",
        "owner/folder",
    ]
    assert [(c["repo"], c["revision"]) for c in pushes] == [
        ("owner/tiny", None), ("owner/loaded", None), ("owner/again", "v1"), ("owner/folder", None)
    ]  # fmt: skip
    expected = {"README.md", "config.json", "model.safetensors"}
    assert [set(c["files"]) for c in pushes] == [expected] * 3 + [expected | {"app.py"}]
    for c, ref in zip(
        pushes, ["hf:owner/tiny", "hf:owner/loaded", "hf:owner/again@v1", "hf:owner/folder"], strict=True
    ):
        card = c["files"]["README.md"].decode()
        assert f'famix.load("{ref}")' in card and "OWNER" not in card and c["repo"].split("/")[1] in card
        written = json.loads(c["files"]["config.json"])["famix"]["card"]  # the card the config says it wrote
        assert written == f"sha256:{hashlib.sha256(c['files']['README.md']).hexdigest()[:16]}"
        (tmp_path / "card.md").write_bytes(c["files"]["README.md"])
        assert ModelCard.load(tmp_path / "card.md").data.license == "mit"
    assert len(json.loads(pushes[0]["files"]["config.json"])["evaluations"]) == 4
    # a card edited by hand goes up as it is
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Mine\n")
    famix.push(folder, "owner/edited")
    assert uploads[-1]["files"]["README.md"] == b"---\nlicense: apache-2.0\n---\n# Mine\n"
