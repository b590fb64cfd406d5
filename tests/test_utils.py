"""Atomic writes: the old file or the new one, whatever happens, with the file's mode and links kept."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import minidl
from minidl import layers
from minidl.utils import atomic_write

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, data):
    with atomic_write(path) as file:
        file.write(data)


def test_rewriting_a_file_keeps_its_permission_bits(tmp_path):
    target = tmp_path / "private.minidl"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    write(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o600


def test_writing_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "model-v1.minidl"
    target.write_bytes(b"old")
    link = tmp_path / "latest.minidl"
    link.symlink_to(target)
    write(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.minidl", "runs"]


def dead_pid():
    """The id of a process that has just exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_write_removes_the_temporaries_killed_writers_of_the_same_file_left(tmp_path):
    host = socket.gethostname()
    stale = tmp_path / f".model.minidl.{host}-{dead_pid()}.abc123.tmp"
    live = tmp_path / f".model.minidl.{host}-{os.getpid()}.def456.tmp"  # a write in progress
    other_file = tmp_path / f".other.minidl.{host}-{dead_pid()}.ghi789.tmp"
    for path in (stale, live, other_file):
        path.write_bytes(b"partial")
    write(tmp_path / "model.minidl", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_file.name, "model.minidl"])


SAVE_FOREVER = textwrap.dedent('''
    """Save the model over and over, each time with weights equal to the save's number."""
    import sys
    import minidl
    from minidl import layers

    model = minidl.Sequential([layers.Input((1024,)), layers.Dense(1024)])  # 4 MiB per save
    count = 0
    while True:
        count += 1
        model.set_weights([w * 0 + count for w in model.get_weights()])
        model.save(sys.argv[1])
        print(count, flush=True)
''')


@pytest.mark.slow
def test_saves_killed_at_random_moments_leave_a_loadable_old_or_new_file_and_no_temporaries(tmp_path):
    script, target = tmp_path / "save_forever.py", tmp_path / "model.minidl"
    script.write_text(SAVE_FOREVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")])}
    rng = np.random.default_rng(0)
    temporaries_left = kills = 0
    while kills < 8 or (temporaries_left == 0 and kills < 40):  # until a kill has landed mid-save
        kills += 1
        process = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE,
                                   text=True, env=env)
        process.stdout.readline()  # at least one save finished
        time.sleep(rng.uniform(0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        values = {float(w.flat[0]) for w in minidl.load_model(target).get_weights()}
        assert len(values) == 1, "a mix of two saves"
        temporaries_left += sum(p.name.startswith(".") for p in tmp_path.iterdir())
    minidl.load_model(target).save(target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert temporaries_left > 0, f"none of {kills} kills landed mid-save: the test proved nothing about cleaning up"
