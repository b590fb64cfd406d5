"""Data-parallel training (:mod:`minidl.distributed`): the sharding and bucketing in one process, and,
marked ``mpi``, real runs under ``mpiexec -n 2``: equivalence with one process at twice the batch,
faults that stop every rank with a message naming the rank, resuming from a checkpoint."""

import ast
import os
import re
import shutil
import subprocess
import sys
import time

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl
from minidl import presets
from minidl.distributed import (DataParallel, GradientBuckets, ShardedBatches, shard_bounds, share_the_cores,
                                strategy_for)

pytest.importorskip("mpi4py", reason="distributed training needs the 'distributed' extra (mpi4py, MPI)")

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPOSITORY, "tests", "distributed_program.py")


# ------------------------------------------------------------------------------ one process


@pytest.fixture(autouse=True)
def threads_left_as_they_are(monkeypatch):
    """A ``DataParallel`` made in this process leaves its thread count alone (``MINIDL_NUM_THREADS``
    set to the current one), so that no test changes the threads of the tests after it."""
    monkeypatch.setenv("MINIDL_NUM_THREADS", str(numba.get_num_threads()))


def test_a_rank_takes_its_share_of_the_cores_once_and_only_where_not_told(monkeypatch):
    previous = minidl.get_backend()
    before = numba.get_num_threads()
    try:
        minidl.set_backend("numba")
        monkeypatch.delenv("MINIDL_NUM_THREADS")
        share_the_cores(os.cpu_count())
        assert os.environ["MINIDL_NUM_THREADS"] == "1" and numba.get_num_threads() == 1
        monkeypatch.setenv("MINIDL_NUM_THREADS", "2")
        share_the_cores(os.cpu_count())
        assert os.environ["MINIDL_NUM_THREADS"] == "2"
    finally:
        numba.set_num_threads(before)
        minidl.set_backend(previous)


@given(st.integers(0, 500), st.integers(1, 9))
def test_shares_of_a_batch_cover_it_once_in_rank_order(batch_size, ranks):
    bounds = [shard_bounds(batch_size, rank, ranks) for rank in range(ranks)]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch_size
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_sharded_batches_take_each_ranks_rows_of_the_global_order():
    class Batches:
        def __len__(self):
            return 2

        def epoch(self, epoch):
            yield np.arange(8) + 100 * epoch, np.arange(8)
            yield np.arange(3), np.arange(3)

    shares = [list(ShardedBatches(Batches(), rank, 2).epoch(1)) for rank in range(2)]
    assert [x.tolist() for x, _ in shares[0]] == [[100, 101, 102, 103], [0]]
    assert [x.tolist() for x, _ in shares[1]] == [[104, 105, 106, 107], [1, 2]]


def test_strategy_for_accepts_true_false_none_or_a_data_parallel():
    assert strategy_for(None) is None and strategy_for(False) is None
    assert isinstance(strategy_for(True), DataParallel)
    strategy = DataParallel()
    assert strategy_for(strategy) is strategy
    with pytest.raises(TypeError, match="distributed must be"):
        strategy_for("yes")
    with pytest.raises(ValueError, match="bucket_bytes"):
        DataParallel(bucket_bytes=0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        DataParallel(timeout=0)


def test_a_bad_timeout_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("MINIDL_MPI_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MINIDL_MPI_TIMEOUT must be a positive number of seconds, got 'soon'"):
        DataParallel()
    monkeypatch.setenv("MINIDL_MPI_TIMEOUT", "2.5")
    assert DataParallel().timeout == 2.5


def test_buckets_hold_every_trainable_gradient_once_in_backward_order():
    model = presets.seed_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy")
    buckets = GradientBuckets(DataParallel(bucket_bytes=64 * 1024), model)
    entries = [(layer.name, key) for bucket in buckets.buckets for layer, key in bucket.entries]
    expected = [(layer.name, key) for layer in reversed(model.layers) for key in layer.params]
    assert entries == expected
    assert 1 < len(buckets.buckets) <= 4
    params = sum(layer.params[key].size for layer in model.layers for key in layer.params)
    assert buckets.nbytes == (params + 1) * 4  # float32 gradients and the sample count


def training_data(samples=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((samples, 12, 12, 1), dtype=np.float32), rng.integers(0, 3, samples)


def trained_weights(distributed, **strategy_options):
    minidl.utils.set_random_seed(0)
    x, y = training_data()
    model = presets.tiny_cnn((12, 12, 1), 3)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    strategy = DataParallel(**strategy_options) if distributed else None
    history = model.fit(x, y, batch_size=20, epochs=2, seed=1, verbose=0, validation_split=0.25,
                        distributed=strategy)
    return model.get_weights(), history.history, strategy


@pytest.mark.parametrize("overlap", [True, False])
def test_one_rank_trains_exactly_as_without_distribution(overlap):
    plain_weights, plain_history, _ = trained_weights(False)
    weights, history, strategy = trained_weights(True, overlap=overlap, bucket_bytes=1024)
    for plain, distributed in zip(plain_weights, weights):
        np.testing.assert_allclose(distributed, plain, rtol=1e-6, atol=1e-7)
    assert history.keys() == plain_history.keys()
    for key in history:
        np.testing.assert_allclose(history[key], plain_history[key], rtol=1e-6)
    assert strategy.stats["steps"] == 2 * 4 and strategy.stats["bytes_per_step"] > 0


def test_one_rank_evaluate_matches_the_plain_one():
    x, y = training_data()
    model = presets.tiny_cnn((12, 12, 1), 3)
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy", "f1_score"])
    plain, plain_report = model.evaluate(x, y, batch_size=7, verbose=0, return_dict=True, report=True)
    sharded, report = model.evaluate(x, y, batch_size=7, verbose=0, return_dict=True, report=True,
                                     distributed=True)
    assert sharded == pytest.approx(plain)
    assert str(report) == str(plain_report)


# --------------------------------------------------------------------- mpiexec -n 2 (slow)


def mpiexec():
    path = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip("no mpiexec on PATH (pip install 'minidl[distributed]')")
    return path


def environment(**extra):
    """The tests' environment for every rank: this checkout first on the path, one BLAS thread."""
    env = dict(os.environ, PYTHONPATH=REPOSITORY + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MINIDL_NUM_THREADS="1")
    env.update(extra)
    return {key: value for key, value in env.items() if value is not None}


def run(arguments, ranks=None, timeout=600, **env):
    command = ([mpiexec(), "-n", str(ranks)] if ranks else []) + [str(a) for a in arguments]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(**env),
                            cwd=REPOSITORY)
    return result, time.monotonic() - started


def relative_difference(a, b):
    return max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)) for x, y in zip(a, b))


THREADS_AFTER_A_STEP = ("import os, numba, numpy as np, minidl; from minidl import layers; "
                        "from minidl.distributed import DataParallel; minidl.set_backend('numba'); "
                        "m = minidl.Sequential([layers.Input((3,)), layers.Dense(2)]); m.compile('sgd', 'mse'); "
                        "m.fit(np.ones((8, 3)), np.ones((8, 2)), batch_size=2, verbose=0, distributed=DataParallel()); "
                        "import sys; sys.stdout.write(f'threads={numba.get_num_threads()}\\n')")


@pytest.mark.mpi
@pytest.mark.slow
def test_ranks_on_one_machine_share_its_cores_unless_told_how_many_threads_to_take():
    ranks = 2
    result, _ = run([sys.executable, "-c", THREADS_AFTER_A_STEP], ranks=ranks, MINIDL_NUM_THREADS=None)
    assert result.returncode == 0, result.stderr
    share = max(1, min(os.cpu_count() // ranks, numba.config.NUMBA_NUM_THREADS))
    assert result.stdout.split() == [f"threads={share}"] * ranks
    told, _ = run([sys.executable, "-c", THREADS_AFTER_A_STEP], ranks=ranks, MINIDL_NUM_THREADS="1")
    assert told.returncode == 0, told.stderr
    assert told.stdout.split() == ["threads=1"] * ranks


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_at_batch_b_train_the_weights_of_one_process_at_2b(tmp_path):
    common = ["--dataset", "fashion_mnist", "--limit", "640", "--validation-split", "0", "--optimizer", "sgd",
              "--epochs", "1", "--verbose", "0", "--seed", "3"]
    one, _ = run([sys.executable, "-m", "minidl.cli", "train", *common, "--batch-size", "32",
                  "--output", tmp_path / "one.minidl"])
    assert one.returncode == 0, one.stderr
    two, _ = run([sys.executable, "-m", "minidl.cli", "train", *common, "--batch-size", "16", "--distributed",
                  "--output", tmp_path / "two.minidl"], ranks=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("test (640 samples)") == 1  # rank 0 alone prints
    one_weights = minidl.load_model(tmp_path / "one.minidl").get_weights()
    two_weights = minidl.load_model(tmp_path / "two.minidl").get_weights()
    assert relative_difference(one_weights, two_weights) < 1e-4


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_match_one_process_with_a_last_batch_smaller_than_the_ranks_and_sharded_validation(tmp_path):
    # 97 samples: 12 held out (6 per rank), 85 = 2 x 32 + 21 trained, the last batch split 10 / 11;
    # 74 samples: 9 held out (4 / 5), 65 = 2 x 32 + 1 trained, the last batch's one row on rank 1
    for samples in (97, 74):
        histories, weights = [], []
        for ranks, batch_size in ((None, 32), (2, 16)):
            folder = tmp_path / f"{samples}-{ranks}"
            folder.mkdir()
            arguments = [sys.executable, PROGRAM, "none", folder, "--epochs", "2", "--samples", samples,
                         "--validation-split", "0.125", "--batch-size", batch_size]
            result, _ = run(arguments, ranks=ranks)
            assert result.returncode == 0, result.stderr
            histories.append(ast.literal_eval(result.stdout.split("history: ")[1].splitlines()[0]))
            weights.append(minidl.load_model(folder / "final.minidl").get_weights())
        assert relative_difference(*weights) < 1e-5
        assert histories[0].keys() == histories[1].keys() and "val_accuracy" in histories[0]
        for key in histories[0]:
            np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-5)


@pytest.mark.mpi
@pytest.mark.slow
def test_a_rank_that_raises_stops_every_rank_and_its_checkpoint_resumes_the_run(tmp_path):
    whole = tmp_path / "whole"
    whole.mkdir()
    clean, _ = run([sys.executable, PROGRAM, "none", whole], ranks=2)
    assert clean.returncode == 0, clean.stderr
    assert sorted(os.listdir(whole)) == ["checkpoint-1.minidl", "checkpoint-2.minidl", "checkpoint-3.minidl",
                                         "final.minidl"]  # rank 0 alone wrote them, once each

    failed, seconds = run([sys.executable, PROGRAM, "raise", tmp_path], ranks=2, timeout=300)
    assert failed.returncode != 0
    assert "rank 1 of 2" in failed.stderr and "RuntimeError: injected failure" in failed.stderr
    assert seconds < 120
    assert os.path.exists(tmp_path / "checkpoint-1.minidl")
    assert not os.path.exists(tmp_path / "final.minidl")

    resumed, _ = run([sys.executable, PROGRAM, "none", tmp_path, "--resume"], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs run: [1, 2]" in resumed.stdout
    assert relative_difference(minidl.load_model(whole / "final.minidl").get_weights(),
                               minidl.load_model(tmp_path / "final.minidl").get_weights()) == 0


@pytest.mark.mpi
@pytest.mark.slow
def test_a_killed_rank_stops_the_run_and_the_launcher_names_its_process(tmp_path):
    killed, seconds = run([sys.executable, PROGRAM, "kill", tmp_path], ranks=2, timeout=300)
    assert killed.returncode != 0 and seconds < 120
    start_line = next(line for line in killed.stdout.splitlines() if line.startswith("data-parallel over 2"))
    rank_one_pid = start_line.split("rank 1 pid ")[1].split()[0]
    assert f"PID {rank_one_pid}" in killed.stdout + killed.stderr  # MPICH's report of the dead process


@pytest.mark.mpi
@pytest.mark.slow
def test_a_rank_that_stops_answering_is_named_after_the_timeout(tmp_path):
    hung, seconds = run([sys.executable, PROGRAM, "hang", tmp_path], ranks=2, timeout=300,
                        MINIDL_MPI_TIMEOUT="5")
    assert hung.returncode != 0 and seconds < 120
    assert "rank(s) [1] did not reach" in hung.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_a_callback_that_stops_one_rank_stops_them_all(tmp_path):
    stopped, _ = run([sys.executable, PROGRAM, "stop", tmp_path], ranks=2, timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    assert "epochs run: [0, 1]" in stopped.stdout


def test_the_cli_trains_with_distributed_on_one_rank_as_without(tmp_path, capsys):
    from minidl import cli

    common = ["train", "--dataset", "shapes", "--limit", "96", "--model", "tiny-cnn",
              "--epochs", "1", "--batch-size", "16", "--verbose", "0", "--optimizer", "sgd"]
    assert cli.main([*common, "--output", str(tmp_path / "plain.minidl")]) == 0
    assert cli.main([*common, "--distributed", "--output", str(tmp_path / "one_rank.minidl")]) == 0
    plain = minidl.load_model(tmp_path / "plain.minidl").get_weights()
    one_rank = minidl.load_model(tmp_path / "one_rank.minidl").get_weights()
    assert relative_difference(plain, one_rank) < 1e-6
    assert capsys.readouterr().out.count("saved model to") == 2


@pytest.mark.mpi
@pytest.mark.slow
def test_the_readme_program_trains_on_two_ranks_and_rank_0_alone_reports(tmp_path):
    from tests.markdown import section_python_blocks

    readme = open(os.path.join(REPOSITORY, "README.md")).read()
    program = tmp_path / "train.py"
    program.write_text(section_python_blocks(readme, "## Training on several machines")[0])
    result, _ = run([sys.executable, program], ranks=2)
    assert result.returncode == 0, result.stderr
    reports = re.findall(r"loss: ([0-9.]+) - accuracy: ([0-9.]+)$", result.stdout, re.M)
    assert len(reports) == 3  # two epochs and evaluate, from rank 0 only
    assert float(reports[-1][1]) > 0.6  # chance is 0.1; it reaches about 0.74


def test_with_overlap_a_bucket_starts_while_backward_still_has_steps_to_run(monkeypatch):
    model = presets.seed_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32), np.arange(4)
    events = []
    original_start, original_step_done = GradientBuckets.start, GradientBuckets.step_done
    monkeypatch.setattr(GradientBuckets, "start",
                        lambda buckets, bucket: (events.append("start"), original_start(buckets, bucket)))
    monkeypatch.setattr(GradientBuckets, "step_done",
                        lambda buckets, step: (events.append("step"), original_step_done(buckets, step)))
    steps = len(model.plan.steps)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, distributed=DataParallel(overlap=True))
    assert events.index("start") < steps - 1  # the first bucket left before backward's last step
    assert events.count("start") == 3 and events.count("step") == steps
    events.clear()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, distributed=DataParallel(overlap=False))
    assert events == ["step"] * steps + ["start"] * 3  # every bucket after the whole backward
