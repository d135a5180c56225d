"""One screen per file: overview, models, keys, audit, and the modal dialogs."""
