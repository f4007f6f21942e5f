"""Training curves as a picture, from the ``scalars.json`` mmengine writes.

mmengine's ``LocalVisBackend`` logs every training step (loss, learning rate)
and every validation (metrics) as one JSON object a line in
``<work_dir>/<timestamp>/vis_data/scalars.json``. mmdet's ``analyze_logs.py
plot_curve`` draws these but needs seaborn, which nothing here installs; this
draws the same curves with matplotlib alone (an mmengine dependency).
"""
import json
import os
import os.path as osp

__all__ = ['read_scalars', 'plot_curves']


def read_scalars(path):
    """The records of a ``scalars.json``: training ones (with ``loss``) and
    validation ones (metrics, no ``loss``), each a list of dicts."""
    train, val = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                (train if 'loss' in record else val).append(record)
    return train, val


def _metric_keys(val):
    """The validation metrics worth a curve: numbers other than step/time,
    leaving out those that are -1 at every validation (COCO's "not
    applicable", e.g. ``bbox_mAP_l`` on a set without large objects), which
    would only stretch the axis."""
    keys = []
    for record in val:
        for key, value in record.items():
            if key not in ('step', 'epoch', 'iter', 'time', 'data_time') \
                    and isinstance(value, (int, float)) and key not in keys:
                keys.append(key)
    return [k for k in keys if any(r.get(k, -1) != -1 for r in val)]


def plot_curves(scalars, out_file, title=None):
    """Draw the training loss by step, and beside it each validation metric,
    into ``out_file`` (a PNG).

    Args:
        scalars (str): A ``scalars.json``.
        out_file (str): Where the picture is written (folders are created).
        title (str, optional): A title over the picture.

    Returns:
        list[str]: The curves drawn (``'loss'`` then the metric names).
    """
    import matplotlib
    matplotlib.use('Agg')  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    train, val = read_scalars(scalars)
    if not train:
        raise ValueError(f'{scalars}: no training step with a loss to draw')
    metrics = _metric_keys(val)
    panels = 2 if metrics else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([r['step'] for r in train], [r['loss'] for r in train], label='loss')
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss')
    ax.grid(alpha=0.3)
    if metrics:
        ax = axes[0][1]
        for key in metrics:
            points = [(r['step'], r[key]) for r in val if key in r]
            ax.plot(*zip(*points), marker='o', label=key)
        ax.set_xlabel('iteration')
        ax.set_ylabel('validation metric')
        ax.legend(fontsize='small')
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return ['loss', *metrics]
