import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import ARCHITECTURES, build


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request):
    """(name, model, inputs) for every test architecture, in float64."""
    model, x = build(request.param)
    return request.param, model, x
