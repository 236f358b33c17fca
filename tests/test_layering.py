"""The package's shape: imports point one way, no circles, no module too long.

Every import counts, lazy ones inside functions and ``TYPE_CHECKING`` ones too
(``tests/_import_graph.py``). ``python -m tests._import_graph`` prints the figures.
"""

from __future__ import annotations

import pytest

from tests._import_graph import circles, import_graph, line_counts

MAX_LINES = 450

#: Wings from the bottom up: a module may import from its own wing and from lower
#: ranks only; wings of the same rank (engine and models, batch and evaluation,
#: the command line and the widgets) never import each other.
WINGS: list[tuple[str, int]] = [
    ("napari_persam", 0),  # the version only
    ("napari_persam.core.config", 1),
    ("napari_persam.core.devices", 1),
    ("napari_persam.core.errors", 1),
    ("napari_persam.core.paths", 1),
    ("napari_persam.core.progress", 1),
    ("napari_persam.core.engine", 2),
    ("napari_persam.core.models", 2),
    ("napari_persam.core.io", 3),
    ("napari_persam.core.engine_builder", 4),
    ("napari_persam.core.batch", 5),
    ("napari_persam.core.evaluation", 5),
    ("napari_persam.core", 6),  # the public face
    ("napari_persam._sample_data", 7),
    ("napari_persam.cli", 7),
    ("napari_persam._cli", 7),
    ("napari_persam._widgets", 7),
]
#: Wings that are one even though their names differ.
SAME_WING = {"napari_persam.cli": "napari_persam._cli"}


def wing_of(module: str) -> tuple[str, int]:
    """The most specific wing a module belongs to."""
    matches = [
        (name, rank) for name, rank in WINGS if module == name or module.startswith(name + ".")
    ]
    name, rank = max(matches, key=lambda item: len(item[0]))
    return SAME_WING.get(name, name), rank


def test_there_is_no_import_circle():
    assert circles(import_graph()) == []


def test_every_import_points_down_or_stays_in_its_wing():
    wrong = []
    for module, targets in import_graph().items():
        wing, rank = wing_of(module)
        for target in sorted(targets):
            target_wing, target_rank = wing_of(target)
            if target_wing == wing or target_rank < rank:
                continue
            wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_core_never_imports_a_front_end():
    for module, targets in import_graph().items():
        if module.startswith("napari_persam.core"):
            assert not [
                t for t in targets if t.startswith(("napari_persam._", "napari_persam.cli"))
            ]


@pytest.mark.parametrize("module", sorted(line_counts()))
def test_no_module_is_two_ideas(module):
    assert line_counts()[module] <= MAX_LINES, f"{module} has more than {MAX_LINES} lines"


def test_the_checker_sees_lazy_imports(tmp_path):
    package = tmp_path / "napari_persam"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("def f():\n    from napari_persam.core import b\n")
    (package / "core" / "b.py").write_text("from napari_persam.core.a import f\n")
    assert circles(import_graph(package)) == [["napari_persam.core.a", "napari_persam.core.b"]]
