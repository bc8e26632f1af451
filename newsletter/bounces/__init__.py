"""Bounces and complaints that arrive after the relay said yes.

``verp.py`` signs each message's envelope sender, so a bounce names its digest and
subscriber even when the report itself is garbled; ``classify.py`` reads a bounce or
complaint message (RFC 3464 delivery status notifications and RFC 5965 feedback
reports with the standard library, everything else with flufl.bounce's detectors);
``process.py`` ties it to a delivery and records what follows in the ledger.
"""
