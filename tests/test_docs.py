"""Figures the docs quote from the code stay the code's: a doc names a
constant as `module.NAME` (N), and this checks N against the module."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUOTED = re.compile(r"`(\w+)\.([A-Z][A-Z0-9_]+)` \((\d+)\)")
#: where the docs' short module names live
PACKAGES = {"pio": "devmodel.hfi1.pio", "sdma": "devmodel.hfi1.sdma", "port": "devmodel.hfi1.port",
            "device": "devmodel.hfi1.device", "topology": "devmodel.fabric.topology",
            "remote_cable": "devmodel.fabric.remote_cable"}

QUOTES = [(doc.name, *m.groups()) for doc in sorted((ROOT / "docs").glob("*.md"))
          for m in QUOTED.finditer(doc.read_text())]


def test_the_docs_quote_some_figures():
    assert len(QUOTES) >= 3, QUOTES


@pytest.mark.parametrize("doc,module,name,figure", QUOTES, ids=[f"{d}:{m}.{n}" for d, m, n, _ in QUOTES])
def test_a_figure_the_docs_quote_is_the_codes(doc, module, name, figure):
    assert module in PACKAGES, f"{doc} quotes {module}.{name}: say where {module} lives in PACKAGES"
    actual = getattr(importlib.import_module(PACKAGES[module]), name)
    assert actual == int(figure), f"{doc} says {module}.{name} is {figure}; the code says {actual}"
