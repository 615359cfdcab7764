"""bench/dense_margin.py on made-up rounds: per-round ratios SDPA / ours, and the count
of rounds that reach issue 3's 0.9 for the dense target."""
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "dense_margin.py")


def run(tmp_path, rounds):
    for r, (ours, ref) in enumerate(rounds, 1):
        (tmp_path / f"dense-{r}.json").write_text(json.dumps(
            {"cases": [{"name": "dense_b8_128k", "us": ours}, {"name": "dense_b1_1m", "us": 1000.0}]}))
        (tmp_path / f"anchor-{r}.json").write_text(json.dumps(
            {"sdpa": [{"B": 1, "N": 131072, "us": 1.0}, {"B": 8, "N": 131072, "us": ref},
                      {"B": 1, "N": 1048576, "us": 950.0}]}))
    p = subprocess.run([sys.executable, SCRIPT, str(tmp_path), str(len(rounds))], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_ratios_and_count(tmp_path):
    lines = run(tmp_path, [(1000.0, 901.0), (1000.0, 899.0), (1000.0, 950.0)])
    assert "dense_b8_128k round 2: ours 1000.0 us, SDPA 899.0 us, ratio 0.899" in lines
    assert ("dense_b8_128k: ratio median 0.901, min 0.899, max 0.950; >= 0.9 in 2 of 3") in lines
    assert "dense_b1_1m: ratio median 0.950, min 0.950, max 0.950; >= 0.9 in 3 of 3" in lines


def test_usage_without_arguments():
    p = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
    assert p.returncode != 0 and "DIR ROUNDS" in p.stderr
