"""Write the toy image-folder classification set (see casvit_mm/toy_data/imagenet.py).

Example:
    python tools/dataset_converters/make_toy_imagenet.py data/toy_imagenet
"""
import argparse

from casvit_mm.toy_data.imagenet import make_toy_imagenet


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', nargs='?', default='data/toy_imagenet', help='output folder')
    parser.add_argument('--num-train', type=int, default=48, help='images per class')
    parser.add_argument('--num-val', type=int, default=16, help='images per class')
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    info = make_toy_imagenet(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f"toy image folder: {info['train']} train / {info['val']} val images of "
          f"classes {', '.join(info['classes'])} in {info['root']}")


if __name__ == '__main__':
    main()
