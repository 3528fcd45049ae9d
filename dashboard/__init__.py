"""Streamlit-only code: router, cached resources, session keys, reusable widgets."""
