"""The pure planner (hpcdock.jobplan): steps, frames and outputs from values read out of Houdini.

No ``hou`` at all: the inputs are ``render -p -c -F`` listings in the format Houdini prints
(SideFX's "render" HScript command page; the bracketed dependency ids as
deadline-cloud-for-houdini parses them) and the frozen facts the adapter reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hpcdock import bundle as B
from hpcdock import jobplan as P
from hpcdock.farm.render import hscript_quote, output_parm_name


def _facts(path, type_key="Driver/geometry", outputs=None, **kw):
    name = path.rsplit("/", 1)[-1]
    return P.NodeFacts(path=path, name=name, type_key=type_key, outputs=tuple((outputs or {}).items()), **kw)


def _listing(output, text):
    return P.Listing(output, P.parse_render_order(text))


GEO_MANTRA = "1 [ ] /out/geo1\t( 1 10 1 )\n2 [ 1 ] /out/mantra1\t( 1 10 1 )\n"


def _geo_mantra_facts(**geo):
    return {
        "/out/geo1": _facts(
            "/out/geo1", outputs={f: f"/p/geo/shot.{f:04d}.bgeo.sc" for f in (1, 2, 5, 10)}, **geo
        ),
        "/out/mantra1": _facts(
            "/out/mantra1", "Driver/ifd", outputs={f: f"/p/r/b.{f:04d}.exr" for f in (1, 2, 5, 10)}
        ),
    }


# --------------------------------------------------------------------------- render -p


def test_render_order_lines_are_parsed():
    text = "1 [ ] /out/geo1\t( 1 9 2 )\n2 [ 1 ] /out/mantra1\t5\n3 [ 1 2 ] /obj/a/rop_alembic1\t1 4 9\n\n"
    assert P.parse_render_order(text) == (
        P.RenderEntry("1", "/out/geo1", (1, 3, 5, 7, 9), ()),
        P.RenderEntry("2", "/out/mantra1", (5,), ("1",)),
        P.RenderEntry("3", "/obj/a/rop_alembic1", (1, 4, 9), ("1", "2")),
    )


def test_render_order_without_dependency_lists_waits_for_earlier_orders():
    listing = _listing("/out/mantra1", "1 /out/geo1 1 2\n1 /out/geo2 1 2\n2 /out/mantra1 ( 1 2 1 )\n")
    facts = {p: _facts(p) for p in ("/out/geo1", "/out/geo2", "/out/mantra1")}
    steps, _ = P.plan_steps([listing], facts, [], separate=True, gpus=0)
    assert [(s.name, s.dependencies) for s in steps] == [
        ("geo1", []),
        ("geo2", []),
        ("mantra1", ["geo1", "geo2"]),
    ]


@pytest.mark.parametrize(
    "bad,why",
    [
        ("1 [ ] /out/a\t( 1 2 )", "frame range"),
        ("garbage", "cannot read"),
        ("1 [ ] /out/a\t( 1 2 0.5 )", "fractional"),
        ("1 [ ] /out/a\t1.5", "fractional"),
        ("1 [ ] /out/a\t( 5 1 1 )", "empty"),
    ],
)
def test_unreadable_render_order_is_refused(bad, why):
    with pytest.raises(P.PlanError, match=why):
        P.parse_render_order(bad)


# --------------------------------------------------------------------------- steps and frames


def test_geometry_into_mantra_is_two_steps_with_patterns():
    steps, warnings = P.plan_steps([_listing("/out/mantra1", GEO_MANTRA)], _geo_mantra_facts(), [], True, 1)
    assert warnings == []
    assert [(s.name, s.rop, s.frames, s.dependencies, s.gpus, s.sequential) for s in steps] == [
        ("geo1", "/out/geo1", list(range(1, 11)), [], 1, False),
        ("mantra1", "/out/mantra1", list(range(1, 11)), ["geo1"], 1, False),
    ]
    assert steps[1].output_pattern == "/p/r/b.{frame:04d}.exr"


def test_switch_subnet_merge_and_fetch_entries_pass_their_dependencies_on():
    """Houdini decides what a Switch, subnet or Fetch ROP renders; if it lists them, they render nothing."""
    text = (
        "1 [ ] /out/sim\t( 1 5 1 )\n2 [ 1 ] /out/switch1\t( 1 5 1 )\n3 [ 2 ] /out/subnet1\t( 1 5 1 )\n"
        "4 [ ] /obj/geo1/rop_alembic1\t( 1 5 1 )\n5 [ 4 ] /out/fetch1\t( 1 5 1 )\n"
        "6 [ 3 5 ] /out/merge1\t( 1 5 1 )\n7 [ 6 ] /out/karma1\t( 1 5 1 )\n"
    )
    facts = {
        p: _facts(p, t)
        for p, t in [
            ("/out/sim", "Driver/geometry"),
            ("/out/switch1", "Driver/switch"),
            ("/out/subnet1", "Driver/subnet"),
            ("/obj/geo1/rop_alembic1", "Sop/rop_alembic"),
            ("/out/fetch1", "Driver/fetch"),
            ("/out/merge1", "Driver/merge"),
            ("/out/karma1", "Driver/karma"),
        ]
    }
    steps, _ = P.plan_steps([_listing("/out/karma1", text)], facts, [], True, 0, husk_step=False)
    assert [(s.name, s.dependencies) for s in steps] == [
        ("sim", []),
        ("rop_alembic1", []),
        ("karma1", ["sim", "rop_alembic1"]),
    ]


def test_several_rops_share_their_inputs_and_frames_are_united():
    first = _listing("/out/mantra1", "1 [ ] /out/geo1\t( 1 5 1 )\n2 [ 1 ] /out/mantra1\t( 1 5 1 )\n")
    second = _listing("/out/mantra2", "1 [ ] /out/geo1\t( 4 8 1 )\n2 [ 1 ] /out/mantra2\t( 4 8 1 )\n")
    facts = {p: _facts(p) for p in ("/out/geo1", "/out/mantra1", "/out/mantra2")}
    steps, _ = P.plan_steps([first, second], facts, [], True, 0)
    assert [(s.name, s.frames, s.dependencies) for s in steps] == [
        ("geo1", list(range(1, 9)), []),
        ("mantra1", [1, 2, 3, 4, 5], ["geo1"]),
        ("mantra2", [4, 5, 6, 7, 8], ["geo1"]),
    ]


def test_single_step_mode_renders_inputs_in_the_bottom_rops_task():
    steps, _ = P.plan_steps([_listing("/out/mantra1", GEO_MANTRA)], _geo_mantra_facts(), [], False, 0)
    assert [(s.name, s.with_inputs, s.dependencies) for s in steps] == [("mantra1", True, [])]


def test_a_rop_rendering_twice_is_refused_as_a_wedge():
    text = "1 [ ] /out/mantra1\t( 1 2 1 )\n2 [ ] /out/mantra1\t( 1 2 1 )\n3 [ 1 2 ] /out/wedge1\t( 1 2 1 )\n"
    with pytest.raises(P.PlanError, match="renders more than once"):
        P.plan_steps([_listing("/out/wedge1", text)], {}, [], True, 0)


@pytest.mark.parametrize("type_key,label", [("Driver/wedge", "Wedge"), ("Driver/batch", "Batch")])
def test_wedge_and_batch_rops_are_refused_with_a_message(type_key, label):
    upstream = [_facts("/out/driver1", type_key), _facts("/out/mantra1", "Driver/ifd")]
    with pytest.raises(P.PlanError, match=f"/out/driver1: {label} ROPs are not supported"):
        P.plan_steps([_listing("/out/mantra1", "1 [ ] /out/mantra1\t1")], {}, upstream, True, 0)


def test_a_submit_node_above_a_submitted_rop_is_refused():
    upstream = [_facts("/out/hpcdock_submit1", "Driver/hpcdock_submit"), _facts("/out/mantra1", "Driver/ifd")]
    with pytest.raises(P.PlanError, match="/out/hpcdock_submit1 is an HPC Dock Submit node wired above"):
        P.plan_steps([_listing("/out/mantra1", "1 [ ] /out/mantra1\t1")], {}, upstream, True, 0)


def test_render_frame_range_from_stage_is_refused():
    facts = {"/stage/usdrender_rop1": _facts("/stage/usdrender_rop1", "Lop/usdrender_rop", trange=3)}
    with pytest.raises(P.PlanError, match="Render Frame Range From Stage"):
        P.plan_steps(
            [_listing("/stage/usdrender_rop1", "1 [ ] /stage/usdrender_rop1\t( 1 5 1 )")], facts, [], True, 0
        )


def test_locked_rops_are_named_in_a_warning():
    upstream = [_facts("/out/geo1", locked=True), _facts("/out/mantra1", "Driver/ifd")]
    listing = _listing("/out/mantra1", "1 [ ] /out/mantra1\t( 1 10 1 )\n")
    steps, warnings = P.plan_steps([listing], _geo_mantra_facts(), upstream, True, 0)
    assert [s.name for s in steps] == ["mantra1"]
    assert warnings == [
        "/out/geo1 is locked: Houdini renders neither it nor the ROPs above it, so neither does "
        "the job (unlock it to include them)"
    ]


def test_nothing_listed_is_refused():
    with pytest.raises(P.PlanError, match="Nothing to render"):
        P.plan_steps([_listing("/out/mantra1", "")], {}, [], True, 0)


def test_a_simulation_is_one_sequential_step():
    steps, _ = P.plan_steps(
        [_listing("/out/mantra1", GEO_MANTRA)], _geo_mantra_facts(initsim=True), [], True, 0
    )
    assert [(s.name, s.sequential) for s in steps] == [("geo1", True), ("mantra1", False)]
    # Without separate steps the simulation renders inside the bottom ROP's task.
    steps, _ = P.plan_steps(
        [_listing("/out/mantra1", GEO_MANTRA)], _geo_mantra_facts(initsim=True), [], False, 0
    )
    assert [(s.name, s.sequential) for s in steps] == [("mantra1", True)]


# --------------------------------------------------------------------------- export then render with husk

GEO_KARMA_COMP = "1 [ ] /out/geo1\t( 1 6 1 )\n2 [ 1 ] /out/karma1\t( 1 6 1 )\n3 [ 2 ] /out/comp1\t( 1 6 1 )\n"


def _karma_facts(karma_type="Driver/karma", **karma):
    return {
        "/out/geo1": _facts("/out/geo1", outputs={f: f"/p/geo/g.{f:04d}.bgeo.sc" for f in (1, 2, 3, 6)}),
        "/out/karma1": _facts(
            "/out/karma1", karma_type, outputs={f: f"/p/r/k.{f:04d}.exr" for f in (1, 2, 3, 6)}, **karma
        ),
        "/out/comp1": _facts("/out/comp1", "Driver/comp"),
    }


def test_a_karma_rop_is_a_hython_export_step_then_a_husk_render_step():
    steps, _ = P.plan_steps([_listing("/out/comp1", GEO_KARMA_COMP)], _karma_facts(), [], True, 2)
    usd = "usd/karma1_usd/karma1.{frame:04d}.usd"
    assert [(s.name, s.mode, s.dependencies, s.amounts, s.gpus) for s in steps] == [
        ("geo1", B.MODE_HYTHON, [], {}, 2),
        ("karma1_usd", B.MODE_EXPORT_USD, ["geo1"], {"amount.houdini_engine": 1}, 0),
        ("karma1", B.MODE_HUSK, ["karma1_usd"], {"amount.karma_render": 1}, 2),
        ("comp1", B.MODE_HYTHON, ["karma1"], {}, 2),  # downstream waits for the images, not the USD
    ]
    export, render = steps[1], steps[2]
    assert (export.usd_pattern, export.output_pattern) == (usd, usd)
    assert (render.usd_pattern, render.output_pattern, render.renderer) == (
        usd,
        "/p/r/k.{frame:04d}.exr",
        None,
    )
    assert export.frames == render.frames == list(range(1, 7))


def test_the_toggle_off_keeps_one_hython_step():
    steps, _ = P.plan_steps(
        [_listing("/out/comp1", GEO_KARMA_COMP)], _karma_facts(), [], True, 0, husk_step=False
    )
    assert [(s.name, s.mode, s.amounts) for s in steps] == [
        ("geo1", B.MODE_HYTHON, {}),
        ("karma1", B.MODE_HYTHON, {}),
        ("comp1", B.MODE_HYTHON, {}),
    ]


@pytest.mark.parametrize(
    "type_key,renderer,amounts",
    [
        ("Lop/usdrender_rop", "BRAY_HdKarmaXPU", {"amount.karma_render": 1}),
        ("Driver/usdrender", "", {"amount.karma_render": 1}),
        ("Lop/usdrender_rop", "HdArnoldRendererPlugin", {}),  # another vendor's licence: not counted here
    ],
)
def test_usd_render_rops_pass_their_delegate_and_ask_karma_only_for_karma(type_key, renderer, amounts):
    steps, _ = P.plan_steps(
        [_listing("/out/comp1", GEO_KARMA_COMP)], _karma_facts(type_key, renderer=renderer), [], True, 0
    )
    render = next(s for s in steps if s.mode == B.MODE_HUSK)
    assert (render.renderer, render.amounts) == (renderer or None, amounts)


def test_other_rops_are_never_split_and_step_names_stay_unique():
    facts = _karma_facts()
    facts["/out/karma1_usd"] = _facts("/out/karma1_usd", "Driver/ifd")
    text = GEO_KARMA_COMP + "4 [ 3 ] /out/karma1_usd\t( 1 6 1 )\n"
    steps, _ = P.plan_steps([_listing("/out/karma1_usd", text)], facts, [], True, 0)
    assert [(s.name, s.rop, s.mode) for s in steps] == [
        ("geo1", "/out/geo1", B.MODE_HYTHON),
        ("karma1_usd", "/out/karma1", B.MODE_EXPORT_USD),
        ("karma1", "/out/karma1", B.MODE_HUSK),
        ("comp1", "/out/comp1", B.MODE_HYTHON),
        ("karma1_usd_2", "/out/karma1_usd", B.MODE_HYTHON),
    ]


def test_single_step_mode_exports_with_the_inputs_and_a_simulation_in_one_task():
    facts = _karma_facts()
    facts["/out/geo1"] = _facts("/out/geo1", initsim=True)
    text = "1 [ ] /out/geo1\t( 1 6 1 )\n2 [ 1 ] /out/karma1\t( 1 6 1 )\n"
    steps, _ = P.plan_steps([_listing("/out/karma1", text)], facts, [], False, 0)
    assert [(s.name, s.mode, s.with_inputs, s.sequential, s.dependencies) for s in steps] == [
        ("karma1_usd", B.MODE_EXPORT_USD, True, True, []),
        ("karma1", B.MODE_HUSK, False, False, ["karma1_usd"]),
    ]


def test_amount_names_are_custom_openjd_amounts():
    openjd = pytest.importorskip("openjd.model")  # absent from a bare Houdini-like Python

    steps, _ = P.plan_steps([_listing("/out/comp1", GEO_KARMA_COMP)], _karma_facts(), [], True, 0)
    template = B.build_template(P.make_job(P.Settings(image="img"), steps, "/p/shot.hip"))
    decoded = openjd.decode_job_template(template=template, supported_extensions=["TASK_CHUNKING"])
    amounts = {
        s.name: [a.name for a in s.hostRequirements.amounts] for s in decoded.steps if s.hostRequirements
    }
    assert amounts == {"karma1_usd": [B.HOUDINI_ENGINE_AMOUNT], "karma1": [B.KARMA_RENDER_AMOUNT]}


def test_a_sequential_step_is_one_task_with_every_frame_in_order():
    openjd = pytest.importorskip("openjd.model")  # absent from a bare Houdini-like Python

    steps, _ = P.plan_steps(
        [_listing("/out/mantra1", GEO_MANTRA)], _geo_mantra_facts(initsim=True), [], True, 0
    )
    job = P.make_job(P.Settings(image="img", frames_per_task=3), steps, "/p/shot.hip")
    template = B.build_template(job)
    decoded = openjd.decode_job_template(template=template, supported_extensions=["TASK_CHUNKING"])
    values = openjd.preprocess_job_parameters(
        job_template=decoded,
        job_parameter_values={
            v["name"]: v["value"] for v in B.build_parameter_values(job)["parameterValues"]
        },
        job_template_dir=Path("/p/bundle"),
        current_working_dir=Path("/p/bundle"),
    )
    tasks = {
        s.name: [t[B.FRAME_PARAM].value for t in openjd.StepParameterSpaceIterator(space=s.parameterSpace)]
        for s in openjd.create_job(job_template=decoded, job_parameter_values=values).steps
    }
    assert tasks["geo1"] == ["1-10"]
    assert len(tasks["mantra1"]) == 4  # 3 frames per task
    geo_args = template["steps"][0]["script"]["actions"]["onRun"]["args"]
    assert "--sequential" in geo_args
    assert "--sequential" not in template["steps"][1]["script"]["actions"]["onRun"]["args"]


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "type_key,parm",
    [
        ("Sop/filecache", "file"),
        ("Sop/filecache::2.0", "file"),
        ("Sop/rop_geometry", "sopoutput"),
        ("Driver/geometry", "sopoutput"),
        ("Lop/usdrender_rop", "outputimage"),
        ("Driver/usdrender", "outputimage"),
        ("Driver/ifd", "vm_picture"),
        ("Driver/karma", "picture"),
        ("Sop/rop_alembic", "filename"),
        ("Driver/sidefx::karma::2.0", "picture"),
        ("Driver/shell", None),
        ("Driver/filecache", None),
    ],
)
def test_output_parm_per_rop_type_and_category(type_key, parm):
    assert output_parm_name(type_key) == parm


def test_output_warnings():
    warnings = []
    assert P.output_pattern(_facts("/out/sh", "Driver/shell"), warnings) is None
    assert P.output_pattern(_facts("/out/g", outputs={1: "", 2: ""}), warnings) is None
    assert (
        P.output_pattern(_facts("/out/a", "Driver/alembic", outputs={1: "/p/a.abc", 2: "/p/a.abc"}), warnings)
        is None
    )
    assert [w.split(":")[0] for w in warnings] == ["/out/sh", "/out/g", "/out/a"]
    assert "does not change with the frame" in warnings[-1]


def test_frames_to_sample():
    assert P.sample_frames([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == [1, 2, 6, 10]
    assert P.sample_frames([7]) == [7, 8]
    assert P.sample_frames([]) == []
    listings = [_listing("/out/m", GEO_MANTRA), _listing("/out/x", "1 [ ] /out/geo1\t12\n")]
    assert P.listed_frames(listings)["/out/geo1"] == list(range(1, 11)) + [12]


# --------------------------------------------------------------------------- job, settings


def test_make_job_and_settings():
    settings = P.Settings(image="img", env=(("A", "1"),), mounts=(B.Mount("/srv/tex", "/srv/tex"),))
    steps, _ = P.plan_steps([_listing("/out/mantra1", GEO_MANTRA)], _geo_mantra_facts(), [], True, 0)
    job = P.make_job(settings, steps, "/p/proj/shot.hip")
    assert (job.name, job.hip_name, job.project_dir, job.env) == ("shot", "shot.hip", "/p/proj", {"A": "1"})
    assert [(m.source, m.readonly) for m in job.mounts] == [("/p/proj", False), ("/srv/tex", True)]
    with pytest.raises(P.PlanError, match="image"):
        P.make_job(P.Settings(), steps, "/p/shot.hip")
    env = P.settings_from_environment({"HPCDOCK_IMAGE": "i:1", "HPCDOCK_GPUS": "2"})
    assert (env.image, env.gpus, env.frames_per_task) == ("i:1", 2, 10)
    with pytest.raises(P.PlanError, match="HPCDOCK_FRAMES_PER_TASK"):
        P.settings_from_environment({"HPCDOCK_FRAMES_PER_TASK": "ten"})


# --------------------------------------------------------------------------- render hook, MPlay, hscript


def test_soho_submits_once_by_the_frame_soho_renders():
    assert [f for f in (3, 4, 5, 6) if P.soho_submits(1, 3.0, f)] == [3]
    assert P.soho_submits(0, 3.0, 17.0)  # "Render Current Frame": the one run submits
    assert not P.soho_submits(2, 3.0, 4.0)


def test_mplay_executable_per_platform():
    assert P.mplay_path("/opt/hfs20.5", windows=False) == "/opt/hfs20.5/bin/mplay"
    assert P.mplay_path("C:/Program Files/Side Effects Software/Houdini 20.5/", windows=True) == (
        "C:/Program Files/Side Effects Software/Houdini 20.5\\bin\\mplay.exe"
    )


def test_hscript_quoting_keeps_dollar_signs_literal():
    assert hscript_quote("/proj/$JOB/shot") == "'/proj/$JOB/shot'"
    with pytest.raises(ValueError, match="single quote"):
        hscript_quote("/proj/o'brien")
