"""Tests for course_lib.bench: every benchmark runs and prints its figure."""

import re

from course_lib import bench


def test_quick_benchmark_prints_every_figure(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "world generation, 64x64, one thread" in out
    assert re.search(r"night\s+[\d,]+\n", out)
    assert re.search(r"studio\s+\d+\.\d\d%", out)
    assert re.search(r"feature extraction \(\d+ target images\): [\d,]+ images/s", out)
    assert re.search(r"the cache is \d+x faster than \(b\) and \d+x faster than \(c\)", out)
    assert re.search(r"stage4\s+pretrained\s+\d+\.\d%\s+random\s+\d+\.\d% ± \d+\.\d%", out)
    assert "smallest gap" in out
    assert "chapter 19.2, data efficiency" in out
    assert re.search(r"  1 per class   from scratch\s+\d+\.\d% ± \d+\.\d%   frozen \+ linear head", out)
    assert re.search(r"beats scratch by at least [+-]\d+\.\d points \(at [12] per class\)", out)
    assert re.search(r"chapter 19\.3, fine-tuning strategies .* near = studio, far = night", out)
    assert re.search(r"  LP-FT\s+\d+\.\d% ±\d+\.\d%", out)
    assert re.search(r"size rule's pick was within 2 points of the best of these strategies in \d of 4 cells", out)
