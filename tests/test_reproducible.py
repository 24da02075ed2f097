"""The same command with the same seed gives the same metrics.json numbers on CPU, in separate processes.

The two runs use different ``PYTHONHASHSEED`` values, so anything that depends on set or dict-of-hash
order (the ``tokenizers`` WordPiece trainer once did) shows up as a difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.kill_campaign import numbers

HARDEN = "from robustkit.cli import main; raise SystemExit(main())"


RUNS = {
    "text": (["--data", "demo:300"], {}),
    "tabular": ([], {"n_rows": 1500}),
    "images": ([], {"max_train": 400, "max_test": 100}),
}


@pytest.mark.parametrize("domain", sorted(RUNS))
def test_harden_is_reproducible_across_processes(tmp_path: Path, domain: str) -> None:
    flags, options = RUNS[domain]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"options": options}))
    runs = [tmp_path / "first", tmp_path / "second"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HARDEN, "harden", domain, *flags, "--config", str(config), "--epochs", "1",
             "--preset", "quick", "--threads", "1", "--quiet", "--seed", "3", "--out", str(run)],
            env={**os.environ, "PYTHONHASHSEED": str(k + 1)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for k, run in enumerate(runs)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    first, second = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert first["seed"] == 3
    assert numbers(first) == numbers(second)
    weights = [(run / "models" / "hardened" / "model.safetensors").read_bytes() for run in runs]
    assert weights[0] == weights[1]
