"""Multi-process training and testing on machines without CUDA (gloo).

Why: with ``--launcher pytorch`` mmengine 0.11 starts the process group in
``mmengine.dist.init_dist``, which first calls ``torch.cuda.set_device`` -- on
a CPU-only PyTorch that fails (``module 'torch._C' has no attribute
'_cuda_setDevice'``). It then wraps the model in
``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``, and PyTorch's DDP
refuses ``device_ids`` for a model on the CPU. Last, PyTorch's SyncBatchNorm
runs on GPUs only (``SyncBatchNorm expected input tensor to be on GPU``), and
mmengine turns SyncBN back into BN only for single-process runs. So
``torchrun`` + mmengine cannot train on CPUs as is.

:func:`setup_cpu_distributed` does these things differently, before the
runner is built, and leaves everything else to mmengine: it opens the process
group itself (mmengine then sees it open and skips ``init_dist``), asks for
DDP without ``device_ids`` and makes the model's SyncBN layers plain BN
(statistics per process, as in a single-process run). It does nothing when
CUDA is available or the launcher is ``none``.

:func:`closing_process_group` ends what was opened (by this module or by
mmengine on GPUs): every process destroys its process group before Python
shuts down, as PyTorch asks of every distributed program.
"""
import contextlib
import logging

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN', 'SyncBatchNorm')


def sync_bn_to_bn(cfg):
    """Turn every ``norm_cfg`` of type SyncBN inside ``cfg`` into BN; return how many."""
    changed = 0
    if isinstance(cfg, dict):
        norm = cfg.get('norm_cfg')
        if isinstance(norm, dict) and norm.get('type') in SYNC_BN_TYPES:
            norm['type'] = 'BN'
            changed += 1
        for value in cfg.values():
            changed += sync_bn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        changed += sum(sync_bn_to_bn(value) for value in cfg)
    return changed


def setup_cpu_distributed(cfg: Config) -> None:
    """Start the gloo process group of a torchrun job on the CPU; adapt ``cfg``.

    Args:
        cfg (Config): A config whose ``launcher`` was set by the tool.

    Returns:
        Config: ``cfg``, with ``model_wrapper_cfg.device_ids=None`` when the
        job is distributed on the CPU.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return cfg
    if launcher != 'pytorch':
        raise SystemExit(
            f'--launcher {launcher} on a machine without CUDA: mmengine\'s {launcher} '
            f'launcher binds each process to a GPU. Start CPU processes with torchrun '
            f'instead (bash tools/dist_train.sh CONFIG NPROC, which passes --launcher '
            f'pytorch); inside a Slurm allocation, run that script with srun once per node.')
    if not dist.is_initialized():
        dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
        dist_cfg.pop('init_backend', None)
        dist_cfg.setdefault('backend', 'gloo')
        # torchrun's RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (env://).
        dist.init_process_group(**dist_cfg)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    if sync_bn_to_bn(cfg.model) or cfg.pop('sync_bn', None):
        print_log('SyncBN runs on GPUs only: BN with per-process statistics is used '
                  'on the CPU.', logger='current', level=logging.WARNING)
    return cfg


@contextlib.contextmanager
def closing_process_group():
    """Destroy the process group when the run inside the block ends.

    Why: a gloo process group left open until interpreter exit can abort the
    process after a run that went well (``terminate called without an active
    exception``, SIGABRT): its worker threads still hold tensors while Python
    shuts down. torchrun then reports the whole job as failed, at random (seen
    about once in ten 2-process CPU runs on a loaded machine). PyTorch's docs
    ask every process to call ``destroy_process_group()`` at the end of
    ``main()``; mmengine's runner never does.

    A run that ends normally meets the other processes at a barrier first, so
    no process closes its connections while another still reads from them.
    A deliberate stop (``SystemExit``: pre-emption, divergence) destroys the
    group without a barrier (the pre-emption hook has already met the others
    at one; a diverged rank may be alone). Any other exception leaves the
    group as it is: the process fails either way, and a destroy could wait on
    a peer that is gone.
    """
    try:
        yield
    except SystemExit:
        _destroy_process_group()
        raise
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    _destroy_process_group()


def _destroy_process_group():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
