"""The lessons in docs/: every python block runs, in order, one namespace per lesson; each lesson has
formulas, links to code that exists, and exercises with solutions; the index links them all."""

import re
from pathlib import Path

import pytest

import minidl
from tests.markdown import python_blocks

DOCS = Path(__file__).resolve().parents[1] / "docs"
LESSONS = sorted(DOCS.glob("0[1-9]-*.md"))
RELATIVE_LINK = re.compile(r"\]\((\.\./[^)#\s]+|img/[^)#\s]+)")


def test_there_are_nine_lessons_and_the_index_links_each():
    assert len(LESSONS) == 9
    index = (DOCS / "README.md").read_text()
    for lesson in LESSONS:
        assert f"({lesson.name})" in index


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda path: path.stem)
def test_each_lesson_has_formulas_code_links_and_exercises_with_solutions(lesson):
    text = lesson.read_text()
    assert "$$" in text
    assert python_blocks(text)
    links = RELATIVE_LINK.findall(text)
    assert any(link.startswith("../minidl/") or link.startswith("../kernels/") for link in links)
    for link in links:
        assert (lesson.parent / link).exists(), f"{lesson.name} links to {link}, which does not exist"
    exercises = text[text.index("## Exercises"):]
    assert exercises.count("<details>") >= 2 and "Solution" in exercises


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda path: path.stem)
def test_every_python_block_of_the_lesson_runs(lesson, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    previous = minidl.get_backend()
    namespace = {"__name__": f"docs.{lesson.stem}"}
    try:
        for number, block in enumerate(python_blocks(lesson.read_text()), 1):
            exec(compile(block, f"{lesson.name}, block {number}", "exec"), namespace)
    finally:
        minidl.set_backend(previous)


PICTURES = ("training_curves", "confusion_matrix", "filters", "feature_maps", "network", "optimizer_paths")


def test_the_committed_pictures_exist_and_stay_small():
    for name in PICTURES:
        assert (DOCS / "img" / f"{name}.png").stat().st_size < 100 * 1024


@pytest.mark.slow
def test_make_pictures_draws_every_picture_from_a_real_training(tmp_path):
    pytest.importorskip("matplotlib")
    import runpy

    script = runpy.run_path(str(DOCS / "make_pictures.py"))
    script["main"](["--train-samples", "600", "--epochs", "1", "--output", str(tmp_path)])
    assert sorted(path.stem for path in tmp_path.glob("*.png")) == sorted(PICTURES)
