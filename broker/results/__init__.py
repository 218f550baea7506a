"""Operation results: signed feedback rolled up per operation and phase."""
