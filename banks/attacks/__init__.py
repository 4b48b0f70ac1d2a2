"""Attacks on the grader and the sandbox (tamper, hostile, exfiltrate, resources, protocol, archives)."""
