import pytest


@pytest.fixture(scope="session")
def spark():
    """A real Spark ``local[2]`` session shared by the Spark tests (skips only if pyspark is absent)."""
    pytest.importorskip("pyspark", reason="pyspark is part of the [test] extra; install it to run Spark tests")
    from spark_session import get_session  # tests/ is on sys.path (no __init__.py)

    return get_session("local[2]")
