import os
import shutil
import tempfile

import pytest
import torch

# the suite runs on 2 cores; more threads than cores only adds contention
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_configure(config: pytest.Config) -> None:
    # precision=auto keeps its measurement under $XDG_CACHE_HOME: the suite's own, for every
    # test and the commands they start, never the user's ~/.cache
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="segformer-tests-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)
