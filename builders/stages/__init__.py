"""Stage logic that builds and publishes datasets, called by the thin CLI modules in ``builders/``
and by each other (the demo, analyses). No CLI modules here."""
