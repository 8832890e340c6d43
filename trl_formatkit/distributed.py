"""Several processes (``accelerate launch``, ``torchrun``): who prepares the data first, who speaks.

Under a launcher every process runs the user's script, so without care each one prepares the dataset, runs the
whole-dataset check and says every warning and audit finding: N times the work, N copies of each message. Here:

- :func:`main_process_first`: the main process runs the block first, the others after it (they then reuse its
  ``datasets`` cache files: each ``map`` runs once when the dataset is backed by files; an in-memory dataset
  has no cache, so each process computes the same result itself). trl's own preparation already does this; the
  block also covers trl's step inside it, so the processes pass through in one ordered round, not several;
- :func:`quiet_replicas`: on every process but the main one, trl_formatkit's log records and
  ``FormatKitWarning`` s are dropped (as transformers' ``log_level_replica``), so each is said once per job;
- the rank helpers read ``torch.distributed`` when it is initialized, else the launcher's environment
  (``RANK`` / ``WORLD_SIZE``), so they answer before the process group exists.

Nothing here imports trl, datasets or accelerate at module import; in one process every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .errors import FormatKitWarning, warn

__all__ = [
    "process_index",
    "num_processes",
    "is_main_process",
    "main_process_first",
    "prepared_main_process_first",
    "quiet_replicas",
    "join_job",
    "warn_once_per_job",
]

F = TypeVar("F", bound=Callable[..., Any])
_state = {"depth": 0, "quiet": False}


def _dist() -> Any:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def process_index() -> int:
    """This process's global rank (0 in one process).

    Example:
        >>> process_index()
        0
    """
    dist = _dist()
    return dist.get_rank() if dist is not None else int(os.environ.get("RANK", "0"))


def num_processes() -> int:
    """How many processes the job has (1 in one process).

    Example:
        >>> num_processes()
        1
    """
    dist = _dist()
    return dist.get_world_size() if dist is not None else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the global main process (rank 0), and in a run of one process."""
    return process_index() == 0


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others (trl's order: the global main, then each
    node's local main, then everyone else). Re-entrant: an inner use, and trl's own inside the block, add no
    barrier. An error in the main process's block does not leave the others waiting. A no-op in one process.

    Example:
        >>> with main_process_first():
        ...     prepared = [1, 2, 3]
    """
    if _state["depth"] or num_processes() <= 1:
        _state["depth"] += 1
        try:
            yield
        finally:
            _state["depth"] -= 1
        return
    state = _partial_state()
    _state["depth"] += 1
    try:
        with (
            _goes_first(state, state.is_main_process),
            _goes_first(state, state.is_local_main_process),
            _trl_steps_inline(),
        ):
            yield
    finally:
        _state["depth"] -= 1


def _partial_state() -> Any:
    """accelerate's shared state; joins the launcher's process group if nothing has yet (on CPU it must be told
    ``cpu=True`` to use gloo, as ``TrainingArguments(use_cpu=True)`` does; an initialized state keeps its own)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def join_job(args: Any = None) -> None:
    """Under a launcher: join the process group as the Trainer will (from ``args``, a ``TrainingArguments``, so
    its backend and timeout are the ones used), then :func:`quiet_replicas`. A no-op in one process.

    Example:
        >>> join_job()  # one process
    """
    if args is not None and num_processes() > 1 and _dist() is None:
        getattr(args, "device", None)  # TrainingArguments._setup_devices creates the PartialState
    quiet_replicas()


@contextlib.contextmanager
def _goes_first(state: Any, first: bool) -> Iterator[None]:
    """accelerate's ``_goes_first``, with the first process's barrier in ``finally``: when its block raises (most
    rows train nothing), the others still get through, meet the same error and stop, instead of waiting at the
    barrier until the process group's timeout."""
    if not first:
        state.wait_for_everyone()
    try:
        yield
    finally:
        if first:
            state.wait_for_everyone()


@contextlib.contextmanager
def _trl_steps_inline() -> Iterator[None]:
    """Inside our block, trl's own ``global_then_local_main_first`` adds no barrier: nested barriers would let
    the other processes start while the main one is still preparing (they pair with the inner block's)."""
    try:
        from trl.trainer import sft_trainer
    except ImportError:
        yield
        return
    original = getattr(sft_trainer, "global_then_local_main_first", None)
    if original is None:  # another trl: its nesting costs order, never a deadlock (each process waits as often)
        yield
        return
    sft_trainer.global_then_local_main_first = contextlib.nullcontext
    try:
        yield
    finally:
        sft_trainer.global_then_local_main_first = original


def prepared_main_process_first(method: F) -> F:
    """Decorator: the whole method runs under :func:`main_process_first` (for a trainer's dataset preparation)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with main_process_first():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_main_process()


_MAIN_ONLY = _MainProcessOnly()


def quiet_replicas(*loggers: str) -> None:
    """On processes other than the main one, drop trl_formatkit's ``FormatKitWarning`` s and the named loggers'
    records (default: ``trl_formatkit`` and its children), so each warning and audit finding is said once per
    job. Idempotent; a no-op on the main process and in one process.

    Example:
        >>> quiet_replicas()  # one process: nothing changes
    """
    names = loggers or ("trl_formatkit",)
    for name in names:  # a logger's filters do not see its children's records: filter each known one
        for logger in [logging.getLogger(name), *_children(name)]:
            if _MAIN_ONLY not in logger.filters:
                logger.addFilter(_MAIN_ONLY)
    if not is_main_process() and not _state["quiet"]:
        _state["quiet"] = True
        warnings.filterwarnings("ignore", category=FormatKitWarning)


def _children(name: str) -> list[logging.Logger]:
    prefix = name + "."
    return [
        logger
        for key, logger in logging.root.manager.loggerDict.items()
        if key.startswith(prefix) and isinstance(logger, logging.Logger)
    ]


def warn_once_per_job(message: str, category: type[Warning] = FormatKitWarning) -> None:
    """:func:`trl_formatkit.errors.warn` on the main process only (the others would say the same).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_once_per_job("packed rows attend to each other")
        >>> len(caught)
        1
    """
    if is_main_process():
        warn(message, category)
