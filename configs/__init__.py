"""Training recipes (ml_collections config files); `common` holds what they share."""
