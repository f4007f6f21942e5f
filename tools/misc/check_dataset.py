"""List every unreadable or inconsistent sample of a config's datasets.

The command line of :mod:`casvit_mm.check_dataset` (which see), so that it also
runs outside the repository as ``python -m casvit_mm.check_dataset CONFIG``:

    python tools/misc/check_dataset.py configs/detection/retinanet_casvit_m.py
    python tools/misc/check_dataset.py CONFIG --splits train --workers 8
"""
from casvit_mm.check_dataset import main

if __name__ == '__main__':
    main()
