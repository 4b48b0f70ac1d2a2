"""Instructor side, where no student code runs: notebook markup, release and its checks, the fixture check,
bundles, samples."""
