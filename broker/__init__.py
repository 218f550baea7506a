"""Secure inter-agency information-exchange broker.

Importing `broker` pulls in nothing from the server stack, so the agency SDK
(`broker.sdk`) and the crypto core (`broker.crypto`) work with the base dependencies only.
"""

__version__ = "0.1.0"
