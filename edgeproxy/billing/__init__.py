"""Money: prices, charges, and (later) accounts, reservations and the ledger (SPEC §5)."""
