"""``python -m plugstack`` (and ``torchrun --nproc_per_node N -m plugstack app=train ...``)."""

from .cli import entry_point

if __name__ == "__main__":
    entry_point()
