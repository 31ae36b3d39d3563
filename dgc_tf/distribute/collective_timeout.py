"""Why dgc_tf sets no collective timeout, and the warning when a user does.

A collective launched with `CommunicationOptions(timeout_seconds=T)` arms a
watchdog in TensorFlow's `BaseCollectiveExecutor` ("TODO: Share the timeout
watchdog thread among collectives"), and on Linux that watchdog is a detached
thread that sleeps for T seconds (`Env::SchedClosureAfter`). A worker therefore
holds about (collectives launched per second) x T idle threads. A small model
launches hundreds of collectives per second, so with T = 120 s a worker reaches
the system's thread limit within the first thousand steps and aborts with
`std::system_error: Resource temporarily unavailable`.

A dead worker does not need that timeout to be noticed: the coordination
service that `MultiWorkerMirroredStrategy` starts reports tasks that stop
sending heartbeats, and aborts the survivors' collectives with
`UnavailableError: ... tasks are unhealthy (stopped sending heartbeats)`.
"""

import warnings


class CollectiveTimeoutWarning(RuntimeWarning):
    """A collective timeout was set: TensorFlow keeps a sleeping thread per launch."""


def warn_if_collective_timeout(options):
    """Warns once per call site when `options` asks for a collective timeout.

    Args:
      options: a `tf.distribute.experimental.CommunicationOptions`, or None.
    """
    seconds = getattr(options, "timeout_seconds", None)
    if not seconds:
        return
    warnings.warn(
        f"CommunicationOptions(timeout_seconds={seconds:g}): TensorFlow keeps one sleeping "
        f"thread per collective launch for {seconds:g} s, so a worker holds about "
        f"(collectives per second) x {seconds:g} threads and a long run can abort with "
        "'Resource temporarily unavailable'. A dead worker is already reported without a "
        "timeout (the coordination service's missed heartbeats). Leave timeout_seconds unset "
        "for training runs; keep it only for short ones.",
        CollectiveTimeoutWarning, stacklevel=3)
