"""A sample that cannot be loaded names its file, its dataset and the check to run.

Why: one truncated JPEG in ``train2017/`` stops a run, possibly hours in, with
``AssertionError: failed to load image: <path>`` raised by mmcv's
``LoadImageFromFile`` inside a data-loader worker: no dataset, no index, no
hint that there may be more such files or how to find them.

:func:`name_load_errors` wraps every loading step (``Load*`` transforms) of
the config's training datasets in :class:`NameBadSample`, which re-raises
a failure as :class:`BadSampleError` with the sample's index and files, the
dataset and the command that lists every bad sample before training
(``tools/misc/check_dataset.py``). The wrapped step is built and called
unchanged; ``tools/train.py`` applies it to every config.
"""
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS

from .dataset_configs import describe_dataset, leaf_datasets
from .path_check import check_dataset_command

FILE_KEYS = ('img_path', 'seg_map_path', 'ann_path')


class BadSampleError(RuntimeError):
    """A training sample could not be loaded (the message names it)."""


@TRANSFORMS.register_module()
class NameBadSample(BaseTransform):
    """Run ``transform``; if it fails, raise :class:`BadSampleError` naming the sample.

    Args:
        transform (dict): The loading step (e.g. ``dict(type='LoadImageFromFile')``).
        dataset (str): How to name the dataset in the message.
        config (str): The config file, for the command in the message.
    """

    def __init__(self, transform, dataset='', config='CONFIG'):
        self.step = TRANSFORMS.build(transform)
        self.dataset = dataset
        self.config = config

    def transform(self, results):
        try:
            return self.step(results)
        except BadSampleError:
            raise
        except Exception as e:
            files = ', '.join(str(results[k]) for k in FILE_KEYS if results.get(k))
            raise BadSampleError(
                f'Could not load sample {results.get("sample_idx", "?")} of '
                f'{self.dataset or "the training set"}: {files or "(no file named)"}: '
                f'{type(e).__name__}: {e}\n'
                f'The file may be missing, truncated or not an image. List every such sample '
                f'of this config before training: '
                f'{check_dataset_command(self.config)}') from e

    def __repr__(self):
        return f'{type(self).__name__}({self.step!r})'


def _type_name(step):
    kind = step.get('type')
    return kind if isinstance(kind, str) else getattr(kind, '__name__', '')


def is_loading_step(step):
    """Whether a pipeline step reads files (mmcv / mmdet / mmseg ``Load*`` transforms)."""
    return isinstance(step, dict) and _type_name(step).split('.')[-1].startswith('Load')


def name_load_errors(cfg, config_path):
    """Wrap the loading steps of ``cfg``'s training datasets in :class:`NameBadSample`.

    Returns ``cfg``. Steps already wrapped are left alone.
    """
    loader = cfg.get('train_dataloader') or {}
    for dataset in leaf_datasets(loader.get('dataset')):
        pipeline = dataset.get('pipeline')
        if not pipeline:
            continue
        name = describe_dataset(dataset)
        dataset['pipeline'] = [
            dict(type='NameBadSample', transform=step, dataset=name, config=config_path)
            if is_loading_step(step) else step for step in pipeline]
    return cfg
