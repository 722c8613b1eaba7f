"""Orders from every channel, the stock ledger, routing with reservations, store fulfilment."""
