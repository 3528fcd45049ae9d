"""PACS connectivity: nodes, echo/find/retrieve (DICOMweb and DIMSE), the DICOM listener, routing of arrivals."""
