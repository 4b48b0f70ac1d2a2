"""The LMS side, host only: upload archives and their caps, matching files to notebooks, Gradescope, Canvas, collect."""
