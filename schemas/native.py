"""The native extension (``native/``: Rust, PyO3, built by maturin at install), imported in one place: an
installation without it fails with how to build it, wherever a hot path first needs it."""

from __future__ import annotations

from typing import Any


def native() -> Any:
    """The ``sdg_native`` module (``Reader``, ``contents``, ``chain``).

    Raises:
        ImportError: it is not installed; the message says how to build it.
    """
    try:
        import sdg_native
    except ImportError as e:
        raise ImportError("sdg_native, the native extension of the hot paths, is not installed: pip install ./native "
                          "(builds it with cargo)") from e
    return sdg_native
