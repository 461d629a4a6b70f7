"""What builders share: the catalog, opening the store, CLI arguments, executors and work units,
variants, judges and their cache, figures. No CLI modules here."""
