"""RadLens engine: reading, de-identifying, storing and (later) analysing medical images.

Pure Python + numpy/pydicom/torch. Never imports streamlit (tests/test_architecture.py checks).
"""
