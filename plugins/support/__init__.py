"""The support assistant's data, dataset interface and reward (pure Python, no torch).

Larkspur Home is a fictional online shop; :mod:`.knowledge` holds its policies as checkable
facts, :mod:`.make_data` writes the chat-format JSONL under ``data/`` from them (SFT, DPO,
GRPO; training and held-out), :mod:`.dataset` reads and validates such files (the shipped
ones or a user's own), and :mod:`.reward` judges answers by their fact (``fact_correct``)
and scores them for GRPO (``reward``).
"""

from __future__ import annotations

from pathlib import Path

from .dataset import read_dpo, read_grpo, read_jsonl, read_sft
from .knowledge import SHOP, SYSTEM_PROMPT
from .reward import fact_correct, reward

__all__ = ["DATA_DIR", "SHOP", "SYSTEM_PROMPT", "data_path", "fact_correct", "read_dpo", "read_grpo", "read_jsonl",
           "read_sft", "reward"]

DATA_DIR = Path(__file__).resolve().parent / "data"


def data_path(name: str) -> Path:
    """Path of a shipped data file: ``data_path("sft_train")`` -> ``.../data/sft_train.jsonl``."""
    return DATA_DIR / (name if name.endswith(".jsonl") else name + ".jsonl")
