"""What ``import casvit_mm`` costs and still does: no codebase imported for nothing,
every registry filled when its codebase is imported (in either order)."""
import subprocess
import sys
import textwrap

from casvit_mm.import_hooks import when_imported
from helpers import REPO

CODEBASES = ('mmpretrain', 'mmdet', 'mmseg')


def run_python(code):
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_import_casvit_mm_imports_no_codebase_then_registers_on_their_import():
    out = run_python('''
        import sys
        import casvit_mm
        from casvit_mm.checkpoint import safe_loader_is_registered
        assert safe_loader_is_registered()
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in %r)
        assert 'mmpretrain.apis' not in sys.modules, loaded
        assert not loaded, loaded
        import mmdet.registry, mmseg.registry
        assert mmdet.registry.MODELS.get('CASViT') is casvit_mm.CASViT
        assert mmseg.registry.MODELS.get('CASViT') is casvit_mm.CASViT  # imports mmseg.models
        from mmpretrain import list_models
        from mmpretrain.registry import MODELS
        assert MODELS.get('CASViT') is casvit_mm.CASViT
        print(sorted(list_models('*casvit*')))
    ''' % (CODEBASES,))
    assert out.split() == ["['casvit-m_3rdparty_in1k',", "'casvit-s_3rdparty_in1k',",
                           "'casvit-t_3rdparty_in1k',", "'casvit-xs_3rdparty_in1k']"]


def test_codebases_imported_first_are_filled_at_once():
    out = run_python('''
        import mmdet.registry, mmpretrain
        import casvit_mm
        assert mmdet.registry.MODELS.get('CASViT') is casvit_mm.CASViT
        from mmpretrain import get_model
        model = get_model('casvit-xs_3rdparty_in1k')
        print(type(model.backbone).__name__, casvit_mm.REGISTERED_SCOPES)
    ''')
    assert out.split() == ['CASViT', "['mmpretrain',", "'mmdet',", "'mmseg']"]


def test_when_imported_runs_now_or_after_the_first_import(tmp_path, monkeypatch):
    (tmp_path / 'casvit_watched_module.py').write_text('VALUE = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, 'casvit_watched_module', raising=False)
    calls = []
    when_imported('casvit_watched_module',
                  lambda: calls.append(sys.modules['casvit_watched_module'].VALUE))
    assert calls == []
    import casvit_watched_module
    assert calls == [1]  # after the module's own code, once
    assert type(casvit_watched_module.__loader__).__name__ == 'SourceFileLoader'
    when_imported('casvit_watched_module', lambda: calls.append('now'))
    assert calls == [1, 'now']
