"""Start-up cost: `plugstack --help` next to the `--help` of a minimal one-group Hydra app.

plugstack's own overhead on top of Hydra (plugin discovery, schemas, the search-path
plugin) should stay small: target ratio <= 1.2x. Both commands run in this same run,
alternating, so machine noise hits both alike; medians are reported.

    python benchmarks/bench_startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIMAL_APP = '''
import hydra

@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    print(cfg)

if __name__ == "__main__":
    main()
'''


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "conf" / "db").mkdir(parents=True)
        (root / "conf" / "config.yaml").write_text("defaults:\n  - db: mysql\n  - _self_\n")
        (root / "conf" / "db" / "mysql.yaml").write_text("driver: mysql\nport: 3306\n")
        (root / "conf" / "db" / "sqlite.yaml").write_text("driver: sqlite\n")
        (root / "app.py").write_text(MINIMAL_APP)
        hydra_cmd = [sys.executable, "app.py", "--help"]
        ours_cmd = [str(Path(sys.executable).with_name("plugstack")), "--help"]
        for cmd in (hydra_cmd, ours_cmd):  # warm the file cache
            timed(cmd, root)
        hydra_t, ours_t = [], []
        for _ in range(args.repeat):
            hydra_t.append(timed(hydra_cmd, root))
            ours_t.append(timed(ours_cmd, root))
    h, o = statistics.median(hydra_t), statistics.median(ours_t)
    print(f"minimal Hydra app --help : {h * 1000:7.1f} ms (median of {args.repeat})")
    print(f"plugstack --help         : {o * 1000:7.1f} ms (median of {args.repeat})")
    print(f"ratio plugstack / hydra  : {o / h:7.2f}x  (target <= 1.20x)")


if __name__ == "__main__":
    main()
