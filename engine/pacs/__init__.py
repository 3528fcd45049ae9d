"""PACS connectivity: nodes, transports (DICOMweb and DIMSE: echo, find, retrieve, store), the DICOM listener,
routing of arrivals, results sent back (push.py: `install_after_review_hook` sends a reviewed case's results to
the PACS it came from when "send after review" is on; the dashboard installs it)."""

import logging

from engine.public import public_face

# pynetdicom logs every C-FIND identifier (patient name, ID, accession) and C-GET/C-STORE UIDs at INFO: its
# lines would carry identifiers into RADLENS_HOME/logs. Warnings and errors (no dataset content) still show.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "nodes": ("PacsNode", "list_nodes", "save_credentials", "save_node"),
    "push": ("has_link", "install_after_review_hook", "send_after_review", "send_case", "set_send_after_review"),
    "routing": ("route_descriptions", "routing_rules", "set_routing"),
    "studies": ("pull", "search", "test_connection"),
    "transports": ("EchoReport", "StudyMatch", "StudyQuery", "TRANSPORTS", "VIAS"),
})
