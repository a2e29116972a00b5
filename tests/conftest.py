import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def embedded_path():
    """Folder of the embedded SmolLM2-135M safetensors checkpoint (converted once into the cache)."""
    from planner.models import resolve_source

    return resolve_source(None).path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
