"""Recall: a sender withdraws a message; recipients that hold it answer with compliance."""
