"""Model artifacts (and, later, the versioned model store).

Example:
    >>> from dlforge.registry import save_artifact, load_artifact
"""

from dlforge.registry.artifact import Artifact, load_artifact, save_artifact

__all__ = ["Artifact", "load_artifact", "save_artifact"]
