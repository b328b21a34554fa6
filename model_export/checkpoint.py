"""Training checkpoints: the ``.pt`` file ``python -m model_export train`` writes and ``export`` reads.

A checkpoint holds plain containers and tensors only (read back with ``weights_only=True``): the model
configuration and weights, the I/O contract as its metadata strings, the training configuration and
history, and what the card reports about the data (dataset, clips, augmentation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from app.core.contract import ModelContract
from app.core.errors import ContractError
from model_export.model import EmotionRNN, ModelConfig, build_model

__all__ = ["REQUIRED_CHECKPOINT_KEYS", "check_model_matches_contract", "load_checkpoint", "save_checkpoint"]

#: Checkpoint keys written by ``python -m model_export train`` that export needs.
REQUIRED_CHECKPOINT_KEYS = ("model_config", "state_dict", "contract")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: EmotionRNN,
    contract: ModelContract,
    train_config: Mapping[str, Any],
    *,
    dataset: str,
    history: Sequence[Mapping[str, float]] = (),
    best_epoch: int = 0,
    clips: int = 0,
    augmentation: Mapping[str, Any] | None = None,
) -> Path:
    """Write the checkpoint :func:`load_checkpoint` reads (and ``export_checkpoint`` exports).

    Args:
        path: The ``.pt`` file to write (parent folders are created).
        model: The trained model.
        contract: Its I/O contract.
        train_config: ``TrainConfig.to_dict()`` of the run.
        dataset: Name of the training data.
        history: Per-epoch losses.
        best_epoch: The epoch whose weights these are.
        clips: How many clips the run used.
        augmentation: How the training data was augmented (for the model card); ``None``: not.

    Returns:
        The written path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_config": model.config.to_dict(),
            "train_config": dict(train_config),
            "state_dict": model.state_dict(),
            "contract": contract.to_metadata(),
            "dataset": dataset,
            "history": [dict(h) for h in history],
            "best_epoch": best_epoch,
            "clips": clips,
            "augmentation": dict(augmentation or {}),
        },
        out,
    )
    return out


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[EmotionRNN, ModelContract, dict[str, Any]]:
    """Load a checkpoint written by ``python -m model_export train``.

    Args:
        path: The ``.pt`` file.

    Returns:
        ``(model, contract, meta)``: the model in eval mode, its validated contract, and every other
        checkpoint entry (``model_config``, ``train_config``, ``dataset``, ``history``, ``best_epoch``,
        ``clips``, ... ; not ``state_dict``).

    Raises:
        ValueError: If required keys are missing or the weights do not fit the model config.
        ContractError: If the contract is invalid or disagrees with the model or training config.
    """
    # weights_only: a checkpoint is plain containers and tensors; never unpickle arbitrary objects.
    ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint dict")
    missing = [k for k in REQUIRED_CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    config = ModelConfig.from_dict(ckpt["model_config"])
    contract = ModelContract.from_metadata(ckpt["contract"])
    check_model_matches_contract(config, contract)
    train_config = ckpt.get("train_config") or {}
    problems = []
    if "targets" in train_config and tuple(train_config["targets"]) != contract.outputs:
        problems.append(f"train_config targets {train_config['targets']} != outputs {contract.outputs}")
    for key in ("feature_transform", "clip_z"):
        if key in train_config and train_config[key] != getattr(contract, key):
            problems.append(f"train_config {key} {train_config[key]!r} != {getattr(contract, key)!r}")
    if problems:
        raise ContractError(f"{path}: checkpoint inconsistent with its contract: " + "; ".join(problems))
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {config.name}: {exc}") from exc
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, contract, meta


def check_model_matches_contract(config: ModelConfig, contract: ModelContract) -> None:
    """Refuse a model whose input or output width disagrees with its contract (:class:`ContractError`)."""
    problems = []
    if config.num_features != contract.num_features:
        problems.append(f"model input width {config.num_features} != contract {contract.num_features}")
    if config.num_outputs != len(contract.outputs):
        problems.append(f"model has {config.num_outputs} outputs, contract names {list(contract.outputs)}")
    if problems:
        raise ContractError("model does not match its contract: " + "; ".join(problems))
