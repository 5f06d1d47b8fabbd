from __future__ import annotations

import pytest

from .support import build, why_not_here


@pytest.fixture(scope="session")
def image() -> str:
    """The runtime image, built once per run by deploy/image.sh (skips where it cannot)."""
    reason = why_not_here()
    if reason is not None:
        pytest.skip(reason)
    build("build")
    from .support import IMAGE

    return IMAGE


@pytest.fixture(scope="session")
def test_image(image: str) -> str:
    """The runtime image plus pytest (the Containerfile's ``test`` target)."""
    build("test")
    from .support import TEST_IMAGE

    return TEST_IMAGE
