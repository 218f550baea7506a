"""The auditor's web console: server-rendered pages over the audit services (metadata only)."""
