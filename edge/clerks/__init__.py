"""Clerks' PIN sign-in on the box: the store's roster (from the cloud), lockouts and sessions."""
