"""The package's layers point one way: no import cycle inside casvit_mm, and the
checkpoint code never imports the model.

Read from the source (every ``import`` statement, also those inside functions,
which run later but still tie the modules together), so a new import that
closes a cycle fails here rather than as an ``ImportError`` in some entry point.
"""
import ast
import os
import os.path as osp

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = 'casvit_mm'


def _modules():
    """``{dotted name: path}`` of every module of the package (packages by __init__)."""
    found = {}
    root = osp.join(REPO, PACKAGE)
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(('.', '__'))]
        for name in files:
            if name.endswith('.py'):
                rel = osp.relpath(osp.join(folder, name), REPO)[:-3].split(os.sep)
                if rel[-1] == '__init__':
                    rel = rel[:-1]
                found['.'.join(rel)] = osp.join(folder, name)
    return found


MODULES = _modules()


def _resolve(module, path, node):
    """The package modules one import statement of ``module`` loads."""
    is_package = path.endswith('__init__.py')
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split('.') if is_package else module.split('.')[:-1]
            base = base[:len(base) - (node.level - 1)]
            stem = '.'.join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ''
        # `from x import y` loads x.y when y is a module, else x
        targets = [f'{stem}.{a.name}' if f'{stem}.{a.name}' in MODULES else stem
                   for a in node.names]
    loaded = set()
    for target in targets:
        parts = target.split('.')
        # the module and the packages above it (their __init__ runs first), except
        # the importer's own packages (already being imported) and the package root,
        # casvit_mm/__init__.py: the public API that imports everything
        for i in range(2, len(parts) + 1):
            name = '.'.join(parts[:i])
            if name in MODULES and not (module == name or module.startswith(name + '.')):
                loaded.add(name)
    return loaded


def import_graph():
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(open(path).read(), path)
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _resolve(module, path, node)
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_known_imports():
    """The walk itself works: edges that exist are found (a broken resolver would
    find no cycle in anything)."""
    graph = import_graph()
    assert 'casvit_mm.checkpoint.backbone' in graph['casvit_mm.models.casvit']
    assert 'casvit_mm.models.casvit' in graph['casvit_mm.deploy.switch']
    assert 'casvit_mm.utils.sample_errors' in graph['casvit_mm']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle({m: d for m, d in import_graph().items() if m != PACKAGE})
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


@pytest.mark.parametrize('lower, upper', [
    ('casvit_mm.checkpoint', 'casvit_mm.models'),  # the model imports the loaders
    ('casvit_mm.models', 'casvit_mm.deploy'),  # the deploy code switches the model
    ('casvit_mm.models', 'casvit_mm.engine'),
    ('casvit_mm.checkpoint', 'casvit_mm.engine'),  # the hooks use the checks
    ('casvit_mm.checkpoint', 'casvit_mm.cli'),  # the tools' plumbing builds models
])
def test_lower_layers_import_nothing_from_upper_ones(lower, upper):
    graph = import_graph()
    offending = sorted(f'{m} imports {d}' for m, deps in graph.items()
                       if m == lower or m.startswith(lower + '.')
                       for d in deps if d == upper or d.startswith(upper + '.'))
    assert not offending, offending


def _names_imported_from(package, importers):
    """``{(importing module, imported module, name)}`` of every ``from ... import name``
    in the modules under ``importers`` that loads a module under ``package``."""
    found = set()
    for module, path in MODULES.items():
        if not (module == importers or module.startswith(importers + '.')):
            continue
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                found |= {(module, alias.name, '*') for alias in node.names
                          if alias.name.startswith(package)}
            elif isinstance(node, ast.ImportFrom):
                for target in _resolve(module, path, node):
                    if target == package or target.startswith(package + '.'):
                        found |= {(module, target, alias.name) for alias in node.names}
    return found


def test_the_model_calls_one_pure_checkpoint_function():
    """models/ knows of checkpoints one pure conversion function, which its load hook
    calls; reading files is mmengine's (init_cfg) or the caller's."""
    used = _names_imported_from('casvit_mm.checkpoint', 'casvit_mm.models')
    names = {name for _, _, name in used}
    assert names == {'convert_for_backbone'}, used
    assert {target for _, target, _ in used} <= {'casvit_mm.checkpoint',
                                                 'casvit_mm.checkpoint.backbone'}, used
