"""Measuring explanation quality: known-answer features (``calibrate``) and seeded evaluations with
controls (``eval``)."""
