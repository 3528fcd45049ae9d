"""PACS page pieces: the search form, the answers (PHI: shown as plain text in this tab only, kept in this
session, never stored), the retrieve progress, and the administrator's node and routing forms. Each returns
what the user asked for; the page acts through the engine, which checks every permission."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pandas as pd
import streamlit as st

from dashboard.text import md, plain
from engine.cases import IngestResult
from engine.pacs import TRANSPORTS, VIAS, EchoReport, PacsNode, StudyMatch, StudyQuery

__all__ = ["search_form", "matches_table", "pull_progress", "node_form", "nodes_table", "routing_form",
           "send_after_review_toggle"]



def search_form(nodes: list[PacsNode]) -> tuple[str, StudyQuery, str] | None:
    """(node name, query, via) when Search is pressed."""
    with st.form("pacs.search"):
        c1, c2 = st.columns(2)
        node = c1.selectbox("PACS", [n.name for n in nodes])
        via = c2.selectbox("Ask over", VIAS, format_func=lambda via: TRANSPORTS[via].title)
        c1, c2, c3 = st.columns(3)
        dates = c1.date_input("Study date (range)", value=(), min_value=dt.date(1900, 1, 1), format="YYYY-MM-DD")
        modality = c2.selectbox("Modality", ["", "CR", "DX", "US", "CT", "MR", "MG", "NM", "PT", "XA", "OT"],
                                format_func=lambda m: m or "any")
        accession = c3.text_input("Accession number", max_chars=16)
        c1, c2 = st.columns(2)
        patient_id = c1.text_input("Patient ID", max_chars=64)
        patient_name = c2.text_input("Patient name", max_chars=64, help="Family^Given; '*' matches any ending")
        if not st.form_submit_button("Search", type="primary", icon=":material/search:"):
            return None
    days = [d.strftime("%Y%m%d") for d in (dates if isinstance(dates, tuple) else (dates,))]
    return node, StudyQuery(days[0] if days else "", days[-1] if days else "", modality, accession, patient_id,
                            patient_name), via


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def matches_table(matches: list[StudyMatch]) -> StudyMatch | None:
    """The studies found; returns the selected one."""
    st.caption(md("{n} {studies}. These rows name patients: they are shown here only and never stored.",
                  n=len(matches), studies="study" if len(matches) == 1 else "studies"))
    frame = pd.DataFrame([{"Date": _date(m.study_date), "Modalities": m.modalities, "Patient": m.patient_name,
                           "Patient ID": m.patient_id, "Accession": m.accession, "Description": m.description,
                           "Series": m.series, "Instances": m.instances} for m in matches])
    event = st.dataframe(frame, key="pacs.matches", hide_index=True, width="stretch", on_select="rerun",
                         selection_mode="single-row")
    rows = event.selection.rows if event else []
    return matches[rows[0]] if rows else None


def pull_progress() -> Callable[[int, int | None, IngestResult], None]:
    """A progress bar per instance: (done, total when known, the latest instance's result)."""
    bar = st.progress(0.0, text="Asking the PACS for the study...")

    def advance(done: int, total: int | None, result: IngestResult) -> None:
        text = md("{done} of {total} instances: {status}", done=done, total=total or "?", status=result.status)
        bar.progress(min(done / total, 1.0) if total else 0.5, text=text)

    return advance


def node_form() -> tuple[PacsNode, str, str] | None:
    """(node, username, password) when Save is pressed; the password is stored outside the database."""
    with st.form("pacs.node", clear_on_submit=True):
        st.markdown("**Add or change a PACS node**")
        c1, c2 = st.columns(2)
        name = c1.text_input("Name", max_chars=32)
        url = c2.text_input("DICOMweb URL", placeholder="http://pacs.hospital.org:8042/dicom-web", max_chars=300)
        c1, c2, c3 = st.columns(3)
        ae = c1.text_input("AE title", max_chars=16)
        host = c2.text_input("Host", max_chars=253)
        port = c3.number_input("Port", 0, 65535, 0)
        c1, c2 = st.columns(2)
        username = c1.text_input("DICOMweb user name (optional)", max_chars=128)
        password = c2.text_input("Password", type="password", help="Kept in a 0600 file outside the database")
        c1, c2, c3 = st.columns(3)
        tls = c3.checkbox("DIMSE over TLS", help="Mutual-certificate DICOM TLS with this node (the server's "
                          "RADLENS_DICOM_TLS_CERT, _KEY and _CA)")
        plain = c1.checkbox("Allow results over plain http://", help="Re-identified results go over https only "
                            "(or to this machine); tick only for a PACS on a trusted private network")
        others = c2.checkbox("Accept results of other nodes' studies", help="By default a study's results go back "
                             "only to the node it came from")
        if st.form_submit_button("Save node", type="primary"):
            return PacsNode(name, url, ae, host, int(port), plain, others, tls), username, password
    return None


def nodes_table(nodes: list[PacsNode], reports: dict[str, EchoReport]) -> str | None:
    """The nodes with their last echo; returns the name whose Test button was pressed."""
    st.dataframe(pd.DataFrame([{
        "Name": n.name, "DICOMweb URL": n.dicomweb_url, "AE title": n.ae_title,
        "Host:port": (f"{n.host}:{n.port}" + (" (TLS)" if n.tls else "")) if n.dimse else "",
        "Receives": ", ".join(["own studies", *(["other nodes' studies"] if n.accepts_other_studies else []),
                               *(["plain http"] if n.allow_plain_http else [])]),
        "Last test": "; ".join(f"{via}: {r}" for via, r in reports[n.name].results.items())
        if n.name in reports else ""} for n in nodes]), hide_index=True, width="stretch")
    c1, c2 = st.columns([3, 1])
    name = c1.selectbox("Node", [n.name for n in nodes], label_visibility="collapsed")
    return name if c2.button("Test connection", icon=":material/network_check:") else None


def routing_form(rules: dict[str, bool], scopes: dict[str, str]) -> tuple[str, bool] | None:
    """A toggle per task: analyse arriving studies inside its active model's scope."""
    st.markdown("**Routing of arriving studies**")
    for task, enabled in rules.items():
        wanted = st.toggle(plain(f"{task}: {scopes.get(task, 'no active model')}"), value=enabled,
                           key=f"pacs.route.{task}")
        if wanted != enabled:
            return task, wanted
    return None


def send_after_review_toggle(enabled: bool) -> bool | None:
    """Whether reviewed cases go back to their source PACS on their own; the new value when changed."""
    st.markdown("**Results sent back**")
    wanted = st.toggle("Send results (SR and secondary capture) to the source PACS after each review",
                       value=enabled, key="pacs.send_after_review",
                       help="Only studies that came from a PACS; the SR carries the reviewer's verdict")
    return wanted if wanted != enabled else None
