"""Where a relative checkpoint path is found, and what to say when it is not.

Why: the configs name the ImageNet weights ``checkpoints/casvit-xs_3rdparty_in1k.pth``
(the converter's output, docs/checkpoints.md), a path relative to where one
runs. A project of one's own runs elsewhere: the file was not found, and only
after the dataloaders were built. A relative path is therefore looked for where
you run (what every OpenMMLab tool does) and then in the casvit-mm checkout
whose configs are used (the folder of ``configs/`` for a source or editable
install), and a missing file says where it was looked for.

``casvit_mm://NAME`` is the weights of model NAME of the model index
(``get_model(NAME, pretrained=True)``, ``ImageClassificationInferencer(NAME,
pretrained=True)``): ``checkpoints/NAME.pth``, found the same way; nothing is
downloaded (mmengine's ``CheckpointLoader`` scheme, like its ``mmcls://``).
"""
import os
import os.path as osp
from typing import List, Mapping, Optional, Tuple, Union

MIM_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim')
SCHEME = 'casvit_mm://'


def checkout_dir() -> Optional[str]:
    """The folder holding the configs this package reads (a source checkout's root),
    or None for an installed wheel, whose configs are copies inside the package."""
    configs = osp.join(MIM_DIR, 'configs')
    if not osp.islink(configs):
        return None
    return osp.dirname(osp.realpath(configs))


def search_dirs() -> List[str]:
    """Where relative checkpoint paths are looked for, in order."""
    dirs = [os.getcwd()]
    checkout = checkout_dir()
    if checkout and osp.realpath(checkout) != osp.realpath(dirs[0]):
        dirs.append(checkout)
    return dirs


def candidates(path: Union[str, os.PathLike]) -> List[str]:
    """The files a relative ``path`` may be; ``[path]`` when it is absolute."""
    path = osp.expanduser(os.fspath(path))
    if osp.isabs(path):
        return [path]
    return [osp.join(d, path) for d in search_dirs()]


def resolve_checkpoint(path: Union[str, os.PathLike]) -> str:
    """The existing file ``path`` names (see :func:`search_dirs`), or ``path``
    unchanged when none exists or it is a URL."""
    path = os.fspath(path)
    if '://' in path:
        return path
    for candidate in candidates(path):
        if osp.isfile(candidate):
            return candidate
    return path


def where_looked(path: Union[str, os.PathLike]) -> str:
    """``'a, b'``: the candidates of ``path``, for messages."""
    return ', '.join(candidates(path))


def model_file(name: str) -> str:
    """The relative file of model ``name`` of the index: ``checkpoints/<name>.pth``."""
    return osp.join('checkpoints', f'{name}.pth')


def _pretrained_paths(node, where):
    """``(config key, path)`` of every ``init_cfg`` of type Pretrained under ``node``."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and isinstance(node.get('checkpoint'), str):
            yield where + '.checkpoint', node['checkpoint']
        for key, value in node.items():
            yield from _pretrained_paths(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _pretrained_paths(value, f'{where}.{i}')


def missing_checkpoints(cfg: Mapping) -> List[Tuple[str, str, str]]:
    """``[(config key, path, where looked)]`` of the checkpoints a training run of
    ``cfg`` would read (``init_cfg`` Pretrained, ``model.pretrained``, ``load_from``)
    that exist nowhere. URLs and ``casvit_mm://`` names are left to their loaders."""
    wanted = list(_pretrained_paths(cfg.get('model'), 'model'))
    if isinstance((cfg.get('model') or {}).get('pretrained'), str):
        wanted.append(('model.pretrained', cfg.model.pretrained))
    if isinstance(cfg.get('load_from'), str) and cfg.get('resume') is not True:
        wanted.append(('load_from', cfg.load_from))
    return [(key, path, where_looked(path)) for key, path in wanted
            if '://' not in path and not osp.isfile(resolve_checkpoint(path))]
