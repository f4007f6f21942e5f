"""casvit-mm: the CAS-ViT backbone as an OpenMMLab plugin (mmpretrain, mmdet, mmseg)."""
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = osp.dirname(osp.abspath(__file__))


def read_version():
    namespace = {}
    with open(osp.join(HERE, 'casvit_mm', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


# The start-up hook that lets mmengine resolve `casvit_mm::` config paths in any
# process (mmdet's own tools, the inferencers) without `import casvit_mm`:
# casvit_mm_config_hook.py explains it. A .pth file must sit at the top of
# site-packages, which package_data cannot do, so both builds copy it there.
PTH = 'casvit_mm_config_hook.pth'


class BuildPyWithPth(build_py):
    """Wheels and plain installs: casvit_mm_config_hook.pth at the wheel's top level."""

    def run(self):
        super().run()
        self.copy_file(osp.join(HERE, PTH), osp.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [osp.join(self.build_lib, PTH)]


class EditableWheelWithPth(editable_wheel):
    """`pip install -e .`: the editable wheel only holds its own path hook, so the
    .pth is added to the files it installs next to it (setuptools >= 64)."""

    def _run_build_commands(self, dist_name, unpacked_wheel, *args, **kwargs):
        # (setuptools' own step that fills the wheel's top level; verified with 81)
        result = super()._run_build_commands(dist_name, unpacked_wheel, *args, **kwargs)
        shutil.copy(osp.join(HERE, PTH), osp.join(unpacked_wheel, PTH))
        return result


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
    py_modules=['casvit_mm_config_hook'],
    cmdclass={'build_py': BuildPyWithPth, 'editable_wheel': EditableWheelWithPth},
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
        'tests': ['pytest>=7', 'onnx', 'onnxruntime', 'onnxscript', 'openvino', 'nncf==3.4.0',
                  # mobile runtimes (docs/deploy.md, Mobile): 1.4.1 declares torch>=2.13
                  'executorch==1.4.1', 'torchao==0.18.0', 'coremltools==9.0', 'pandas'],
        # LiteRT (docs/deploy.md, Mobile; about 800 MB): requirements/litert.txt, the
        # dependencies of litert-torch 0.10.0 less transformers (it breaks mmpretrain's
        # import); litert-torch itself: pip install --no-deps litert-torch==0.10.0
        # (tools/setup_env.sh does both with CASVIT_LITERT=1)
        'litert': ['ai-edge-litert[model-utils]==2.3.0', 'ai-edge-quantizer==0.10.0',
                   'litert-converter==0.5.0', 'litert-lm-builder==0.18.1', 'jax==0.10.2',
                   'jaxlib==0.10.2', 'jaxtyping==0.3.11', 'absl-py', 'fire', 'kagglehub',
                   'multipledispatch', 'safetensors', 'sentencepiece', 'tabulate', 'rich',
                   'scipy'],
    },
    zip_safe=False,
)
