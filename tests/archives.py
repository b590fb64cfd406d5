"""Reading and rewriting zip archives (``.minidl`` and ``.keras`` files) member by member, for the
tests that forge damaged or hostile files."""

import zipfile


def archive_members(path):
    """``{member name: bytes}`` of the zip archive at ``path``."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_archive(path, members):
    """Write ``members`` (``{name: bytes}``) as a new zip archive at ``path``."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
