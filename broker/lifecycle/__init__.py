"""Data lifecycle under the agreement: retention purges and the legal holds that suspend them."""
