"""Peak memory of one training step, with and without ``with_cp``.

``with_cp=True`` makes the CAS-ViT backbone checkpoint the activations of
every block (recomputed in the backward pass): less memory, more time. This
tool measures both on the same config, batch and input size.

Each setting runs in a fresh process, so memory one setting freed cannot
serve the other. There the model is built from the config (random weights,
nothing downloaded), one warm-up ``train_step`` runs (AdamW allocates its
state there), then one more ``train_step`` is measured: data preprocessor,
forward, losses, backward and the optimiser update of the config.

* CPU: the process's peak resident memory during the step (``VmHWM``, reset
  just before it through ``/proc/self/clear_refs``; Linux only) minus its
  resident memory before the step (after returning freed memory to the OS);
* CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` during the
  step minus the memory allocated before it.

Example (RetinaNet-CAS-ViT-M, 2 images of 800x1344, about 3 minutes on 2 cores):
  python tools/analysis_tools/train_memory.py configs/detection/retinanet_casvit_m.py
"""
import argparse
import json
import os.path as osp
import subprocess
import sys
import time

import torch

from casvit_mm.cli import build_model


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default='configs/detection/retinanet_casvit_m.py')
    parser.add_argument('--batch', type=int, default=2, help='images per step (default 2)')
    parser.add_argument('--shape', nargs=2, type=int, default=[800, 1344], metavar=('H', 'W'),
                        help='input size after the pipeline (default 800 1344, the '
                        'padded size of a COCO image resized to 1333x800)')
    parser.add_argument('--with-cp', choices=['off', 'on', 'both'], default='both')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (CPU)')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--child', choices=['off', 'on'], help=argparse.SUPPRESS)
    return parser.parse_args()


def make_batch(cfg, batch, hw):
    """Random images with ground truth of the config's task."""
    scope = cfg.get('default_scope', 'mmdet')
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        with_mask = bool(cfg.model.get('roi_head', {}).get('mask_head'))
        return demo_mm_inputs(batch_size=batch, image_shapes=[(3, *hw)] * batch,
                              num_items=[5] * batch, num_classes=80, with_mask=with_mask)
    if scope == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        gen = torch.Generator().manual_seed(0)
        samples = []
        for _ in range(batch):
            sample = SegDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw))
            sample.gt_sem_seg = PixelData(data=torch.randint(
                0, cfg.model.decode_head.num_classes, (1, *hw), generator=gen))
            samples.append(sample)
        images = [torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=gen)
                  for _ in range(batch)]
        return dict(inputs=images, data_samples=samples)
    raise SystemExit(f'train_memory handles mmdet and mmseg configs, not {scope!r}')


def resident_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'no {field} in /proc/self/status')


def release_free_memory():
    """Give memory freed by the warm-up step back to the OS (glibc keeps it
    resident otherwise), so that the resident memory before the step is what
    the model, optimiser state and data really hold."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline then includes cached free memory


def measure(args, with_cp):
    """One setting, in this process: returns a dict of MiB and seconds."""
    from mmengine.optim import build_optim_wrapper
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.config, with_cp=with_cp).to(args.device)
    model.train()
    optim_wrapper = build_optim_wrapper(model, model.cfg.optim_wrapper)
    data = make_batch(model.cfg, args.batch, tuple(args.shape))
    model.train_step(data, optim_wrapper)  # warm-up: optimiser state, allocator pools
    if args.device == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        release_free_memory()
        before = resident_kib('VmRSS') * 1024
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM, the peak resident memory, to the current RSS
    start = time.perf_counter()
    losses = model.train_step(data, optim_wrapper)
    if args.device == 'cuda':
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resident_kib('VmHWM') * 1024
    seconds = time.perf_counter() - start
    mib = 1 << 20
    return dict(with_cp=with_cp, before_mib=round(before / mib, 1),
                peak_mib=round(peak / mib, 1), step_mib=round((peak - before) / mib, 1),
                step_s=round(seconds, 2), loss=round(float(losses['loss']), 4),
                threads=torch.get_num_threads())


def main():
    args = parse_args()
    if args.child:
        print('RESULT ' + json.dumps(measure(args, args.child == 'on')), flush=True)
        return
    if not osp.isfile(args.config):
        raise SystemExit(f'config {args.config!r} not found')
    settings = ['off', 'on'] if args.with_cp == 'both' else [args.with_cp]
    results = []
    for setting in settings:
        cmd = [sys.executable, __file__, args.config, '--batch', str(args.batch),
               '--shape', *map(str, args.shape), '--device', args.device,
               '--child', setting] + (['--threads', str(args.threads)] if args.threads else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f'the with_cp={setting} run failed (exit {proc.returncode})')
        results.append(json.loads(lines[-1][len('RESULT '):]))
    what = 'peak resident memory' if args.device == 'cpu' else 'peak allocated memory'
    print(f'{args.config}: one training step, {args.batch} x 3 x {args.shape[0]} x '
          f'{args.shape[1]}, {args.device} ({what})')
    print(f'{"with_cp":<9}{"before MiB":>12}{"peak MiB":>10}{"step +MiB":>11}{"step s":>8}')
    for r in results:
        print(f'{str(r["with_cp"]):<9}{r["before_mib"]:>12.0f}{r["peak_mib"]:>10.0f}'
              f'{r["step_mib"]:>11.0f}{r["step_s"]:>8.1f}')
    if len(results) == 2 and results[1]['step_mib'] > 0:
        print(f'with_cp saves {results[0]["step_mib"] - results[1]["step_mib"]:.0f} MiB of '
              f'the step ({results[0]["step_mib"] / results[1]["step_mib"]:.2f}x less)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, batch=args.batch, shape=args.shape,
                           device=args.device, results=results), f, indent=1)


if __name__ == '__main__':
    main()
