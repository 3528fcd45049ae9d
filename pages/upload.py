"""Upload: DICOM, PNG, JPEG files or zips of them; every file gets a status and, if it failed, a reason."""

import streamlit as st

from dashboard import resources, state, widgets
from engine.cases import ingest_files

st.title("Upload studies")
st.write("DICOM (.dcm or no extension), PNG (8/16-bit), JPEG, or a ZIP of a folder of them. "
         "Files are de-identified before anything is stored; the originals are not kept.")

files = st.file_uploader("Files", accept_multiple_files=True, label_visibility="collapsed")
if files and st.button(f"Ingest {len(files)} file(s)", type="primary", icon=":material/upload:"):
    progress = widgets.progress_bar(len(files))
    st.session_state[state.UPLOAD_RESULTS] = ingest_files(((f.name, f.getvalue()) for f in files),
                                                          resources.context(), progress=progress)

if results := st.session_state.get(state.UPLOAD_RESULTS):
    widgets.results_summary(results)
elif not files:
    st.info("Drop files above, then press Ingest. The worklist lists every case that landed.")
