"""Shared runtime state behind one interface: in-process (`memory://`), Redis later (SPEC §8)."""
