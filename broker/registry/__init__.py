"""The registry as the submit path reads it: one in-process snapshot, validated per request."""
