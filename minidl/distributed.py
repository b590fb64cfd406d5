"""Data-parallel training over MPI: N processes (ranks), each with a copy of the model, train as one.

Start the processes with ``mpiexec -n N python3 train.py`` (or ``mpiexec -n N minidl train ...
--distributed``) and pass ``distributed=True`` (or a :class:`DataParallel`) to ``fit`` and
``evaluate``.  What one step does on every rank::

    the global batch     rows [k*B*N, (k+1)*B*N) of the (seed, epoch) order   (the single-process order)
    this rank's share    rows [m*r//N, m*(r+1)//N) of it (m = its size; B rows each but in a last batch)
    local gradient       g_r = dL_r/dw, the mean over this rank's n_r samples
    global gradient      g = sum_r n_r g_r / sum_r n_r, the mean over all m samples  (Allreduce sums)
    update               the optimizer applies g; every rank holds the same weights after it

so N ranks at per-rank batch B compute the update of one process at batch ``B x N``, up to float
rounding.  The gradients travel in a few *buckets*: contiguous buffers of consecutive layers'
gradients, in backward order (:class:`GradientBuckets`).  A bucket's non-blocking ``Iallreduce`` starts
as soon as backward has passed all of its layers, while backward goes on through the layers before
them; the step waits for every bucket just before the optimizer's update.

Before the first step rank 0 broadcasts the weights and the optimizer state, so ranks that
initialized (or loaded) differently start from rank 0's model.  Loss and metrics are sums of counts
over each rank's samples (``Mean``'s total and count, accuracy's hits, a confusion matrix), summed
over the ranks at the end of an epoch, so the logs every rank sees are those of the whole data set;
validation and ``evaluate`` are sharded the same way.  Only rank 0 shows the progress bar and runs
callbacks that write files (``writes_files``: ``ModelCheckpoint``, ``CSVLogger``); every rank runs
the others (``EarlyStopping``, ``ReduceLROnPlateau``) on the same logs, so they decide alike, and a
callback that stops training on one rank stops it on all (the stop flag is reduced after each step).

**BatchNorm:** batch statistics are each rank's own (over its B samples, not the global batch), and
the moving averages are those of rank 0 when it saves; only the weights' gradients are reduced.
The numbers then differ from one process at ``B x N`` wherever a model normalizes over the batch.

**Faults:** an exception on one rank prints ``rank r of N failed: ...`` on stderr and calls
``MPI_Abort``, which stops every rank at once.  A rank killed by a signal is reported by the launcher
(MPICH names its PID; ``fit`` with ``verbose`` prints each rank's PID at the start).  A rank that
stops answering (it hangs, or left the run early) makes the others give up after ``timeout``
seconds, naming the ranks that did not answer.  A checkpoint of a finished epoch resumes the run on
any number of ranks (``minidl.load_model`` on every rank, then ``fit(initial_epoch=...)``).
"""

import contextlib
import os
import socket
import sys
import time

import numpy as np

from minidl.backend import get_backend, ops

#: seconds a rank waits for the others at any collective before it names the missing ones and stops
DEFAULT_TIMEOUT = 600.0
#: a bucket is closed once it holds this many bytes of gradients (few calls per step, early starts)
DEFAULT_BUCKET_BYTES = 64 * 1024
#: seconds the ranks that timed out spend finding out which ranks still answer
ROLL_CALL_SECONDS = 2.0
ROLL_CALL_TAG = 7117
#: a waiting rank gives its core away between polls (``MINIDL_MPI_YIELD=0``: spin, as MPICH does);
#: where ranks share cores with other work, a spinning rank steals time from the ranks it waits for
YIELD_WHILE_WAITING = os.environ.get("MINIDL_MPI_YIELD", "1") != "0"
#: the counters a metric sums over its samples (see :mod:`minidl.metrics`); summed over the ranks
ADDITIVE_METRIC_STATE = ("total", "count", "correct", "hits", "matrix")


def mpi():
    """The ``mpi4py.MPI`` module, with a clear error when the ``distributed`` extra is missing."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("distributed training needs mpi4py and an MPI library: "
                          "pip install 'minidl[distributed]'") from error
    return MPI


def timeout_seconds(timeout):
    """``timeout``, else ``MINIDL_MPI_TIMEOUT``, else :data:`DEFAULT_TIMEOUT`, as positive seconds."""
    origin = "DataParallel: timeout"
    if timeout is None:
        origin, timeout = "MINIDL_MPI_TIMEOUT", os.environ.get("MINIDL_MPI_TIMEOUT", DEFAULT_TIMEOUT)
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ValueError(f"{origin} must be a positive number of seconds, got {timeout!r}")
    return seconds


def strategy_for(distributed):
    """``fit``'s and ``evaluate``'s ``distributed`` argument as a :class:`DataParallel` or ``None``."""
    if distributed is None or distributed is False:
        return None
    if distributed is True:
        return DataParallel()
    if isinstance(distributed, DataParallel):
        return distributed
    raise TypeError(f"distributed must be True, False, None or a minidl.distributed.DataParallel, "
                    f"got {type(distributed).__name__}")


def shard_bounds(batch_size, rank, ranks):
    """Rank ``rank``'s rows ``[start, stop)`` of a global batch of ``batch_size`` rows split over
    ``ranks``: equal shares, the first ranks one row fewer when it does not divide."""
    return batch_size * rank // ranks, batch_size * (rank + 1) // ranks


class ShardedBatches:
    """This rank's share of each global batch of ``batches`` (an ``ArrayBatches`` or ``LoaderBatches``
    of ``training``), which every rank draws in the same order."""

    def __init__(self, batches, rank, ranks):
        self.batches, self.rank, self.ranks = batches, rank, ranks

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch):
        for x_batch, targets in self.batches.epoch(epoch):
            start, stop = shard_bounds(len(x_batch), self.rank, self.ranks)
            yield x_batch[start:stop], targets[start:stop]


class RankFailure(RuntimeError):
    """Another rank stopped answering at a collective."""


def share_the_cores(ranks_here):
    """Give this rank its share of this machine's cores, ``cores // ranks_here`` threads (at least
    one), unless ``MINIDL_NUM_THREADS`` says otherwise: the CPU backend runs every kernel, GEMMs
    included, on its pool of threads (every core by default), and ranks on one machine that each
    took every core would fight over them.  Sets ``MINIDL_NUM_THREADS``, which the first training
    call reads, and on the ``numba`` backend the calling thread's count at once."""
    if "MINIDL_NUM_THREADS" in os.environ:
        return
    share = max(1, (os.cpu_count() or 1) // ranks_here)
    os.environ["MINIDL_NUM_THREADS"] = str(share)
    if get_backend() == "numba":
        import numba

        from minidl.kernels import cpu

        cpu.set_num_threads(min(share, numba.config.NUMBA_NUM_THREADS))


class DataParallel:
    """Synchronous data-parallel training over an MPI communicator (default ``COMM_WORLD``).

    ``bucket_bytes`` sets the gradient buckets' size (a bucket closes at the layer that reaches
    it), ``overlap=False`` starts every bucket's reduction only after the whole backward pass (to
    measure what the overlap saves), ``timeout`` bounds every wait for the other ranks (seconds).
    After ``fit``, :attr:`stats` holds the bytes reduced per step and the seconds spent waiting.
    Each rank takes its share of its machine's cores (:func:`share_the_cores`).
    """

    def __init__(self, comm=None, bucket_bytes=DEFAULT_BUCKET_BYTES, overlap=True, timeout=None):
        MPI = mpi()
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.ranks = self.comm.Get_rank(), self.comm.Get_size()
        this_machine = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        share_the_cores(this_machine.Get_size())
        this_machine.Free()
        if not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"DataParallel: bucket_bytes must be a positive int, got {bucket_bytes!r}")
        self.bucket_bytes, self.overlap = bucket_bytes, bool(overlap)
        self.timeout = timeout_seconds(timeout)
        self.buckets = None
        self.stats = {"steps": 0, "bytes_per_step": 0, "buckets": 0, "wait_seconds": 0.0}

    @property
    def is_chief(self):
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

    # ---------------------------------------------------------------------- waiting, faults

    def wait(self, request, what):
        """Wait for a non-blocking MPI ``request``; after :attr:`timeout` seconds raise
        :class:`RankFailure` naming the ranks that no longer answer."""
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if YIELD_WHILE_WAITING:
                os.sched_yield()
            if time.monotonic() > deadline:
                silent = self.silent_ranks()
                raise RankFailure(f"rank {self.rank} of {self.ranks}: rank(s) {silent or 'unknown'} did not "
                                  f"reach {what} within {self.timeout:g} s (MINIDL_MPI_TIMEOUT)")

    def silent_ranks(self):
        """The ranks that do not answer a roll call within :data:`ROLL_CALL_SECONDS`: every rank
        that times out tells all others it is alive and listens for the same from them."""
        MPI = mpi()
        others = [rank for rank in range(self.ranks) if rank != self.rank]
        for rank in others:
            self.comm.isend(self.rank, dest=rank, tag=ROLL_CALL_TAG)
        answered, deadline = set(), time.monotonic() + ROLL_CALL_SECONDS
        while time.monotonic() < deadline and len(answered) < len(others):
            status = MPI.Status()
            if self.comm.iprobe(source=MPI.ANY_SOURCE, tag=ROLL_CALL_TAG, status=status):
                answered.add(self.comm.recv(source=status.Get_source(), tag=ROLL_CALL_TAG))
            else:
                time.sleep(0.01)
        return [rank for rank in others if rank not in answered]

    @contextlib.contextmanager
    def failures_stop_every_rank(self):
        """On an exception in this rank, print ``rank r of N failed: ...`` and ``MPI_Abort`` every
        rank (with one rank, just re-raise): the others would otherwise wait for it forever."""
        try:
            yield
        except BaseException as error:
            if self.ranks == 1:
                raise
            print(f"minidl: rank {self.rank} of {self.ranks} (pid {os.getpid()} on {socket.gethostname()}) "
                  f"failed: {type(error).__name__}: {error}; stopping every rank", file=sys.stderr, flush=True)
            self.comm.Abort(1)

    # ------------------------------------------------------------------------ collectives

    def broadcast_model(self, model):
        """Rank 0's weights and optimizer state onto every rank (one ``Ibcast`` of a flat buffer)."""
        weights = model.get_weights()
        flat = np.concatenate([w.ravel() for w in weights]) if weights else np.zeros(0, model.dtype)
        self.wait(self.comm.Ibcast(flat, root=0), "the broadcast of rank 0's weights")
        sizes = np.cumsum([0] + [w.size for w in weights])
        model.set_weights([flat[a:b].reshape(w.shape) for a, b, w in zip(sizes[:-1], sizes[1:], weights)])
        if model.optimizer is not None:
            model.optimizer.set_state(self.comm.bcast(model.optimizer.get_state(), root=0))

    def same_on_every_rank(self, value):
        """Rank 0's ``value`` (a small picklable object), e.g. a seed drawn at random."""
        return self.comm.bcast(value, root=0)

    def any_rank(self, flag):
        """True on every rank when ``flag`` is true on any (e.g. a callback stopped training)."""
        flags = np.array([1 if flag else 0], dtype=np.int32)
        self.wait(self.comm.Iallreduce(mpi().IN_PLACE, flags), "the end of a step")
        return bool(flags[0])

    def summed_logs(self, loss_mean, metrics, classes):
        """Sum each metric's counters (and the loss's total and count) over the ranks, in place, and
        return the logs of the whole data set: ``{"loss": ..., metric.name: ...}``."""
        matrix_shape = (classes, classes)  # a confusion matrix, None on a rank that saw no sample
        counters = [(loss_mean, "total"), (loss_mean, "count")]
        counters += [(metric, name) for metric in metrics for name in ADDITIVE_METRIC_STATE
                     if hasattr(metric, name)]
        values = [np.ravel(np.asarray(getattr(owner, name) if getattr(owner, name) is not None
                                      else np.zeros(matrix_shape), dtype=np.float64))
                  for owner, name in counters]
        flat = np.concatenate(values)
        self.wait(self.comm.Iallreduce(mpi().IN_PLACE, flat), "the sum of the epoch's loss and metrics")
        position = 0
        for (owner, name), value in zip(counters, values):
            summed = flat[position:position + value.size]
            position += value.size
            if name == "matrix":
                setattr(owner, name, summed.reshape(matrix_shape).round().astype(np.int64))
            elif isinstance(getattr(owner, name), int):
                setattr(owner, name, int(round(summed[0])))
            else:
                setattr(owner, name, float(summed[0]))
        return {"loss": loss_mean.result(), **{metric.name: metric.result() for metric in metrics}}

    def gathered(self, outputs):
        """Every rank's list of ``(targets, predictions)`` pairs, in rank order."""
        return [pair for rank_outputs in self.comm.allgather(outputs) for pair in rank_outputs]

    # --------------------------------------------------------------------------- training

    def shards(self, batches):
        """This rank's share of every global batch of ``batches`` (``None`` stays ``None``)."""
        return None if batches is None else ShardedBatches(batches, self.rank, self.ranks)

    def start(self, model, verbose=0):
        """Before the first step: the same weights and optimizer state on every rank, the gradient
        buckets laid out, and (with ``verbose``) rank 0 names every rank's process."""
        self.broadcast_model(model)  # first: it waits for the other ranks at most ``timeout`` seconds
        places = self.comm.allgather((os.getpid(), socket.gethostname()))
        if verbose and self.is_chief:
            print(f"data-parallel over {self.ranks} ranks: " + ", ".join(
                f"rank {rank} pid {pid} on {host}" for rank, (pid, host) in enumerate(places)), flush=True)
        self.buckets = GradientBuckets(self, model)
        self.stats.update(bytes_per_step=self.buckets.nbytes, buckets=len(self.buckets.buckets))

    def train_step(self, model, x_batch, targets):
        """One step on this rank's share of a global batch; every rank applies the same update.
        Returns ``(loss, y_pred)`` of this rank's samples (``y_pred`` is ``None`` for an empty share)."""
        from minidl import training  # training imports this module

        self.buckets.begin(len(targets))
        self.stats["steps"] += 1
        if len(targets):
            return training.train_step(model, x_batch, targets, gradients=self.buckets)
        # a last global batch with fewer rows than ranks leaves this rank nothing: it adds zeros
        self.buckets.finish()
        model.optimizer.apply_gradients(training.trainable_params_and_grads(model))
        return model.regularization_penalty(), None


class GradientBuckets:
    """The trainable gradients of a model in a few contiguous buffers, summed over the ranks.

    Buckets follow backward order (the plan's steps reversed): a bucket holds whole steps' gradients
    and closes once it reaches ``bucket_bytes``; the last one also holds this rank's sample count
    ``n_r``.  Each training step:

    * :meth:`begin` with ``n_r``;
    * :meth:`step_done` after each plan step's backward: when it completes a bucket, the bucket's
      gradients times ``n_r`` are copied in and its ``Iallreduce`` (a sum) starts;
    * :meth:`finish` starts the buckets not started yet, waits for all and puts
      ``sum_r n_r g_r / sum_r n_r`` (the mean gradient over the global batch) in the layers' ``grads``,
      which the optimizer then reads.
    """

    def __init__(self, strategy, model):
        self.strategy, self.model = strategy, model
        self.buckets, current = [], []
        for step in reversed(model.plan.steps):
            entries = [(layer, key) for layer in step.layers if layer.trainable for key in layer.params]
            if not entries:
                continue
            current.append((step, entries))
            if sum(layer.params[key].nbytes for _, es in current for layer, key in es) >= strategy.bucket_bytes:
                self.buckets.append(current)
                current = []
        if current or not self.buckets:
            self.buckets.append(current)
        self.buckets = [Bucket(steps, model.dtype, holds_count=index == len(self.buckets) - 1)
                        for index, steps in enumerate(self.buckets)]
        self.last_step_of = {bucket.steps[-1]: bucket for bucket in self.buckets if bucket.steps}
        self.nbytes = sum(bucket.buffer.nbytes for bucket in self.buckets)

    def begin(self, samples):
        self.samples = samples
        for bucket in self.buckets:
            bucket.request = None

    def step_done(self, step):
        """Called after ``step``'s backward: with ``overlap``, start the bucket it completes, and let
        MPI advance the buckets already started (MPICH moves a non-blocking reduction on only
        inside MPI calls, so without this they would wait for :meth:`finish`)."""
        if not self.strategy.overlap:
            return
        bucket = self.last_step_of.get(step)
        if bucket is not None:
            self.start(bucket)
        for started in self.buckets:
            if started.request is not None:
                started.request.Test()

    def start(self, bucket):
        bucket.pack(self.samples)
        bucket.request = self.strategy.comm.Iallreduce(mpi().IN_PLACE, bucket.buffer)

    def finish(self):
        """Start the buckets not started yet, wait for every sum, put the mean in the layers' grads;
        the seconds spent here go to ``strategy.stats["wait_seconds"]``."""
        started = time.perf_counter()
        for bucket in self.buckets:
            if bucket.request is None:
                self.start(bucket)
        for index, bucket in enumerate(self.buckets):
            self.strategy.wait(bucket.request, f"the gradient sum of bucket {index} at step "
                                               f"{self.model.optimizer.iterations}")
        global_samples = float(self.buckets[-1].buffer[-1])
        for bucket in self.buckets:
            bucket.unpack(1.0 / global_samples)
        self.strategy.stats["wait_seconds"] += time.perf_counter() - started


class Bucket:
    """One contiguous buffer for the gradients of ``steps`` (``[(step, [(layer, key)])]``), and with
    ``holds_count`` one more element for the sample count."""

    def __init__(self, steps_and_entries, dtype, holds_count):
        self.steps = [step for step, _ in steps_and_entries]
        self.entries = [entry for _, entries in steps_and_entries for entry in entries]
        sizes = [layer.params[key].size for layer, key in self.entries]
        self.offsets = np.cumsum([0] + sizes)
        self.holds_count = holds_count
        self.buffer = np.zeros(int(self.offsets[-1]) + int(holds_count), dtype=dtype)
        self.request = None

    def pack(self, samples):
        """``buffer = samples * [every gradient, flattened] (+ [samples])``; zeros when ``samples``
        is 0 (a rank with no rows in this step, whose grads may be stale)."""
        for (layer, key), start, stop in zip(self.entries, self.offsets[:-1], self.offsets[1:]):
            if samples:
                np.multiply(ops.to_host(layer.grads[key]).ravel(), samples, out=self.buffer[start:stop])
            else:
                self.buffer[start:stop] = 0
        if self.holds_count:
            self.buffer[-1] = samples

    def unpack(self, scale):
        """Each layer's ``grads[key]`` becomes ``scale`` times its slice of the summed buffer."""
        for (layer, key), start, stop in zip(self.entries, self.offsets[:-1], self.offsets[1:]):
            mean = self.buffer[start:stop].reshape(layer.params[key].shape) * scale
            grad = layer.grads.get(key)
            if isinstance(grad, np.ndarray) and grad.shape == mean.shape and grad.flags.writeable:
                np.copyto(grad, mean)
            else:
                layer.grads[key] = ops.to_device(mean)
