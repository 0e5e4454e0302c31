"""A reward for the GRPO tests, importable by ``model.finetune.reward=tiny_reward:letters``."""


def letters(record: dict, answer: str) -> float:
    """How often the record's letter occurs in the answer: it varies between random answers."""
    return float(answer.count(record["letter"]))


def not_a_number(record: dict, answer: str) -> str:
    return "high"
