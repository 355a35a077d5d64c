"""The framework integrations: Flask (:mod:`.flask`), and the limits next
to views they share (:mod:`.rules`)."""
