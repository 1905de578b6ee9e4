"""sevwire is the pure layer both sides share: it must import nothing from hv or firmware."""

import ast
import pathlib

import sevwire


def test_no_imports_from_hv_or_firmware():
    root = pathlib.Path(sevwire.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("hv", "firmware"), f"{path.name} imports {name}"


def test_public_api_is_explicit():
    assert len(set(sevwire.__all__)) == len(sevwire.__all__)
    for name in sevwire.__all__:
        assert hasattr(sevwire, name), name
