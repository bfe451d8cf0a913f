"""TensorFlow settings shared by the TensorFlow backends (``mesmer``, ``stardist``)."""

from __future__ import annotations

from typing import Any

__all__ = ["allow_memory_growth"]


def allow_memory_growth(tf: Any) -> None:
    """Let TensorFlow take GPU memory as it needs it, not all of it at start.

    Parameters
    ----------
    tf : module
        The imported ``tensorflow`` module (imported by the caller, so this
        module stays free of TensorFlow).
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised: memory growth can only be set before first use
