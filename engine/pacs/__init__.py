"""PACS connectivity: nodes, transports (DICOMweb and DIMSE: echo, find, retrieve, store), the DICOM listener,
routing of arrivals. Importing the package adds the after-review hook that sends results back (push.py)."""

import logging

# pynetdicom logs every C-FIND identifier (patient name, ID, accession) and C-GET/C-STORE UIDs at INFO: its
# lines would carry identifiers into RADLENS_HOME/logs. Warnings and errors (no dataset content) still show.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

from engine.pacs import push  # noqa: E402,F401 - registers queue_send_after_review with engine.cases.reviews
