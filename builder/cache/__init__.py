"""The build cache: step keys, records and lookup, remote import/export, explain, reports, the no-op fast path."""
