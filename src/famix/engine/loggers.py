"""Where a training run's numbers go: ``<out>/metrics.jsonl`` always, and the trackers ``run.loggers`` names
(``tensorboard``, ``wandb``, ``mlflow``), each used only where its library is installed (one line says so
where one asked for is missing). Rank 0 only.

Records are flat scalars for the trackers: ``val_miou`` ``{spec: mIoU}`` becomes one scalar per dataset,
``val_miou/<dataset>`` (the spec without its folders: ``cityscapes-val``). The run's config is logged once
as hyper-parameters (wandb's config, MLflow's params, TensorBoard's text). wandb follows its own
``WANDB_MODE`` (``offline`` writes ``<out>/wandb/`` only); MLflow its ``MLFLOW_TRACKING_URI`` (default: a
file store in ``<out>/mlruns``; a file store given by URI needs MLflow 3's ``MLFLOW_ALLOW_FILE_STORE=true``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

TRACKERS = ("tensorboard", "wandb", "mlflow")
INSTALL = {
    "tensorboard": 'pip install "famix[tensorboard]"',
    "wandb": 'pip install "famix[trackers]" (wandb)',
    "mlflow": 'pip install "famix[trackers]" (mlflow-skinny)',
}


def dataset_name(spec: str) -> str:
    """A spec as a short scalar name: its fields without folder paths, ``-`` joined
    (``cityscapes:/data/cs:val`` -> ``cityscapes-val``)."""
    kept = [f for f in spec.split(":") if "/" not in f and "\\" not in f]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(kept)).strip("-") or "data"


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a log record, flat: nested dicts (``val_miou``) become ``name/<dataset>``; ``step`` and
    non-numbers are left out."""
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            for spec, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[f"{key}/{dataset_name(spec)}"] = float(v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def flat_config(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}``; lists and None as JSON text."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, str | int | float | bool):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def check_trackers(names) -> list[str]:
    """``run.loggers`` checked: names of :data:`TRACKERS`, once each."""
    names = list(names or [])
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"run.loggers: unknown {unknown}; choose from {', '.join(TRACKERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"run.loggers: {names} names a tracker twice")
    return names


class MetricsLogger:
    """JSON lines in ``<out>/metrics.jsonl`` and the trackers of ``loggers`` (rank 0 only: ``enabled``).
    ``loggers`` None: TensorBoard where installed, silently (famix's behaviour before run.loggers)."""

    def __init__(
        self, out: Path, enabled: bool, loggers: list[str] | None = None, config: dict | None = None
    ):
        self.enabled, self.path, self.out = enabled, out / "metrics.jsonl", out
        self.asked = check_trackers(loggers) if loggers is not None else None
        self.config = config or {}
        self.trackers: dict | None = None  # name -> handle, opened at the first record

    @staticmethod
    def check(out: Path) -> None:
        """Refuse, before any work, a ``metrics.jsonl`` in the run folder that famix did not write (a run
        truncates its log when it resumes: someone else's file would be cut)."""
        path = out / "metrics.jsonl"
        if not path.is_file():
            return
        try:
            ours = all(
                isinstance(json.loads(line), dict) for line in path.read_text().splitlines() if line.strip()
            )
        except (ValueError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise FileExistsError(
                f"{path} is not a training log famix wrote (its lines are not JSON records): famix does not "
                "touch it. Pass another train.out, or move that file away"
            )

    def truncate(self, step: int) -> None:
        """Drop the lines logged after ``step`` (a resumed run logs those steps again)."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            self.path.write_text("".join(line + "\n" for line in kept))

    def _open(self) -> dict:
        trackers = {}
        names = self.asked if self.asked is not None else ["tensorboard"]
        for name in names:
            try:
                trackers[name] = getattr(self, f"_open_{name}")()
            except ImportError:
                if self.asked is not None:  # asked for by name: say it is missing, once
                    warnings.warn(
                        f"run.loggers: {name} is not installed ({INSTALL[name]}): not logged there",
                        stacklevel=2,
                    )
        return trackers

    def _open_tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        writer = SummaryWriter(str(self.out / "tb"))
        if self.config:
            writer.add_text("config", "```\n" + json.dumps(self.config, indent=1) + "\n```")
        return writer

    def _open_wandb(self):
        import wandb

        name = self.out.name
        return wandb.init(dir=str(self.out), project="famix", name=name, config=flat_config(self.config))

    def _open_mlflow(self):
        import mlflow

        if "MLFLOW_TRACKING_URI" not in os.environ:  # the run folder's own file store (no server needed)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in
            mlflow.set_tracking_uri((self.out / "mlruns").resolve().as_uri())
        mlflow.set_experiment("famix")
        run = mlflow.start_run(run_name=self.out.name)
        mlflow.log_params(flat_config(self.config))
        return run

    def log(self, **record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is None:
            self.trackers = self._open()
        values, step = scalars(record), record["step"]
        if "tensorboard" in self.trackers:
            for k, v in values.items():
                self.trackers["tensorboard"].add_scalar(k, v, step)
        if "wandb" in self.trackers:
            self.trackers["wandb"].log(values, step=step)
        if "mlflow" in self.trackers:
            import mlflow

            mlflow.log_metrics(values, step=step)

    @property
    def wants_images(self) -> bool:
        """Whether a tracker that shows pictures is (or will be) open: TensorBoard, wandb or MLflow."""
        if not self.enabled:
            return False
        if self.trackers is None:
            self.trackers = self._open()
        return bool(self.trackers)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Pictures ``{tag: uint8 [H, W, 3]}`` (validation predictions with their legends) to the trackers."""
        if not self.wants_images:
            return
        for tag, picture in images.items():
            if "tensorboard" in self.trackers:
                self.trackers["tensorboard"].add_image(tag, picture, step, dataformats="HWC")
            if "mlflow" in self.trackers:
                import mlflow

                mlflow.log_image(picture, key=tag.replace("/", "_"), step=step)
        if "wandb" in self.trackers:
            import wandb

            self.trackers["wandb"].log({t: wandb.Image(p) for t, p in images.items()}, step=step)

    def close(self) -> None:
        """Flush and end the trackers' runs (the end of training, or an interruption)."""
        for name, handle in (self.trackers or {}).items():
            if name == "tensorboard":
                handle.close()
            elif name == "wandb":
                handle.finish()
            elif name == "mlflow":
                import mlflow

                mlflow.end_run()
        self.trackers = None
