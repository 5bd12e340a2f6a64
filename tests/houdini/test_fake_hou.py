"""The fake ``hou`` behaves as SideFX documents the calls it stands for, so wrong code fails against it."""

from __future__ import annotations


def _chain(hou, tmp_path):
    geo = hou.fake_create(
        "/out/geo1",
        "geometry",
        {"trange": 1, "f": (1.0, 3.0, 1.0), "sopoutput": f"{tmp_path}/geo.$F.bgeo"},
        output_parm="sopoutput",
    )
    mantra = hou.fake_create(
        "/out/mantra1",
        "ifd",
        {"trange": 1, "f": (1.0, 3.0, 1.0), "vm_picture": f"{tmp_path}/b.$F4.exr"},
        inputs=[geo],
        output_parm="vm_picture",
    )
    return geo, mantra


def test_frame_variables_are_read_whole(hou):
    hou.fake_state().vars.update({"FSTART": "1001", "FEND": "1100"})
    node = hou.fake_create(
        "/out/x", "geometry", {"a": "$FSTART-$FEND@$FPS", "b": "${FSTART}_$F3", "c": "$FF$Fx"}
    )
    hou.setFrame(7)
    assert node.parm("a").eval() == "1001-1100@24"
    assert node.parm("b").eval() == "1001_007"
    assert node.parm("c").eval() == "7$Fx"  # $Fx is no variable: left as it is


def test_render_renders_inputs_first_unless_ignore_inputs(hou, tmp_path):
    _, mantra = _chain(hou, tmp_path)
    mantra.render(frame_range=(2, 3))
    assert hou.fake_state().rendered == [
        ("/out/geo1", 2),
        ("/out/geo1", 3),
        ("/out/mantra1", 2),
        ("/out/mantra1", 3),
    ]
    hou.fake_state().rendered.clear()
    mantra.render(frame_range=(2, 2), ignore_inputs=True)
    assert hou.fake_state().rendered == [("/out/mantra1", 2)]


def test_bypass_lock_and_strict(hou, tmp_path):
    geo, mantra = _chain(hou, tmp_path)
    geo.bypass(True)
    mantra.render(frame_range=(1, 1))
    assert hou.fake_state().rendered == [("/out/mantra1", 1)]
    geo.bypass(False)
    geo.setLocked(True)
    hou.fake_state().rendered.clear()
    mantra.render(frame_range=(1, 1))
    assert hou.fake_state().rendered == [("/out/mantra1", 1)] and geo.isLocked()
    mantra.setLocked(True)
    hou.fake_state().rendered.clear()
    mantra.render(frame_range=(1, 1))
    assert hou.fake_state().rendered == []
    mantra.setLocked(False)
    geo.setLocked(False)
    geo.parm("trange").set(2)  # strict: only its own 1-3
    hou.fake_state().rendered.clear()
    mantra.parm("f1").set(2.0)
    mantra.parm("f2").set(5.0)
    mantra.render()
    assert [r for r in hou.fake_state().rendered if r[0] == "/out/geo1"] == [
        ("/out/geo1", 2),
        ("/out/geo1", 3),
    ]
    assert [r[1] for r in hou.fake_state().rendered if r[0] == "/out/mantra1"] == [2, 3, 4, 5]


def test_render_current_frame_ignores_frame_range(hou, tmp_path):
    _, mantra = _chain(hou, tmp_path)
    mantra.parm("trange").set(0)
    hou.setFrame(9)
    mantra.render(frame_range=(1, 3), ignore_inputs=True)
    assert hou.fake_state().rendered == [("/out/mantra1", 9)]


def test_render_listing_and_hscript_quoting(hou, tmp_path):
    _chain(hou, tmp_path)
    out, err = hou.hscript("render -p -c -F '/out/mantra1'")
    assert (out, err) == ("1 [ ] /out/geo1\t( 1 3 1 )\n2 [ 1 ] /out/mantra1\t( 1 3 1 )\n", "")
    assert "Invalid output driver" in hou.hscript("render -p -c -F /out/nope")[1]
    hou.hscript("set -g A = '$HIP/x'")
    assert hou.fake_state().vars["A"] == "$HIP/x"
    hou.hscript('set -g B = "$HIPNAME/x"')
    assert hou.fake_state().vars["B"] == "untitled/x"


def test_node_types_carry_their_category(hou):
    sop = hou.fake_create("/obj/geo1/filecache1", "filecache::2.0", {}, category="Sop")
    lop = hou.fake_create("/stage/usdrender_rop1", "usdrender_rop", {}, category="Lop")
    assert sop.type().nameWithCategory() == "Sop/filecache::2.0"
    assert lop.type().nameWithCategory() == "Lop/usdrender_rop"
    assert hou.timeToFrame(1.0) == 25.0


def test_a_rop_asset_renders_its_inner_rop_and_keeps_it_across_save_and_load(hou, tmp_path):
    hou.fake_open_scene(str(tmp_path / "shot.hip"))
    karma = hou.fake_create("/out/karma1", "karma", {"trange": 1, "f": (1.0, 2.0, 1.0)})
    karma.fake_inner = hou.fake_create(
        "/out/karma1/lopnet/karma/rop_usdrender",
        "usdrender_rop",
        {"lopoutput": "$HIP/usd/k.$F4.usd"},
        output_parm="lopoutput",
        category="Lop",
    )
    saved = hou.hipFile.saveAsBackup()
    hou.fake_reset()
    hou.hipFile.load(saved)
    assert hou.hscript("render -p -c -F /out/karma1")[0] == "1 [ ] /out/karma1\t( 1 2 1 )\n"
    hou.node("/out/karma1").render(frame_range=(2, 2))
    assert hou.fake_state().rendered == [("/out/karma1", 2), ("/out/karma1/lopnet/karma/rop_usdrender", 2)]
    assert (tmp_path / "backup" / "usd" / "k.0002.usd").is_file()  # $HIP is the loaded file's directory
