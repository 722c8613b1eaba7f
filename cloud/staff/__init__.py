"""Clerks: store-scoped staff who sign in at the store's boxes with a short PIN."""
