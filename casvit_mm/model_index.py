"""Model names: this package's metafiles in mmpretrain's model index.

``configs/*/metafile.yml`` list every model (name, config, official result,
official file) and ``model-index.yml`` imports them; an installed package reads
them from ``casvit_mm/.mim/``. mmpretrain's ``ModelHub`` accepts extra indexes
(``register_model_index``), which is what makes
``mmpretrain.get_model('casvit-m_3rdparty_in1k', pretrained=PATH)`` (or
``pretrained=True``: ``checkpoints/casvit-m_3rdparty_in1k.pth``),
``list_models('*casvit*')`` and ``ImageClassificationInferencer`` work by name.
"""
import os.path as osp
from typing import List

from mmengine.fileio import load

MIM_DIR = osp.join(osp.dirname(osp.abspath(__file__)), '.mim')
MODEL_INDEX = osp.join(MIM_DIR, 'model-index.yml')
CLASSIFICATION_METAFILE = osp.join(MIM_DIR, 'configs', 'classification', 'metafile.yml')


def register_model_index() -> List[str]:
    """Add the classification models to mmpretrain's ``ModelHub`` (once).

    Only the classifiers: ``get_model`` builds with mmpretrain's registry, so
    detectors and segmentors are found by name through mmdet's / mmseg's
    inferencers instead (docs/checkpoints.md). ``import casvit_mm`` calls this
    when ``mmpretrain.apis`` is imported (at once if it already is,
    :mod:`casvit_mm.import_hooks`): importing it here would import every
    mmpretrain inferencer into every process. Their ``Weights`` are
    ``casvit_mm://<name>`` in the metafile itself (``checkpoints/<name>.pth``,
    :mod:`casvit_mm.checkpoint.locate`). Returns the names registered.
    """
    from mmpretrain.apis import ModelHub
    names = [m['Name'].lower() for m in load(CLASSIFICATION_METAFILE)['Models']]
    if not all(ModelHub.has(name) for name in names):
        ModelHub.register_model_index(CLASSIFICATION_METAFILE, config_prefix=MIM_DIR)
    return names


def _metafile_models():
    index = load(MODEL_INDEX)
    for metafile in index['Import']:
        yield from load(osp.join(MIM_DIR, metafile))['Models']


def model_names():
    """Every model name of the metafiles (classification, detection, segmentation)."""
    return [m['Name'] for m in _metafile_models()]


def config_of(name):
    """The config file of a model name, e.g. for ``DetInferencer(model=config_of(name))``.

    Why: mmengine's inferencers use their ``scope`` argument both to find the
    metafile (the model index of the package named ``scope``) and as the
    registry scope, so ``DetInferencer(name, scope='mmdet')`` never sees this
    package's index, and ``scope='casvit_mm'`` finds the name but then looks up
    mmdet's transforms in mmengine's root registry (``KeyError: PackDetInputs``).
    ``ImageClassificationInferencer`` takes names directly (mmpretrain's model
    index, :func:`register_model_index`).
    """
    for model in _metafile_models():
        if model['Name'].lower() == name.lower():
            return osp.join(MIM_DIR, model['Config'])
    raise ValueError(f'Unknown CAS-ViT model {name!r}; known: {model_names()}')
