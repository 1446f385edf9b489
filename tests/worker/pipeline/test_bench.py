"""The benchmark command keeps working (tiny sizes; this is not a timing test)."""

from worker.pipeline import bench


def test_bench_prints_ours_beside_the_original(capsys):
    bench.main(
        ["--seg-size", "64", "--cls-size", "64", "--batch-sizes", "1", "2", "--original-images", "1", "--no-memory"]
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["ours", "1"] for line in lines)
    assert any(line.split()[:2] == ["ours", "2"] for line in lines)
    assert any(line.split()[:2] == ["original", "1"] for line in lines)
    assert "gate1 s/img" in out and "gate2 s/img" in out and "pipeline s/img" in out
    assert "peak RSS" in out
