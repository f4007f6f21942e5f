"""The fixtures several test files share; the helpers (paths, running a tool,
reading a run's files) are in ``helpers.py``."""
import pytest

from casvit_mm.toy_data.coco import make_toy_coco


@pytest.fixture(scope='session')
def toy(tmp_path_factory):
    """8 training and 4 validation images of 64 px (toy COCO), generated once."""
    root = tmp_path_factory.mktemp('toy_coco')
    return make_toy_coco(str(root), num_train=8, num_val=4, image_size=64, seed=0)
