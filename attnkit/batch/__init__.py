"""Batch grading, host side: the driver (one process), worker processes (one grading process each), one
student's run, progress, typed results."""
