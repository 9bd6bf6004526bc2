"""The search's checkpoint: one safetensors file, JSON state in its header (no pickle); resume only the same input."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._io import json_safe, load_checkpoint, save_checkpoint
from ..errors import ConfigError
from ._adversary import KernelDependence, LinearDependence
from ._config import FFWConfig
from ._gates import GatedModel

CHECKPOINT_FILE = "checkpoint.safetensors"  # tensors + JSON state in one file (debiaskit._io.save_checkpoint)
CHECKPOINT_KIND = "ffw-search"
_INPUT_PARTS = {
    "weights": "the frozen model's weights",
    "run_weights_sha256": "the run's weights file",
    "model": "the model's record",
    "data": "the data",
    "bias_labels": "the kind of bias labels",
    "bias_labels_sha256": "the bias labels",
}


class _Checkpoint:
    """Save / resume the search (a mixin of ``_Search``)."""

    # the search's state that a checkpoint holds (set by _Search.__init__)
    cfg: FFWConfig
    input_identity: dict[str, Any] | None
    gated: GatedModel
    gate_opt: torch.optim.Optimizer
    heads: list[nn.Linear]
    head_opts: list[torch.optim.Optimizer]
    mlps: list[nn.Module]
    mlp_opts: list[torch.optim.Optimizer]
    lda: LinearDependence | KernelDependence | None
    log_temperature: Tensor | None
    progress: dict[str, Any]
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_gates: dict[str, Tensor] | None
    step: int

    def _optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return (
            [("gateopt", self.gate_opt)]
            + [(f"headopt{i}", o) for i, o in enumerate(self.head_opts)]
            + [(f"mlpopt{i}", o) for i, o in enumerate(self.mlp_opts)]
        )

    def save_checkpoint(self, folder: Path, *, wall_time_s: float) -> None:
        tensors = {f"gate.{k}": v for k, v in self.gated.gate_tensors().items()}
        tensors.update({f"best.{k}": v for k, v in (self.best_gates or {}).items()})
        meta: dict[str, Any] = {"optimizers": {}}
        for i, h in enumerate(self.heads):
            tensors.update({f"head{i}.{k}": v.detach() for k, v in h.state_dict().items()})
        for i, mlp in enumerate(self.mlps):
            tensors.update({f"mlp{i}.{k}": v.detach() for k, v in mlp.state_dict().items()})
        if self.lda is not None:
            tensors.update({f"lda.{k}": v for k, v in self.lda.tensors().items()})
        if self.log_temperature is not None:
            tensors["log_temperature"] = self.log_temperature.detach().reshape(1)
        for tag, opt in self._optimizers():
            sd = opt.state_dict()
            scalars = {}
            for idx, st in sd["state"].items():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        tensors[f"{tag}.{idx}.{k}"] = v.detach()
                    else:
                        scalars[f"{idx}.{k}"] = v
            meta["optimizers"][tag] = {"param_groups": sd["param_groups"], "scalars": scalars}
        meta.update(
            {
                "input": self.input_identity,
                "config": asdict(self.cfg),
                "progress": self.progress,
                "history": self.history,
                "best": self.best,
                "step": self.step,
                "wall_time_s": wall_time_s,
            }
        )
        save_checkpoint(Path(folder) / CHECKPOINT_FILE, tensors, meta, kind=CHECKPOINT_KIND)

    def _check_input(self, folder: Path, saved: dict[str, Any] | None) -> None:
        """A checkpoint resumes only the search of the same frozen model on the same data: gates learnt on
        another run (or on this path before it was retrained) would be continued as if they were this one's."""
        ours = json.loads(json.dumps(json_safe(self.input_identity)))
        if ours is None:
            return
        if not isinstance(saved, dict):
            raise ConfigError(
                f"the checkpoint in {folder} does not record which model and data it searched (written "
                "by an earlier debiaskit), so it cannot be resumed safely; start afresh with --force"
            )
        differ = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        if differ:
            what = ", ".join(dict.fromkeys(_INPUT_PARTS.get(k, k) for k in differ))
            raise ConfigError(
                f"the interrupted search in {folder} was started on another input ({what} differ): the "
                "run was retrained or replaced since, or this output belongs to another run's search. "
                "Resuming would continue that search on this model; start afresh with --force (discards "
                "it) or choose another --out"
            )

    def load_checkpoint(self, folder: Path) -> float:
        path = Path(folder) / CHECKPOINT_FILE
        if not path.is_file():
            raise ConfigError(f"nothing to resume in {folder}: no {CHECKPOINT_FILE}")
        tensors, meta = load_checkpoint(path, kind=CHECKPOINT_KIND)
        self._check_input(folder, meta.get("input"))
        saved = meta["config"]
        ours = json.loads(json.dumps(asdict(self.cfg)))
        diff = sorted(k for k in ours if saved.get(k) != ours[k])
        if diff:
            raise ConfigError(
                f"the checkpoint in {folder} was made with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}); "
                "resume with the same settings, or start afresh with --force"
            )
        self.gated.load_gate_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("gate.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_gates = best or None
        for prefix, modules in (("head", self.heads), ("mlp", self.mlps)):
            for i, h in enumerate(modules):
                tag = f"{prefix}{i}."
                h.load_state_dict({k[len(tag) :]: v for k, v in tensors.items() if k.startswith(tag)})
        if self.lda is not None:
            self.lda.load_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("lda.")})
        if self.log_temperature is not None:
            with torch.no_grad():
                self.log_temperature.copy_(tensors["log_temperature"].reshape(()))
        for tag, opt in self._optimizers():
            info = meta["optimizers"][tag]
            state: dict[int, dict[str, Any]] = {}
            for k, v in tensors.items():
                if k.startswith(tag + "."):
                    _, idx, name = k.split(".", 2)
                    state.setdefault(int(idx), {})[name] = v
            for k, v in info["scalars"].items():
                idx, name = k.split(".", 1)
                state.setdefault(int(idx), {})[name] = v
            opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        self.progress, self.history, self.best, self.step = (
            meta["progress"],
            meta["history"],
            meta["best"],
            meta["step"],
        )
        return float(meta.get("wall_time_s", 0.0))
