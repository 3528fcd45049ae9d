"""What RadLens writes for others to read: DICOM result objects (SR, Secondary Capture, SEG: derived.py),
images wrapped as DICOM (wrap.py: ultrasound, radiograph, multi-frame volume), and CSV defused for spreadsheets
(spreadsheet.py). Every DICOM object written here passes dciodvfy with no new error (tests/test_conformance.py)."""
