"""`python -m broker.cli`."""

from broker.cli.main import app

app()
