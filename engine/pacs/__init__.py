"""PACS connectivity: nodes, echo/find/retrieve (DICOMweb and DIMSE), the DICOM listener, routing of arrivals."""

import logging

# pynetdicom logs every C-FIND identifier (patient name, ID, accession) and C-GET/C-STORE UIDs at INFO: its
# lines would carry identifiers into RADLENS_HOME/logs. Warnings and errors (no dataset content) still show.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)
