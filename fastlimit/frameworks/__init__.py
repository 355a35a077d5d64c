"""The framework integrations: Flask (:mod:`.flask`), Starlette and FastAPI
(:mod:`.starlette`), and the limits next to views they share (:mod:`.rules`)."""
