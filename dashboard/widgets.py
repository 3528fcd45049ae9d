"""Reusable renderers. Pages call these; EngineErrors become one st.error line here and nowhere else."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import links, state
from dashboard.text import md, plain
from engine.cases import IngestResult, case_id_of
from engine.context import Context
from engine.errors import EngineError
from engine.io import Rendered, Spacing, Study, Window, presets
from engine.models import Scope, Verdict
from engine.stored import newest_in_scope, recent_cases, record_export, view_case

T = TypeVar("T")
DISCLAIMER = "For research use only. Not for use in diagnostic procedures."
_CUSTOM = "Custom..."


@contextmanager
def engine_errors() -> Iterator[None]:
    """Show an EngineError as one line and stop the page; anything else is a bug and propagates."""
    try:
        yield
    except EngineError as error:
        st.error(plain(error), icon=":material/error:")
        st.stop()


def once_per_opening(state_key: str, key: tuple, compute: Callable[[], T], keep: int = 8) -> T:
    """compute() once per key in this session, so a rerun (a slider moved) neither recomputes nor logs it
    again; the last `keep` results are kept."""
    results = st.session_state.setdefault(state_key, {})
    if key not in results:
        results[key] = compute()
        while len(results) > keep:
            results.pop(next(iter(results)))
    return results[key]


def viewed_case(ctx: Context, case_id: int) -> dict:
    """The case, read through the engine (needs `case.read`); its first view in this sitting is logged."""
    viewed = st.session_state.setdefault(state.VIEWED, set())
    case = view_case(ctx, case_id, record=case_id not in viewed)
    viewed.add(case_id)
    return case


Exporter = Callable[[str, Callable[[], bytes]], Callable[[], bytes]]


def exporter(ctx: Context, case_id: int) -> Exporter:
    """For download buttons: exporter(kind, build) is the callable a button calls when clicked, which checks
    `case.export` in the engine and logs the download."""
    return lambda kind, build: (lambda: record_export(ctx, case_id, kind, build))


def open_case(case_id: int, page: str = "viewer") -> None:
    st.session_state[state.CURRENT_CASE] = int(case_id)
    links.switch_page(page)


def case_picker(store, scope: Scope | None = None) -> int:
    """The current case (from ?case=N, the worklist, or the newest; on a model's page the newest the model
    applies to), as a selectbox; stops when there is none."""
    if "case" in st.query_params:
        value = st.query_params["case"]
        st.session_state[state.CURRENT_CASE] = case_id_of(value) or 0
    recent = recent_cases(store)
    if not recent:
        st.info("No cases yet. Upload a study first.")
        links.page_link("upload", label="Go to Upload", icon=":material/upload_file:")
        st.stop()
    default = (newest_in_scope(store, scope) if scope else None) or next(iter(recent))
    current = st.session_state.setdefault(state.CURRENT_CASE, default)
    return st.selectbox("Case", list(recent) if current in recent else [current, *recent], key=state.CURRENT_CASE,
                        format_func=lambda i: recent.get(i, f"#{i}"))


def abstention(verdict: Verdict, may_reveal: bool, key: str) -> bool:
    """Says the model did not analyse this image and why (plain text); offers the raw output to a role that
    may see it, behind a deliberate switch. Returns whether to show it."""
    st.warning(md("**Not analysed:** outside what this model was trained on ({reason}).", reason=verdict.reason),
               icon=":material/block:")
    st.caption("No label, probability or measurement is shown: the model was not trained on images like this "
               "one, so its output here is not a result.")
    if not may_reveal:
        return False
    return st.toggle("Show the raw output (research only)", key=key,
                     help="The model's output on an image outside its scope is not a result. Each reveal is "
                          "recorded in the audit trail.")


def scoped_image(ctx: Context, card) -> dict | None:
    """The case and image a model's page works on (opening on the newest case in the model's scope); None,
    with the abstention shown, when the image's header is outside the scope and no role that may see raw
    output switched it on."""
    scope = Scope.from_card(card)
    image = image_picker(viewed_case(ctx, case_picker(ctx.store, scope)))
    verdict = scope.judge(image["modality"], image["body_part"])
    if verdict.analysed or abstention(verdict, ctx.user.may("case.raw_output"), f"raw.{image['id']}"):
        return image
    return None


def raw_output_banner() -> None:
    st.error("Raw output outside the model's scope: for research only, not a result.", icon=":material/science:")


def image_picker(case: dict) -> dict:
    images = case["images"]
    return images[0] if len(images) == 1 else st.selectbox(
        "Image", images, format_func=lambda i: f"Image {i['id']}: {i['series_description'] or i['modality']}")


def case_table(frame: pd.DataFrame, key: str, column_config: dict | None = None) -> None:
    """A table of cases; selecting a row opens it in the viewer."""
    event = st.dataframe(
        frame, key=key, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
        column_config=column_config or {},
    )
    selected = event.selection.rows if event else []
    case = frame.iloc[selected[0]].get("Case") if selected else None
    if case is not None and pd.notna(case) and str(case).isdigit():
        open_case(int(case))


# How each kind of worklist column is shown: (value formatter, Streamlit column type).
_KINDS = {
    "id": (None, st.column_config.NumberColumn),
    "text": (lambda v: "" if v is None or pd.isna(v) else str(v), st.column_config.TextColumn),
    "probability": (None, lambda title, help: st.column_config.ProgressColumn(
        title, help=help, format="percent", min_value=0.0, max_value=1.0)),
    "decimal": (lambda v: "" if v is None or pd.isna(v) else f"{v:.2f}", st.column_config.TextColumn),
    "datetime": (lambda v: (v or "")[:19].replace("T", " "), st.column_config.TextColumn),
    "flag": (lambda v: "possible" if v == 1 else "", st.column_config.TextColumn),
    "count": (None, st.column_config.NumberColumn),
}


def worklist_table(rows: list[dict], columns, key: str = "worklist") -> None:
    """The engine's worklist rows under their titles, each column formatted as its kind says; a selected row
    opens the case."""
    frame = pd.DataFrame(rows, columns=[c.key for c in columns])
    for c in columns:
        if fmt := _KINDS[c.kind][0]:
            frame[c.key] = frame[c.key].map(fmt)
    frame.columns = [c.title for c in columns]
    config = {c.title: _KINDS[c.kind][1](c.title, help=c.help or None) for c in columns}
    ids = next(c.title for c in columns if c.kind == "id")
    event = st.dataframe(frame, key=key, hide_index=True, width="stretch", on_select="rerun",
                         selection_mode="single-row", column_config=config)
    selected = event.selection.rows if event else []
    if selected and pd.notna(frame.iloc[selected[0]][ids]):
        open_case(int(frame.iloc[selected[0]][ids]))


def progress_bar(total: int, text: str = "Starting...") -> Callable[[int, str], None]:
    """A progress bar and the callback that advances it: (items done, what is being done). Renders only."""
    bar = st.progress(0.0, text=text)
    return lambda done, name: bar.progress(min(done / max(total, 1), 1.0),
                                          text=md("{done} of {total}: {name}", done=done, total=total, name=name))


def results_summary(results: list[IngestResult]) -> None:
    ok = sum(r.status == "ok" for r in results)
    dup = sum(r.status == "duplicate" for r in results)
    failed = len(results) - ok - dup
    message = f"{ok} landed, {dup} already in the store, {failed} failed."
    (st.warning if failed else st.success)(message + (" Failed files are listed with their reason." if failed else ""))
    # a failed file has no case: a blank cell (Streamlit shows a missing number as a grey "None")
    frame = pd.DataFrame(
        [{"File": r.file, "Status": r.status, "Case": str(r.case_id or ""), "Error": r.error} for r in results]
    )
    st.caption("Select a row to open its case.")
    case_table(frame, "upload_results", {"Case": st.column_config.TextColumn(width="small")})


def window_controls(study: Study, scope: int) -> Window | None:
    """Preset picker (file windows, CT presets, pixel range) plus custom centre/width, per image."""
    options = presets(study)
    if not options:
        return None
    labels = [w.label for w in options] + [_CUSTOM]
    keys = [f"{k}.{scope}" for k in (state.WINDOW_PRESET, state.WINDOW_CENTER, state.WINDOW_WIDTH)]
    choice = st.selectbox("Window / level", labels, key=keys[0])
    lo, hi = float(study.frames.min()), float(study.frames.max())
    span = max(hi - lo, 1.0)
    c_range, w_range = (lo - span / 2, hi + span / 2), (1.0, span * 2)
    if choice != _CUSTOM:
        window = options[labels.index(choice)]
        st.session_state[keys[1]] = min(max(window.center, c_range[0]), c_range[1])
        st.session_state[keys[2]] = min(max(window.width, w_range[0]), w_range[1])
        return window
    center = st.slider("Centre (level)", *c_range, key=keys[1])
    width = st.slider("Width", *w_range, key=keys[2])
    return Window(center, width, "LINEAR", "Custom")


def image_view(rendered: Rendered, height: int = 720) -> None:
    """The 8-bit display image with zoom (scroll/box) and pan, aspect ratio kept."""
    image = rendered.image
    figure = px.imshow(image, binary_string=True, binary_backend="pil", zmin=0, zmax=255)
    figure.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0), dragmode="pan",
                         paper_bgcolor="black", plot_bgcolor="black")
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor="x")
    st.plotly_chart(figure, config={"scrollZoom": True, "displaylogo": False}, width="stretch")


def step_badges(steps: Sequence[str]) -> None:
    """The display steps actually applied, as badges in order."""
    st.markdown(" ".join(f":blue-badge[{plain(s)}]" for s in steps))


def image_facts(image: dict, study: Study, spacing: Spacing) -> None:
    st.markdown(md("**{modality}** {body_part} {view}  \n{cols} x {rows} px, {frames} frame(s), {bits}-bit "
                   "{photometric}  \nPixel spacing: {spacing}", modality=image["modality"] or "-",
                   body_part=image["body_part"] or "", view=image["view_position"] or "", cols=image["cols"],
                   rows=image["rows"], frames=image["frames"], bits=image["bits_stored"],
                   photometric=image["photometric"], spacing=spacing.describe()))
    if study.burned_in_risk:
        st.warning("This image may contain burned-in text (names, dates, markers) that de-identification "
                   "of the header cannot remove.", icon=":material/warning:")


def tag_table(study: Study) -> None:
    """The stored (de-identified) header, element by element."""
    if study.dataset is None:
        st.caption("No header: PNG/JPEG uploads are stored as re-encoded PNG without metadata.")
        return
    rows = [
        {"Tag": f"({e.tag.group:04X},{e.tag.element:04X})", "Name": e.name, "VR": e.VR,
         "Value": _short(e.value) if e.VR != "SQ" else f"{len(e.value)} item(s)"}
        for e in study.dataset if e.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=360)


def _short(value) -> str:
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."

