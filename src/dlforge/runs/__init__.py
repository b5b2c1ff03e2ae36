"""The run index, ``dlforge runs list|show|compare`` and the compare page (see :mod:`dlforge.runs.index`)."""
