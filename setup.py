"""casvit-mm: the CAS-ViT backbone as an OpenMMLab plugin (mmpretrain, mmdet, mmseg)."""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version():
    namespace = {}
    with open(osp.join(HERE, 'casvit_mm', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_readme():
    with open(osp.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='casvit-mm',
    version=read_version(),
    description='CAS-ViT backbone for mmpretrain, mmdet and mmsegmentation',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.9',
    packages=find_packages(include=['casvit_mm', 'casvit_mm.*']),
    # The configs and the model index ship inside the package (casvit_mm/.mim/
    # links to configs/ and model-index.yml) so that `casvit_mm::detection/...`,
    # the metafiles (model names for MIM, mmpretrain's get_model and the
    # inferencers) resolve from a built wheel too.
    package_data={'casvit_mm': ['.mim/model-index.yml', '.mim/configs/*/*.py',
                                '.mim/configs/*/*/*.py', '.mim/configs/*/metafile.yml']},
    # Ranges that import together: mmdet 3.3 and mmseg 1.2 refuse mmcv >= 2.2,
    # mmengine < 0.11 cannot load its own checkpoints with torch >= 2.6.
    install_requires=[
        'torch>=2.0',
        'numpy',
        'mmcv>=2.0.0,<2.2.0',
        'mmengine>=0.11.0rc3,<1.0',
        'mmdet>=3.3.0,<3.4',
        'mmsegmentation>=1.2.2,<1.3',
        'mmpretrain>=1.2.0,<1.3',
    ],
    extras_require={
        'tests': ['pytest>=7', 'onnx', 'onnxruntime', 'onnxscript', 'openvino', 'nncf==3.4.0'],
    },
    zip_safe=False,
)
