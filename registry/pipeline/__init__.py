"""Training, export and evaluation: train -> export -> parity check -> evaluate -> store, the
critic and the report. torch is imported inside the functions that need it, never at import."""
