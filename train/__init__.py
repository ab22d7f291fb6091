"""Candidate configs (train/candidates/*.yaml); `python -m train` is `promote train`."""
