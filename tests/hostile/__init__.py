"""Hostile-input drills: malicious envelopes, API fuzzing, fuzzing, leaks, resource limits."""
