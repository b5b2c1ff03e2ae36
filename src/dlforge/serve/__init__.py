"""dlforge serve: the FastAPI model server, its batching, A/B routing and monitoring.

``main.create_app`` builds the app; ``pool`` holds the loaded versions and hot-swaps them;
``routers/`` has one router per resource; ``inputs`` turns JSON into model-ready tensors;
``batching``, ``routing`` and ``monitor`` batch requests, split traffic and watch drift;
``security`` and ``dependencies`` guard every request. Nothing loads at import time.

Example:
    >>> from dlforge.serve.main import create_app                    # doctest: +SKIP
    >>> from dlforge.serve.settings import ServeSettings             # doctest: +SKIP
    >>> app = create_app(ServeSettings(registry="sqlite:///registry/registry.db"))  # doctest: +SKIP
    >>> # or from a shell: dlforge serve --port 8000 (or python -m dlforge.cli serve)
"""
