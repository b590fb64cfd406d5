"""The bug museum: every exhibit's bug is caught and its correct version passes the same test."""

import pytest

from minidl.cli import main
from minidl.teaching import museum


@pytest.mark.parametrize("exhibit", museum.EXHIBITS, ids=lambda exhibit: exhibit.title[:40])
def test_the_bug_is_caught_and_the_real_class_passes(exhibit):
    result = museum.visit(exhibit)
    assert result.caught, result.wrong_error
    assert result.right_passes, result.right_error


def test_the_museum_has_the_ten_bugs_of_the_catalogue():
    assert len(museum.EXHIBITS) >= 10


def test_each_wrong_variant_is_a_subclass_of_the_real_thing():
    for exhibit in museum.EXHIBITS:
        assert isinstance(exhibit.make_wrong(), type(exhibit.make_right()))


def test_the_command_exits_0_when_every_bug_is_caught_and_1_when_one_escapes(capsys, monkeypatch):
    assert main(["museum"]) == 0
    assert "10 of 10 bugs caught" in capsys.readouterr().out
    harmless = museum.Exhibit("a correct Dense", "gradient check", museum.EXHIBITS[0].make_right,
                              museum.EXHIBITS[0].make_right, museum.EXHIBITS[0].test)
    monkeypatch.setattr(museum, "EXHIBITS", [harmless])
    assert main(["museum"]) == 1
    assert "ESCAPED: a correct Dense" in capsys.readouterr().err
