"""Annotator: ingest, review queue, SQLite store and Streamlit app for label-noise cleaning."""
