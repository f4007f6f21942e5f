"""Write the toy ADE20K-format segmentation set (see casvit_mm/toy_data/ade.py).

Example:
    python tools/dataset_converters/make_toy_ade.py data/toy_ade
"""
import argparse

from casvit_mm.toy_data.ade import make_toy_ade


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', nargs='?', default='data/toy_ade', help='output folder')
    parser.add_argument('--num-train', type=int, default=100)
    parser.add_argument('--num-val', type=int, default=25)
    parser.add_argument('--size', type=int, nargs=2, default=(160, 120),
                        metavar=('WIDTH', 'HEIGHT'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    info = make_toy_ade(args.out, args.num_train, args.num_val, tuple(args.size), args.seed)
    print(f"toy ADE20K: {info['train']} training / {info['val']} validation images of "
          f"classes {', '.join(info['classes'])} in {info['root']}")


if __name__ == '__main__':
    main()
