"""signals_deferred: the guard that keeps Ctrl-C from abandoning a daemon call half-way."""

import signal
import threading

import pytest

from image_builder.builder import signals_deferred


@pytest.fixture(autouse=True)
def ctrl_c_interrupts():
    """Ctrl-C as in a terminal: a process started in the background by a shell (`cmd &`)
    begins with SIGINT ignored, and Python then leaves it so, which these tests must not see."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_takes_effect_only_when_the_block_ends() -> None:
    finished = False
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        signal.raise_signal(signal.SIGINT)
        finished = True  # Python runs signal handlers between bytecodes: we got past it
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_reaching_another_thread_is_held_too() -> None:
    """tqdm runs a monitor thread; a process-directed signal may be delivered to it."""
    finished = False
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        thread = threading.Thread(target=signal.raise_signal, args=(signal.SIGINT,))
        thread.start()
        thread.join()
        finished = True
    assert finished


def test_without_a_signal_nothing_happens() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with signals_deferred():
        pass
    assert signal.getsignal(signal.SIGTERM) is before
