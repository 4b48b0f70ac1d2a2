"""Fixture banks of the hw9 assignment: right answers written other ways, known wrong answers."""
