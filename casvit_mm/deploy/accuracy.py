"""The accuracy cost of a lower precision, in the config's own metric.

Shared by ``tools/deployment/quantize.py`` (fp32 file against int8 file) and
``tools/deployment/bf16_eval.py`` (fp32 deploy mode against bf16 deploy mode):
PyTorch models scored with the config's evaluator through their own
``test_step`` (what ``tools/test.py`` runs), and the table of both metrics
with the loss checked on the headline metrics.
"""
import copy

import torch

__all__ = ['HEADLINE', 'evaluate_models', 'metric_drop']

# The metrics a maximum loss is checked on: what the codebases report first.
# The per-size COCO APs and mAP@0.75 are printed but not checked (a few
# objects each on small val splits: one detection moves them by a point).
HEADLINE = ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50', 'mIoU', 'accuracy/top1')


def evaluate_models(models, cfg):
    """Score PyTorch models on the config's test split with its test evaluator,
    on the same batches (``model.test_step``, as ``tools/test.py``).

    Returns:
        list[dict]: The metrics of each model.
    """
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.get('test_dataloader') or cfg.val_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg)
    evaluator_cfg = copy.deepcopy(cfg.get('test_evaluator') or cfg.val_evaluator)
    evaluators = [Evaluator(copy.deepcopy(evaluator_cfg)) for _ in models]
    for ev in evaluators:
        ev.dataset_meta = loader.dataset.metainfo
    for data in loader:
        for model, ev in zip(models, evaluators):
            with torch.no_grad():
                ev.process(data_samples=model.test_step(copy.deepcopy(data)), data_batch=data)
    return [ev.evaluate(len(loader.dataset)) for ev in evaluators]


def metric_drop(reference, low, scale=1., names=('fp32', 'int8'), max_drop=0.02,
                print_fn=print, both_ways=False):
    """Print both metrics and their difference; return ``(ok, worst loss)``.

    ``scale``: what the metrics are divided by to be on the 0-1 scale (100
    for mmseg and mmpretrain, which report percent). The loss is checked on
    :data:`HEADLINE` metrics only; per-class tables are skipped. ``both_ways``:
    a parity check (an exported file against PyTorch), where a gain counts as
    much as a loss.
    """
    worst, checked = 0., []
    a, b = names
    print_fn(f'{"metric":<28}{a:>10}{b:>10} {f"{b} - {a}":>13}')
    for key, value in reference.items():
        try:  # scalars only (mmseg's are numpy floats)
            value, other = float(value), float(low[key])
        except (TypeError, ValueError, KeyError):
            continue
        drop = (value - other) / scale
        headline = key.endswith(HEADLINE)
        if headline:
            worst, checked = max(worst, abs(drop) if both_ways else drop), checked + [key]
        print_fn(f'{key:<28}{value / scale:>10.4f}{other / scale:>10.4f}{-drop:>+14.4f}'
                 f'{"" if headline else "  (not checked)"}')
    ok = worst <= max_drop
    print_fn(f'{"OK  " if ok else "FAIL"} largest {"difference" if both_ways else "loss"} '
             f'{worst:.4f} on {", ".join(checked)} (allowed {max_drop:g})')
    return ok, worst
