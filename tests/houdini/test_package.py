"""The Houdini package files: HDA sections, DialogScript, shelves, package.json, Python 3.9."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.houdini import dialogscript
from tests.houdini.houdini_env import HDA, PLUGIN, PYLIBS, ROOT, TYPE_DIR

HOUDINI_PY = os.path.join(PYLIBS, "hpcdock", "houdini.py")
ROP_PY = os.path.join(PYLIBS, "hpcdock", "rop.py")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _sections(directory):
    lines = _read(os.path.join(directory, "Sections.list")).splitlines()
    assert lines[0] == '""', "Sections.list starts with an empty-quoted line"
    entries = [re.split(r"\s+", ln.strip(), maxsplit=1) for ln in lines[1:] if ln.strip()]
    assert all(len(e) == 2 for e in entries), entries
    return dict(entries)


def _all_files(top):
    for base, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            yield os.path.join(base, f)


def _text_head(path, size=4096):
    """The start of a text file, or None for a binary (or non-UTF-8) one."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(size)
    if b"\0" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return head[: exc.start].decode("utf-8") if exc.start >= size - 4 else None


def test_sections_list_names_every_file_present():
    for directory in (HDA, TYPE_DIR):
        listed = _sections(directory)
        present = set(os.listdir(directory)) - {"Sections.list"}
        assert set(listed) == present, directory
    top = _sections(HDA)
    assert top["Driver_1hpcdock__submit"] == "Driver/hpcdock_submit"
    assert top["INDEX__SECTION"] == "INDEX_SECTION"
    for required in (
        "DialogScript",
        "CreateScript",
        "TypePropertiesOptions",
        "PythonModule",
        "ExtraFileOptions",
        "Tools.shelf",
        "Help",
    ):
        assert required in _sections(TYPE_DIR)


def test_every_xml_file_parses():
    xml_files = [
        p
        for p in _all_files(PLUGIN)
        if p.endswith(".shelf") or p.endswith(".xml") or (_text_head(p) or "").lstrip().startswith("<?xml")
    ]
    assert os.path.join(TYPE_DIR, "Tools.shelf") in xml_files
    assert os.path.join(PLUGIN, "toolbar", "hpcdock.shelf") in xml_files
    for p in xml_files:
        ET.parse(p)


def test_index_section_and_tab_menu():
    index = dict(
        ln.split(":", 1) for ln in _read(os.path.join(HDA, "INDEX__SECTION")).splitlines() if ":" in ln
    )
    assert index["Operator"].strip() == "hpcdock_submit"
    assert index["Table"].strip() == "Driver"
    tool = ET.parse(os.path.join(TYPE_DIR, "Tools.shelf")).getroot().find("tool")
    assert tool.find("toolSubmenu").text == "Farm"
    assert tool.find("toolMenuContext/contextNetType").text == "ROP"
    json.loads(_read(os.path.join(TYPE_DIR, "ExtraFileOptions")))


def test_dialogscript_is_well_formed():
    root = dialogscript.parse(_read(os.path.join(TYPE_DIR, "DialogScript")))
    assert root.first("name").args == ["hpcdock_submit"]
    parms = dialogscript.parms(root)
    names = dialogscript.all_names(parms)
    assert len(names) == len(set(names)), "duplicate parm names"
    for p in parms:
        assert p.name and p.label is not None and (p.type or p.baseparm or p.kind == "multiparm")


@pytest.mark.parametrize(
    "bad",
    [
        '{ parm { name "a" label "A" type string }',
        '{ parm { name "a" type string } }',
        '{ parm { name "a" label "A" } }',
        '{ parm { label "A" type int } }',
        '{ parm { name "a label "A" type int } }',
    ],
)
def test_dialogscript_checker_catches_mistakes(bad):
    with pytest.raises(dialogscript.DialogScriptError):
        dialogscript.parms(dialogscript.parse(bad))


def _parms_read_by_adapter():
    """Names passed to houdini.py's submit-node readers (_sp, _sp_int, _sp_str, _sp_multi)."""
    names = set()
    for node in ast.walk(ast.parse(_read(HOUDINI_PY))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("_sp"):
            for arg in node.args[1:]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return names


def test_dialogscript_declares_every_parm_the_code_reads():
    declared = set(
        dialogscript.all_names(
            dialogscript.parms(dialogscript.parse(_read(os.path.join(TYPE_DIR, "DialogScript"))))
        )
    )
    read = _parms_read_by_adapter()
    assert {"image", "frames_per_task", "envname#", "mountro#", "service_url"} <= read  # the scan works
    read |= {"trange", "f"}  # own_frames() reads the Valid Frame Range of any ROP
    assert read - declared == set()


def test_buttons_call_functions_the_python_module_imports():
    module = _read(os.path.join(TYPE_DIR, "PythonModule"))
    assert len(module.strip().splitlines()) == 1
    m = re.match(r"^from hpcdock\.rop import ([\w, ]+)$", module.strip())
    assert m, module
    imported = {n.strip() for n in m.group(1).split(",")}
    rop_functions = {n.name for n in ast.parse(_read(ROP_PY)).body if isinstance(n, ast.FunctionDef)}
    assert imported <= rop_functions
    parms = dialogscript.parms(dialogscript.parse(_read(os.path.join(TYPE_DIR, "DialogScript"))))
    buttons = {p.name: p for p in parms if p.type == "button"}
    assert set(buttons) == {"submit", "save_bundle"}
    for p in buttons.values():
        call = re.match(r"^hou\.phm\(\)\.(\w+)\(kwargs\)$", p.tags["script_callback"])
        assert call and call.group(1) in imported
        assert p.tags["script_callback_language"] == "python"


def test_render_hook_points_at_a_soho_program_that_exists():
    parms = {
        p.name: p
        for p in dialogscript.parms(dialogscript.parse(_read(os.path.join(TYPE_DIR, "DialogScript"))))
    }
    program = parms["soho_program"].defaults[0]
    assert os.path.isfile(os.path.join(PLUGIN, "soho", program))
    assert parms["soho_outputmode"].defaults == ["2"]
    assert "soho_render" in _read(os.path.join(PLUGIN, "soho", program))


def test_shelf_tools_call_existing_entry_points():
    root = ET.parse(os.path.join(PLUGIN, "toolbar", "hpcdock.shelf")).getroot()
    tools = {t.get("name"): t for t in root.findall("tool")}
    assert {m.get("name") for m in root.find("toolshelf").findall("memberTool")} == set(tools)
    rop_functions = {n.name for n in ast.parse(_read(ROP_PY)).body if isinstance(n, ast.FunctionDef)}
    called = set()
    for t in tools.values():
        script = t.find("script").text
        ast.parse(script)
        called |= set(re.findall(r"from hpcdock\.rop import (\w+)", script))
    assert called == {"submit_selected", "open_monitor"} and called <= rop_functions


def test_package_json():
    pkg = json.loads(_read(os.path.join(ROOT, "package.json")))
    assert pkg["load_package_once"] is True
    assert "19.5" in pkg["enable"] and "houdini_version" in pkg["enable"]
    env = {}
    for item in pkg["env"]:
        ((k, v),) = item.items()
        env[k] = v["value"] if isinstance(v, dict) else v
    assert env["HPCDOCK"] == "$HOUDINI_PACKAGE_PATH"  # the package file sits at the repository root
    resolved = {k: v.replace("$HPCDOCK", ROOT) for k, v in env.items()}
    assert os.path.isdir(resolved["PYTHONPATH"]) and resolved["PYTHONPATH"].endswith("python3.9libs")
    hpath = pkg["hpath"].replace("$HPCDOCK", ROOT)
    assert os.path.isdir(os.path.join(hpath, "otls")) and os.path.isdir(os.path.join(hpath, "toolbar"))


def test_only_the_adapter_imports_hou():
    offenders = []
    for path in _all_files(os.path.join(PYLIBS, "hpcdock")):
        if not path.endswith(".py"):
            continue
        tree = ast.parse(_read(path))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            if "hou" not in [m.split(".")[0] for m in mods]:
                continue
            rel = os.path.relpath(path, PYLIBS)
            if rel == os.path.join("hpcdock", "houdini.py"):
                continue
            # The farm script runs in hython inside the container; it imports hou in main() only.
            if rel == os.path.join("hpcdock", "farm", "render.py") and id(node) not in top:
                continue
            offenders.append(rel)
    assert offenders == []


def _vermin():
    exe = shutil.which("vermin", path=os.path.dirname(sys.executable)) or shutil.which("vermin")
    return [exe] if exe else [sys.executable, "-m", "vermin"]


def test_plugin_is_python_3_9_compatible():
    targets = [os.path.join(PYLIBS), os.path.join(PLUGIN, "soho")]
    proc = subprocess.run(
        _vermin() + ["-t=3.9-", "--no-tips", "--violations", *targets],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if "No module named vermin" in proc.stderr:
        pytest.fail("vermin is not installed (pip install vermin)")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vermin_check_can_fail(tmp_path):
    (tmp_path / "new.py").write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    proc = subprocess.run(
        _vermin() + ["-t=3.9-", "--no-tips", "--violations", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0


def test_submit_node_takes_no_inputs_and_runs_its_soho_program_once():
    """Wired inputs would render on the workstation before the render hook runs."""
    index = dict(
        ln.split(":", 1) for ln in _read(os.path.join(HDA, "INDEX__SECTION")).splitlines() if ":" in ln
    )
    assert index["Inputs"].strip() == "0 to 0"
    root = dialogscript.parse(_read(os.path.join(TYPE_DIR, "DialogScript")))
    assert root.first("inputlabel") is None
    parms = {p.name: p for p in dialogscript.parms(root)}
    assert parms["soho_multiframe"].defaults == ["1"]
    rop = parms["rops"].children[0]
    assert (rop.name, rop.type, rop.tags["opfilter"]) == ("rop#", "oppath", "!!ROP!!")
    assert "opparm $arg1 trange ( off )" in _read(os.path.join(TYPE_DIR, "CreateScript"))
