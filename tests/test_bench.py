"""Tests for course_lib.bench: every library figure is printed, and every chapter notebook is run
and its HEADLINE lines and time are printed (the experiments themselves live in the notebooks)."""

from __future__ import annotations

import re

import nbformat
import pytest

from course_lib import bench


def _write_notebook(path, *sources: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_headline_lines_reads_only_printed_headlines():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('print("HEADLINE [x]: not run")'),  # the source alone is not output
        nbformat.v4.new_code_cell("", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="table\n  HEADLINE [smoke, 1 seed]: A beats B\nafter\n"),
            nbformat.v4.new_output("execute_result", data={"text/plain": "'HEADLINE [no]: a value, not printed'"}),
        ]),
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", name="stdout", text=["HEADLINE [b]", ": two\n"])]),
        nbformat.v4.new_code_cell("", outputs=[  # the summary repeats a headline: shown once
            nbformat.v4.new_output("stream", name="stdout", text="HEADLINE [smoke, 1 seed]: A beats B\n")]),
    ])
    assert bench.headline_lines(notebook) == ["HEADLINE [smoke, 1 seed]: A beats B", "HEADLINE [b]: two"]


def test_chapter_notebooks_are_found_in_order_and_a_wrong_folder_says_what_to_do(tmp_path):
    assert [path.parent.name for path in bench.chapter_notebooks()] == sorted(
        path.name for path in bench.SOLUTIONS_DIR.iterdir() if list(path.glob("*.ipynb")))
    with pytest.raises(FileNotFoundError, match=r"No chapter notebooks.*--solutions"):
        bench.chapter_notebooks(tmp_path)
    with pytest.raises(FileNotFoundError, match="No chapter notebooks"):
        bench.main(["--solutions", str(tmp_path / "nowhere")])  # before any figure is measured


@pytest.mark.notebook
def test_failed_and_silent_notebooks_are_reported(tmp_path, capsys):
    good = _write_notebook(tmp_path / "a_good" / "good.ipynb",
                           "import os\nprint(f\"HEADLINE [{os.environ['COURSE_PROFILE']}]: it ran\")")
    broken = _write_notebook(tmp_path / "b_broken" / "broken.ipynb", 'print("HEADLINE [smoke]: early")', "1 / 0")
    silent = _write_notebook(tmp_path / "c_silent" / "silent.ipynb", 'print("no headline here")')
    assert bench.chapter_notebooks(tmp_path) == [good, broken, silent]

    assert bench.print_chapter_headlines([good], "smoke") is True
    assert bench.print_chapter_headlines([good, broken, silent], "smoke") is False
    out = capsys.readouterr().out
    assert re.search(r"  a_good/good\.ipynb\n    smoke: \d+ s\n      HEADLINE \[smoke\]: it ran\n", out)
    assert re.search(r"  b_broken/broken\.ipynb\n    smoke: FAILED after \d+ s: ZeroDivisionError: division by zero\n"
                     r"      HEADLINE \[smoke\]: early\n", out)
    assert re.search(r"  c_silent/silent\.ipynb\n    smoke: \d+ s\n      \(no line starting with 'HEADLINE \['", out)
    # Several profiles: each chapter's runs side by side, one after the other.
    assert bench.print_chapter_headlines([good], ["smoke", "standard"]) is True
    out = capsys.readouterr().out
    assert re.search(r"    smoke: \d+ s\n      HEADLINE \[smoke\]: it ran\n"
                     r"    standard: \d+ s\n      HEADLINE \[standard\]: it ran\n", out)


@pytest.mark.notebook
def test_quick_benchmark_prints_every_figure_and_every_chapter_headline(monkeypatch, tmp_path, capsys, fashion_mnist):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "world generation, 64x64, one thread" in out
    assert re.search(r"night\s+[\d,]+\n", out)
    assert re.search(r"studio\s+\d+\.\d\d%", out)
    assert re.search(r"feature extraction \(\d+ target images\): [\d,]+ images/s", out)
    assert re.search(r"\(a\) linear head on cached features \d+\.\d ms, \(b\) head \+ frozen backbone \d+ ms, "
                     r"\(c\) full training \d+ ms: the cache is \d+x faster than \(b\) and \d+x faster than \(c\)", out)
    assert re.search(r"lite world, input size \(Fashion-MNIST, 5 train / 5 test images per class[^\n]*\n"
                     r"   32 px  accuracy +\d+\.\d\d%  extraction +[\d,]+ images/s\n"
                     r"   48 px  accuracy +\d+\.\d\d%", out)
    assert re.search(r"19\.2's from-scratch baseline in the lite world \(Fashion-MNIST, 2 images per class[^\n]*\n"
                     r"  efficientnet-lite0 +2 epochs +\d+\.\d% in +\d+ s +4 epochs +\d+\.\d% in +\d+ s\n"
                     r"  course-resnet +2 epochs", out), out
    # Split MNIST's comparison where MNIST is found (COURSE_DATA_DIR), else the reason it was skipped.
    assert re.search(r"Split MNIST, class-incremental, 20 iterations a task[^\n]*\n"
                     r"(  skipped: [^\n]*MNIST[^\n]*\n|method +accuracy[^\n]*\nnaive +\d+\.\d%)", out), out
    assert "chapter notebooks, executed in the smoke profile(s)" in out
    for path in bench.chapter_notebooks():
        name = re.escape(f"{path.parent.name}/{path.name}")
        assert re.search(rf"\n  {name}\n    smoke: \d+ s\n      HEADLINE \[smoke, [^\n]*\]: \S", out), f"no headline for {name}:\n{out}"
    assert "FAILED" not in out
