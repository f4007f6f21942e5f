"""The training-curve picture from mmengine's scalars.json, and its tool."""
import json

import pytest
from PIL import Image

from casvit_mm.utils import plot_curves, read_scalars
from helpers import run_tool


def write_scalars(path, with_val):
    records = [dict(lr=1e-3, loss=2.0 - 0.1 * i, loss_cls=1.0, step=i + 1) for i in range(10)]
    if with_val:
        # bbox_mAP_l: COCO's -1 for "no large objects", at every validation
        records.append({'coco/bbox_mAP': 0.25, 'coco/bbox_mAP_50': 0.5,
                        'coco/bbox_mAP_l': -1.0, 'step': 10})
    path.parent.mkdir(parents=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return path


@pytest.mark.parametrize('with_val', [False, True])
def test_plot_curves_draws_loss_and_metrics(with_val, tmp_path):
    scalars = write_scalars(tmp_path / 'run' / 'vis_data' / 'scalars.json', with_val)
    train, val = read_scalars(scalars)
    assert len(train) == 10 and len(val) == int(with_val)
    # every metric that has a value is drawn; the one that is -1 throughout is not
    drawn = plot_curves(str(scalars), str(tmp_path / 'out' / 'curves.png'), title='toy')
    metrics = ['coco/bbox_mAP', 'coco/bbox_mAP_50'] if with_val else []
    assert drawn == ['loss', *metrics]
    width, height = Image.open(tmp_path / 'out' / 'curves.png').size
    assert height == 400 and width == (1200 if with_val else 600)


def test_plot_curves_needs_a_training_loss(tmp_path):
    scalars = tmp_path / 'scalars.json'
    scalars.write_text(json.dumps({'coco/bbox_mAP': 0.1, 'step': 1}) + '\n')
    with pytest.raises(ValueError, match='no training step'):
        plot_curves(str(scalars), str(tmp_path / 'c.png'))


def test_tool_picks_the_training_run_of_a_work_dir(tmp_path):
    write_scalars(tmp_path / 'work' / '20240101_000000' / 'vis_data' / 'scalars.json', False)
    test_run = tmp_path / 'work' / '20240101_000100' / 'vis_data' / 'scalars.json'
    test_run.parent.mkdir(parents=True)
    test_run.write_text(json.dumps({'coco/bbox_mAP': 0.1, 'step': 300}) + '\n')
    out = run_tool('tools/analysis_tools/plot_curves.py', tmp_path / 'work',
                   '--out', tmp_path / 'curves.png')
    assert '20240101_000000' in out and (tmp_path / 'curves.png').is_file()
