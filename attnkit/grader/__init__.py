"""The grader process: hidden tests, references and verdicts, outside the student's kernel."""
