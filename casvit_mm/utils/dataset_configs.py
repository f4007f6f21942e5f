"""The dataset configs of a config: one walk under the dataset wrappers.

mmengine's ``RepeatDataset`` / ``ClassBalancedDataset`` (``dataset=``) and
``ConcatDataset`` (``datasets=[...]``) wrap the datasets that read files; the
path check (:mod:`.path_check`), the sample check (:mod:`.sample_check`) and the
bad-sample wrapper (:mod:`.sample_errors`) all look at those leaves.
"""
from typing import List, Optional


def leaf_datasets(dataset: Optional[dict]) -> List[dict]:
    """The dataset configs under wrappers (``dataset=``, ``datasets=[...]``), in order;
    the config dicts themselves, so that a caller may change them in place."""
    if not dataset:
        return []
    if dataset.get('dataset') is not None:
        return leaf_datasets(dataset['dataset'])
    if dataset.get('datasets') is not None:
        return [leaf for d in dataset['datasets'] for leaf in leaf_datasets(d)]
    return [dataset]


def describe_dataset(dataset_cfg: dict) -> str:
    """``CocoDataset (data/coco/ annotations/x.json)``-style name of a dataset config."""
    kind = dataset_cfg.get('type')
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', str(kind))
    where = ' '.join(str(dataset_cfg[k]) for k in ('data_root', 'ann_file')
                     if dataset_cfg.get(k))
    return f'{kind} ({where})' if where else kind
