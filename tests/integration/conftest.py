import pytest


@pytest.fixture(scope="session")
def spark():
    """A real Spark ``local[2]`` session shared by the Spark tests (skips only if pyspark is absent)."""
    pytest.importorskip("pyspark", reason="pyspark is part of the [test] extra; install it to run Spark tests")
    from spark_session import get_session  # tests/ is on sys.path (no __init__.py)

    return get_session("local[2]")


# A module's own fixture of the same name takes precedence over these.

@pytest.fixture(scope="module")
def backend():
    """Two real worker processes, shared by the tests of one module."""
    from cerebro import LocalBackend

    with LocalBackend(num_workers=2) as b:
        yield b


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One local store per module (runs on the same data share the prepared partitions)."""
    from cerebro import LocalStore

    return LocalStore(str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def df():
    """scikit-learn's digits as a pandas frame (features, label)."""
    from cerebro.datasets import digits_frame

    return digits_frame()
