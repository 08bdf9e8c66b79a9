"""The package's layers point one way: no module imports a layer above its own, and no
package-internal import hides inside a function (where it would dodge a cycle)."""
import ast
from pathlib import Path

from s2aformer_mm.testing import REPO

PACKAGE = REPO / 's2aformer_mm'
#: bottom to top; a module may import its own layer and the ones below it
LAYERS = [
    {'compat', 'runtime', 'checkpoint', 'complexity', 'datasets'},
    {'models'},
    {'integrations'},
    {'apis', 'engine'},
    {'', 'testing'},  # __init__.py registers everything on import; testing: for tests
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _layer(module: str) -> int:
    top = module.split('.')[1] if '.' in module else ''
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _imports(path: Path):
    """(imported module, line, inside a function) for each package-internal import."""
    module = _module(path)
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    tree = ast.parse(path.read_text())
    in_function = {id(n) for f in ast.walk(tree)
                   if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                targets = ['.'.join(base + ([node.module] if node.module else [a.name]))
                           for a in node.names]
            else:
                targets = [node.module]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target and target.split('.')[0] == 's2aformer_mm':
                yield target, node.lineno, id(node) in in_function


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob('*.py'):
        _layer(_module(path))  # StopIteration names a module missing from LAYERS


def test_no_import_reaches_up_or_hides_in_a_function():
    upward, hidden = [], []
    for path in sorted(PACKAGE.rglob('*.py')):
        source = _module(path)
        for target, line, in_function in _imports(path):
            where = f'{path.relative_to(PACKAGE.parent)}:{line} imports {target}'
            if _layer(target) > _layer(source):
                upward.append(where)
            if in_function:
                hidden.append(where)
    assert not upward, upward
    assert not hidden, hidden


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a models module importing the engine is reported."""
    bad = tmp_path / 's2aformer_mm' / 'models' / 'x.py'
    bad.parent.mkdir(parents=True)
    bad.write_text('from ..engine import UsageError\n\ndef f():\n    from .. import apis\n')
    monkeypatch.setattr(f'{__name__}.PACKAGE', tmp_path / 's2aformer_mm')
    found = list(_imports(bad))
    assert found == [('s2aformer_mm.engine', 1, False), ('s2aformer_mm.apis', 4, True)]
    assert _layer(found[0][0]) > _layer('s2aformer_mm.models.x')
