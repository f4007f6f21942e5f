"""Write the toy COCO-format shapes data set used by the demo and the tests.

    python tools/dataset_converters/make_toy_coco.py data/toy_coco
    python tools/dataset_converters/make_toy_coco.py /tmp/shapes --num-train 8 --num-val 4 --image-size 64

Deterministic: the same arguments always write the same files
(see :func:`casvit_mm.toy_data.coco.make_toy_coco`).
"""
import argparse

from casvit_mm.toy_data.coco import make_toy_coco


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', nargs='?', default='data/toy_coco',
                        help='output folder (default: data/toy_coco)')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--image-size', type=int, default=160)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    paths = make_toy_coco(args.root, args.num_train, args.num_val, args.image_size,
                          args.seed)
    print(f'toy COCO ({", ".join(paths["classes"])}): {args.num_train} train and '
          f'{args.num_val} val images of {args.image_size} px under {paths["root"]}')


if __name__ == '__main__':
    main()
