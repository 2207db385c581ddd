"""Progress lines for logs without a terminal: counted, timed, and only from rank 0."""

from pipeline import progress as progress_module
from pipeline.progress import progress, progress_line


def test_a_line_says_what_is_done_how_fast_and_how_long_is_left():
    assert progress_line("training", 1280, 2100, "img", 33.7) == "training: 1,280 of 2,100 img, 38.0 img/s, 22 s left"
    assert progress_line("writing", 500, None, "img", 2.0) == "writing: 500 img, 250 img/s"


def test_without_a_terminal_lines_come_as_the_work_goes_and_count_units(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    items = list(progress(range(4), "frozen features", total=35, unit="img", per_item=10))
    assert items == [0, 1, 2, 3]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "frozen features: 10 of 35 img",
        "frozen features: 20 of 35 img",
        "frozen features: 30 of 35 img",
        "frozen features: 35 of 35 img",  # the last batch holds the 5 left
    ]


def test_only_the_first_rank_reports(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    monkeypatch.setenv("RANK", "1")
    assert list(progress(range(3), "training", total=3)) == [0, 1, 2]
    assert capsys.readouterr().out == ""


def test_quick_work_prints_nothing(capsys):
    assert sum(progress(range(100), "decoding", total=100)) == 4950
    assert capsys.readouterr().out == ""
