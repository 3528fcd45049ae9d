"""PACS: search a PACS and retrieve a study (de-identified on arrival, analysed in the background by the
models whose scope it is in); administrators add nodes, test them and choose what arrivals are routed to."""

import streamlit as st

from dashboard import links, pacs_widgets, resources, state, widgets
from dashboard.text import md
from engine import pacs

ctx = resources.context()
st.title("PACS")
nodes = pacs.list_nodes(ctx.store)
find_tab, *admin_tab = st.tabs(["Search and retrieve"] + (["Nodes and routing"] if ctx.user.may("pacs.configure")
                                                           else []))
with find_tab, widgets.engine_errors():
    if not nodes:
        st.info("No PACS node is configured yet: an administrator adds one (Nodes and routing, or "
                "`python -m engine pacs add`).")
    elif asked := pacs_widgets.search_form(nodes):
        st.session_state[state.PACS_MATCHES] = (asked[0], asked[2], pacs.search(ctx, *asked))
    if found := st.session_state.get(state.PACS_MATCHES):
        node, via, matches = found
        chosen = pacs_widgets.matches_table(matches)
        if chosen and ctx.user.may("pacs.retrieve") and st.button("Retrieve the selected study", type="primary",
                                                                   icon=":material/download:"):
            report = pacs.pull(ctx, node, chosen.study_uid, via, pacs_widgets.pull_progress())
            if report.error:
                st.error(md("Stopped early: {error}. The instances that arrived are kept.", error=report.error))
            st.info(md("Analysis queued (job {job}): results appear in the worklist.", job=report.job_id)
                    if report.job_id else "No active model applies to this study: it is stored and listed, "
                                          "not analysed.")
            widgets.results_summary(report.results)
        elif chosen is None and matches:
            st.caption("Select a study to retrieve it.")
        links.page_link("worklist", label="Open the worklist", icon=":material/list_alt:")
for tab in admin_tab:
    with tab, widgets.engine_errors():
        if saved := pacs_widgets.node_form():
            node = pacs.save_node(ctx, saved[0])
            if saved[1]:
                pacs.save_credentials(ctx, node.name, saved[1], saved[2])
            st.rerun()
        reports = st.session_state.setdefault(state.PACS_ECHO, {})
        if nodes and (tested := pacs_widgets.nodes_table(nodes, reports)):
            reports[tested] = pacs.test_connection(ctx, tested)
            st.rerun()
        if change := pacs_widgets.routing_form(pacs.routing_rules(ctx.store), pacs.route_descriptions(ctx)):
            pacs.set_routing(ctx, *change)
            st.rerun()
        if (after := pacs_widgets.send_after_review_toggle(pacs.send_after_review(ctx.store))) is not None:
            pacs.set_send_after_review(ctx, after)
        st.caption(md("RadLens listens for pushed studies as AE title {ae} on port {port}{tls}; only configured nodes "
                      "may push, each from its own host's address.", ae=ctx.config.dicom.ae_title,
                      port=ctx.config.dicom.port, tls=" over DICOM TLS" if ctx.config.dicom.tls_cert else ""))
