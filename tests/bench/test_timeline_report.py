"""scripts/timeline-report on a made-up timeline: per-kernel counts, first and last starts,
the waits' and ends' first, median and last, and the blocks that started before the kernel
ahead of them had ended, as medians over the calls."""
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "timeline-report")

# (kernel, phase, unit, ns) of one call: phases 0 start, 1 issued, 2 waited, 3 end
CALL = [
    (1, 0, 0, 0), (1, 2, 0, 1000), (1, 3, 0, 5000),
    (1, 0, 1, 100), (1, 2, 1, 1100), (1, 3, 1, 6000),
    (2, 0, 0, 2000), (2, 1, 0, 2500), (2, 2, 0, 7000), (2, 3, 0, 10000),
    (2, 0, 1, 7000), (2, 2, 1, 7500), (2, 3, 1, 11000),
    (2, 0, 2, 3000), (2, 2, 2, 7000), (2, 3, 2, 12000),
]


def report(tmp_path, calls):
    f = tmp_path / "timeline.txt"
    lines = ["# case_a call 9: 200000 events, 131072 kept"]
    for c, shift in enumerate(calls):
        lines += [f"case_a {c} {k} {p} 7 {u} {t + shift}" for k, p, u, t in CALL]
    f.write_text("\n".join(lines) + "\n")
    p = subprocess.run([sys.executable, SCRIPT, str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def row(lines, kernel):
    return next(l.split() for l in lines if l.split() and l.split()[0] == kernel)


def test_kernels_phases_and_early_blocks(tmp_path):
    # bench_lab writes each call's times from its first event; a third call 1 ms later in
    # every event stands for an outlier call, which the medians over the calls leave out
    lines = report(tmp_path, [0, 0, 1000000])
    assert lines[0] == "# case_a call 9: 200000 events, 131072 kept"
    assert any(l.startswith("case_a: 3 calls") for l in lines)
    assert row(lines, "mlp") == ["mlp", "2", "0.0-0.1", "1.0", "1.1", "1.1", "5.0", "6.0", "6.0", "nan"]
    # two of the three score warps started before the last MLP block ended (6.0 us)
    assert row(lines, "score") == ["score", "3", "2.0-7.0", "7.0", "7.0", "7.5", "10.0", "11.0", "12.0", "2"]


def test_usage_without_arguments():
    p = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
    assert p.returncode != 0 and "usage" in p.stderr
