"""Relevance: what a digest includes, a calibrated decision per (topic, paper).

``reference.py`` holds the window every score is normalised against; ``score.py``
fuses the filter's lexical evidence with meaning and decides at the subscriber's
dial step, by the rules of ``decisions.py`` (many topics at once), with exact cosines
(``meaning.py``); ``pick.py`` merges a subscriber's topics into their digest;
``feedback.py`` is what votes change; ``day.py`` builds a day's scorer.
"""

from newsletter.relevance.pick import Pick, Picked
from newsletter.relevance.reference import Reference, load_reference
from newsletter.relevance.score import (
    ALPHA,
    DEFAULT_DIAL,
    DIAL,
    Scorer,
    Step,
    Topic,
    TopicScores,
)

__all__ = [
    "ALPHA",
    "DEFAULT_DIAL",
    "DIAL",
    "Pick",
    "Picked",
    "Reference",
    "Scorer",
    "Step",
    "Topic",
    "TopicScores",
    "load_reference",
]
