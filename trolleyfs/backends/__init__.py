"""Protocol backends: searchers and downloaders, each behind the Protocols in :mod:`.base`."""
