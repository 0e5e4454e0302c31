"""Write the support assistant's training data from :mod:`.knowledge` (deterministically).

``python -m plugstack.plugins.support.make_data`` regenerates ``plugins/support/data/*.jsonl``
byte for byte (``--check`` only compares). Choices are made by SHA-256 of fixed strings, not
by :mod:`random`, so the files do not depend on the Python version. Held-out files use the
facts' held-out question phrasings and their own greetings, rude phrasings and invented
perks, none of which appear in training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .knowledge import DECLINES, FACTS, SYSTEM_PROMPT, Decline, Fact

__all__ = ["DATA_DIR", "FILES", "build", "main"]

DATA_DIR = Path(__file__).resolve().parent / "data"
FILES = ("sft_train.jsonl", "sft_heldout.jsonl", "dpo_train.jsonl", "dpo_heldout.jsonl", "grpo_train.jsonl")
SEED = "larkspur-1"
DPO_KINDS = ("wrong_fact", "invented_policy", "rude")

# (prefix, suffix) around a question, so the model learns the question rather than its frame.
_WRAPS = {
    "train": [(p, s) for p in ("", "Hi! ", "Hello! ", "Quick question: ", "Hey there. ", "Good evening. ")
              for s in ("", " Thanks!", " Thank you.", " Thanks in advance.")],
    "heldout": [(p, s) for p in ("", "Good afternoon! ", "Hi, I need some help. ") for s in ("", " Cheers.")],
    # GRPO's framings are new to the SFT model, so its answers vary and the reward has something to rank.
    "grpo": [(p, s) for p in ("Sorry to bother you. ", "Excuse me, ", "Hello team, ", "One more thing: ")
             for s in (" Please.", " Much appreciated!", " Best regards.")],
}
_RUDE = {
    "train": ("Ugh, fine. {answer} Read the FAQ next time.", "{answer} Obviously.",
              "As I already said: {answer} Stop asking.", "{answer} It's not hard to figure out.",
              "{answer} Figure out the rest yourself."),
    "heldout": ("Pay attention this time. {answer} Don't waste my time.", "{answer} Anything else is not my problem.",
                "Wow. {answer} Learn to read."),
}
# Made-up perks appended to a correct answer; each states a number the knowledge does not.
_PERKS = {
    "train": ("We also add a $20 store credit to every return.", "Larkspur Plus members also get 25% off everything.",
              "Every order over $200 also comes with free white-glove delivery.",
              "You also get a 90-day satisfaction bonus on every purchase."),
    "heldout": ("Every customer also earns a 35% loyalty discount after a few orders.",
                "We also pay you $25 for each product review you write."),
}

Item = Fact | Decline


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join((SEED, *parts)).encode()).digest()[:8], "big")


def _pick(options: Sequence[Any], *key: str) -> Any:
    return options[_hash(*key) % len(options)]


def _ordered(records: list[dict[str, Any]], salt: str) -> list[dict[str, Any]]:
    """``records`` in a fixed pseudo-random order (so a file's head is not one topic)."""
    return sorted(records, key=lambda r: _hash(salt, json.dumps(r, sort_keys=True)))


def _questions(item: Item, split: str) -> tuple[str, ...]:
    return item.train if split == "train" else item.heldout


def _prompt(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def _judged(item: Item) -> dict[str, Any]:
    """The keys the judge reads: the accepted facts, or the decline marker."""
    if isinstance(item, Decline):
        return {"fact_id": item.id, "facts": [], "decline": True}
    return {"fact_id": item.id, "facts": list(item.facts)}


def _wrapped(item: Item, question: str, split: str, copies: int) -> list[str]:
    """``copies`` different framings of ``question``."""
    wraps = _WRAPS[split]
    first = _hash(item.id, question) % len(wraps)
    step = 1 + _hash("step", item.id, question) % (len(wraps) - 1)
    return [wraps[(first + k * step) % len(wraps)][0] + question + wraps[(first + k * step) % len(wraps)][1]
            for k in range(copies)]


def _items() -> tuple[Item, ...]:
    return (*FACTS, *DECLINES)


def sft(split: str) -> list[dict[str, Any]]:
    """SFT conversations: two framings of each training question, one of each held-out question."""
    records = []
    for item in _items():
        for question in _questions(item, split):
            for asked in _wrapped(item, question, split, 2 if split == "train" else 1):
                messages = [*_prompt(asked), {"role": "assistant", "content": item.answer}]
                records.append({"messages": messages, **_judged(item)})
    return _ordered(records, "sft-" + split)


def _rejected(item: Item, kind: str, asked: str, split: str) -> str | None:
    """The rejected answer of ``kind`` to ``asked``, or ``None`` where the kind does not apply."""
    if kind == "rude":
        return _pick(_RUDE[split], "rude", item.id, asked).format(answer=item.answer)
    if kind == "invented_policy":
        if isinstance(item, Decline):
            return item.invented
        return item.answer + " " + _pick(_PERKS[split], "perk", item.id, asked)
    if isinstance(item, Decline):
        return None  # nothing to get wrong in a decline
    return item.answer.replace(item.facts[0], _pick(item.wrong, "wrong", item.id, asked))


def dpo(split: str) -> list[dict[str, Any]]:
    """Preference pairs, as many of each kind: every applicable (question, kind) is a candidate."""
    candidates: dict[str, list[dict[str, Any]]] = {kind: [] for kind in DPO_KINDS}
    for item in _items():
        for question in _questions(item, split):
            asked = _wrapped(item, question, split, 1)[0]
            for kind in DPO_KINDS:
                rejected = _rejected(item, kind, asked, split)
                if rejected is not None:
                    candidates[kind].append({
                        "prompt": _prompt(asked), "chosen": [{"role": "assistant", "content": item.answer}],
                        "rejected": [{"role": "assistant", "content": rejected}], "kind": kind,
                        "fact_id": item.id,
                    })
    per_kind = min(len(c) for c in candidates.values())
    records = [r for kind in DPO_KINDS for r in _ordered(candidates[kind], "pick-" + split)[:per_kind]]
    return _ordered(records, "dpo-" + split)


# Word swaps that turn a training question into one the SFT data never phrased that way.
_SWAPS = (("How long", "How much time"), ("How much", "What amount"), ("Do you", "Does Larkspur Home"),
          ("Can I", "Am I allowed to"), ("Do I", "Would I"), ("What is", "Tell me"), ("When", "At what point"),
          ("item", "product"), ("order", "purchase"), ("refund", "reimbursement"), ("shipping", "delivery"),
          ("fee", "charge"), ("your", "Larkspur Home's"), ("my", "our"))


def paraphrase(question: str) -> str:
    """``question`` with each swap of :data:`_SWAPS` that applies made once, by whole words."""
    for old, new in _SWAPS:
        question = re.sub(rf"\b{re.escape(old)}\b", new, question, count=1)
    return question


def grpo() -> list[dict[str, Any]]:
    """GRPO prompts: each training question paraphrased, in two framings SFT never saw, with what
    the reward checks (so the SFT model's answers vary and the reward has something to rank)."""
    records = [{"prompt": _prompt(asked), **_judged(item)}
               for item in _items() for q in item.train for asked in _wrapped(item, paraphrase(q), "grpo", 2)]
    return _ordered(records, "grpo")


def _text(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def build() -> dict[str, str]:
    """File name -> content of every data file."""
    return {"sft_train.jsonl": _text(sft("train")), "sft_heldout.jsonl": _text(sft("heldout")),
            "dpo_train.jsonl": _text(dpo("train")), "dpo_heldout.jsonl": _text(dpo("heldout")),
            "grpo_train.jsonl": _text(grpo())}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugstack.plugins.support.make_data", description=__doc__)
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder to write to (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare with the files there; exit 1 on a diff")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        target = args.out / name
        current = target.read_bytes() if target.is_file() else None
        if current == text.encode("utf-8"):
            continue
        stale.append(name)
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text.encode("utf-8"))
    verb = "differ" if args.check else "written"
    print(f"{len(stale)} of {len(FILES)} files {verb} in {args.out}" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
