from pathlib import Path

import pytest
import torch

# Tests run on 2 shared cores; one intra-op thread keeps them from fighting each other.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (../shared/data beside the repository)")
    return SHARED_DATA
