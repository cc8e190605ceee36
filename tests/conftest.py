import pytest

from gpner.data.paths import data_root


@pytest.fixture(scope="session")
def shared_data():
    """The shared data directory; tests that need it skip with a reason when it is absent."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set GPNER_DATA to point at it)")
    return root
